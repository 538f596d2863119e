"""Faults the jobs survive, each caused for real: a Ray Train worker killed with SIGKILL (in a run on
``s3://`` storage), the MLflow server unreachable at the start, the MLflow server gone in the middle
of a run and then the driver killed and relaunched (one run), and a loss that becomes NaN. A Tune trial that loses its worker is a
scenario of the ASHA search (tests/jobs/tune/test_tune.py).  The faults inside training workers are
caused by a test-only fault plan (``jobs.training.faults.FaultPlan``) passed in the environment."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.local.stack import free_port, start_mlflow_server, stop
from jobs.errors import CheckpointError
from jobs.storage import read_text
from jobs.training.checkpoints import (
    latest_registered_checkpoint, list_checkpoints, load_checkpoint, load_checkpoint_at,
)
from jobs.training.faults import FAULT_PLAN_ENV, release_hold
from tests.jobs.helpers import QUICK, REPO, job_env

# Smaller than helpers.TINY: one worker, T=2, 8 steps of 32 images per epoch (a kill lands mid-epoch),
# PGD-2 validation on 32 images.
TINY = [
    "--set", "run.num_workers=1", "--set", "run.cpus_per_worker=0.5", "--set", "model.timesteps=2",
    "--set", "data.train_subset=256", "--set", "data.val_size=128", "--set", "optim.batch_size=32",
    "--set", "validation.subset=32", "--set", "validation.batch_size=32", "--set", "validation.pgd_steps=2",
]
TRAIN_ACTORS = ("TrainController", "RayTrainWorker")


# -- helpers -------------------------------------------------------------------------------------


def _args(name: str, *extra: str, cifar10=None) -> list[str]:
    return ["--config", str(QUICK), "--set", f"run.name={name}", *TINY, *extra, *(cifar10.overrides()[2:] if cifar10 else [])]


def _start(module: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """The job as a subprocess in its own process group, output to ``log``."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _wait_for(condition, what: str, proc: subprocess.Popen | None = None, log: Path | None = None, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before {what}:\n{_tail(log)}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{_tail(log)}")


def _tail(log: Path | None, n: int | None = 6000) -> str:
    """The last ``n`` characters of ``log`` (all of it for None)."""
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    return text if n is None else text[-n:]


def _registered_epoch(storage: Path | str, name: str) -> int:
    """The latest epoch whose checkpoint Ray Train has registered, 0 if none."""
    try:
        latest = latest_registered_checkpoint(str(storage), name)
    except CheckpointError:  # its record read while Ray Train writes it
        return 0
    return int(latest.rsplit("_", 1)[1]) if latest else 0


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs_named(client, name: str):
    from jobs.tracking.runs import RUN_NAME_TAG

    exp = client.get_experiment_by_name("stable-snn")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, key))


def _actors(dashboard: str, *filters: tuple[str, str, str]) -> list:
    """The actors the cluster has started that match the state API's ``filters``, alive or dead unless one says."""
    from ray.util.state import list_actors

    return list_actors(address=dashboard, filters=list(filters), detail=True, raise_on_missing_output=False)


def _train_actors(dashboard: str, job_id: str | None = None) -> list:
    filters = [("state", "=", "ALIVE")] + ([("job_id", "=", job_id)] if job_id else [])
    return [a for a in _actors(dashboard, *filters) if a.class_name in TRAIN_ACTORS]


def _assert_epochs_logged_once(client, run_id: str, epochs: int) -> None:
    for key in ("train_loss", "val_robust_acc", "val_clean_acc"):
        assert _steps(client, run_id, key) == list(range(1, epochs + 1)), key


@pytest.fixture
def ray_env(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the state API client, like the jobs


# -- 1. a Ray Train worker killed with SIGKILL in the middle of an epoch, on s3:// storage -------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_sigkill_mid_epoch_resumes_from_s3_storage_into_same_run(tmp_path, mlflow_server, ray_head, s3_server,
                                                                       cifar10, ray_env, monkeypatch):
    """A run submitted with ``ray job submit`` whose storage path is ``s3://`` (moto's S3 server standing in
    for S3 or MinIO), as a cluster runs it. SIGKILL to the live RayTrainWorker process in the middle of
    epoch 2 (the fault plan holds it there and names its pid in the bucket): new workers resume from the
    epoch-1 checkpoint they read back from the bucket, all epochs finish, one MLflow run with each epoch
    logged once, one model version, and a relaunch would find the latest checkpoint in the bucket."""
    name, model, log = "fault-sigkill", "test-fault-sigkill", tmp_path / "submit.log"
    storage = s3_server.uri("runs")
    for key, value in s3_server.env.items():  # this process reads the bucket too
        monkeypatch.setenv(key, value)
    env_vars = {"MLFLOW_TRACKING_URI": mlflow_server.address, "STABLE_SNN_STORAGE_PATH": storage,
                "STABLE_SNN_DATA_ROOT": str(cifar10.root), "RAY_AUTH_MODE": "disabled", **s3_server.env,
                FAULT_PLAN_ENV: json.dumps({"hold_at_epochs": [2]}),
                "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}  # the driver hands the fault plan on to its job again
    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_head.address,
           "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", "python", "-m", "jobs.train",
           *_args(name, "--set", "optim.epochs=2", "--set", "run.max_failures=1",
                  "--set", f"run.registered_model={model}", cifar10=cifar10)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        pid = int(_wait_for(lambda: read_text(f"{storage}/{name}/.held-epoch2"), "rank 0 held in epoch 2", proc, log))
        # Ray Train's controller registers a reported checkpoint at its next poll of the workers (every 2 s)
        killed_at = _wait_for(lambda: _registered_epoch(storage, name), "the epoch-1 checkpoint registered", proc, log,
                              timeout=60)
        os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=900)
    finally:
        _kill_group(proc)
    out = _tail(log, None)
    assert rc == 0 and "succeeded" in out.lower(), out[-6000:]
    assert killed_at == 1 and "waits here to be killed or released" in out

    # the checkpoints are in the bucket; the latest is what a relaunch would resume from
    assert list_checkpoints(storage, name) == {e: f"{storage}/{name}/checkpoint_epoch_000{e}" for e in (1, 2)}
    latest = latest_registered_checkpoint(storage, name)
    assert latest == f"{storage}/{name}/checkpoint_epoch_0002"
    state, cfg = load_checkpoint_at(latest)  # checksums verified on the copy read from the bucket
    assert cfg.run.storage_path == storage
    assert state["resumes"] == [1] and [h["epoch"] for h in state["history"]] == [1, 2]

    client = _client(mlflow_server.address)
    runs = _runs_named(client, name)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["selected_checkpoint"].startswith(f"{storage}/{name}/")
    _assert_epochs_logged_once(client, runs[0].info.run_id, 2)
    assert len(client.search_model_versions(f"name='{model}'")) == 1
    # the local stack's Ray starts Ray Train without its preemption watcher, for both worker groups
    assert _actors(ray_head.address, ("class_name", "=", "PreemptionWatcher")) == []


# -- 2. a relaunch while the previous driver lives ---------------------------------------------


# A driver of run "busy" on the test cluster: it claims the run (its lock, and driver.json), and
# with "hold" it then keeps the run, and an actor of its own (as a training driver keeps its Ray
# Train workers), until it is killed.
_DRIVER = """
import sys, time
import ray
from jobs.config import load_job_config
from jobs.errors import RunInUseError
from jobs.training.guard import claim_run

ray.init(address=sys.argv[1])
cfg = load_job_config(sys.argv[2], [f"run.storage_path={sys.argv[3]}", "run.name=busy"])
try:
    lock = claim_run(cfg)
except RunInUseError as e:
    print(e, file=sys.stderr)
    sys.exit(2)

@ray.remote(num_cpus=0)
class Worker:
    def ping(self):
        return 1

if sys.argv[4] == "hold":
    worker = Worker.remote()
    ray.get(worker.ping.remote())
    print("holding", ray.get_runtime_context().get_job_id(), flush=True)
    time.sleep(3600)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_relaunch_waits_for_a_live_previous_driver_then_refuses(tmp_path, ray_head):
    """The guard behind the relaunch: while the previous driver of a run holds the run's lock (a named
    actor it owns) on the same cluster, a relaunch waits, then refuses naming the job; once the
    previous driver is gone (killed: Ray stops its actors, the lock with them), the relaunch takes
    the run over."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "STABLE_SNN_PREVIOUS_DRIVER_WAIT_S": "3", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-c", _DRIVER, ray_head.gcs_address, str(QUICK), str(tmp_path)]
    first = subprocess.Popen([*argv, "hold"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        line = first.stdout.readline()
        while line and not line.startswith("holding"):
            line = first.stdout.readline()
        assert line.startswith("holding"), "the first driver did not start its actor"
        first_job = line.split()[1]
        assert json.loads((tmp_path / "busy" / "driver.json").read_text())["job_id"] == first_job

        refused = subprocess.run([*argv, "claim"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"run.name='busy' is still being trained by Ray job {first_job} (driver pid {first.pid}" in refused.stderr
        assert "it still holds the run's lock after 3 s" in refused.stderr
        assert json.loads((tmp_path / "busy" / "driver.json").read_text())["job_id"] == first_job  # untouched
    finally:
        _kill_group(first)

    taken = subprocess.run([*argv, "claim"], cwd=REPO, env={**env, "STABLE_SNN_PREVIOUS_DRIVER_WAIT_S": "60"},
                           capture_output=True, text=True, timeout=300)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert json.loads((tmp_path / "busy" / "driver.json").read_text())["job_id"] not in ("", first_job)


# -- 3. the MLflow server unreachable, or gone mid-run and then the driver killed ---------------


def test_unreachable_mlflow_at_start_fails_within_seconds(tmp_path):
    """Nothing listens at the tracking URI: the job exits with status 3 and a message naming the URI,
    before it imports torch or starts Ray, and creates nothing."""
    uri = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, STABLE_SNN_STORAGE_PATH=str(tmp_path / "storage"))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(QUICK), "--set", "run.name=unreachable"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    print(f"failed after {wall:.1f} s")
    assert out.returncode == 3, out.stderr
    assert uri in out.stderr and "unreachable" in out.stderr
    assert wall < 30
    assert not (tmp_path / "storage").exists()


def test_outbox_not_sent_before_deadline_fails_naming_uri_and_keeps_metrics(tmp_path, monkeypatch):
    """The driver's final flush gives up after its deadline with a message naming the URI and the
    outbox; the parked metrics stay on disk for a relaunch."""
    from jobs.config import load_job_config
    from jobs.errors import TrackingUnavailableError
    from jobs.tracking.connect import configure_client_retries
    from jobs.tracking.outbox import RunLogger, outbox_for
    from jobs.training.driver import flush_outbox

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    configure_client_retries()
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = load_job_config(QUICK, [f"run.storage_path={tmp_path}", "run.name=outage"])
    outbox = Path(outbox_for(cfg.run.resolved_storage(), cfg.run.name))
    logger = RunLogger(_client(uri), "0" * 32, outbox)
    assert logger.log({"train_loss": 1.0}, step=1) is False
    assert len(list(outbox.glob("*.json"))) == 1
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as e:
        flush_outbox(_client(uri), "0" * 32, cfg, uri, deadline_s=2)
    assert time.monotonic() - t0 < 60
    assert uri in str(e.value) and str(outbox) in str(e.value) and "1 metric values" in str(e.value)
    assert len(list(outbox.glob("*.json"))) == 1


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_mlflow_gone_then_driver_killed_and_relaunched_continues_same_run(tmp_path, ray_head, cifar10, ray_env):
    """Two faults in one run of three epochs. The tracking server stops after epoch 1 is logged (the fault
    plan holds rank 0 in epoch 2 until then, so nothing of epoch 2 reaches MLflow before): training and
    checkpointing go on and epoch 2's metrics wait in the outbox. Then the driver's process group is
    killed (SIGKILL) in the middle of epoch 3 (the fault plan holds rank 0 there), epoch 2 checkpointed:
    its Ray Train controller and workers die with it.
    The server comes back on the same port and store, and the same command started again waits for the
    old actors to stop, continues from the checkpoint in the storage path into the same MLflow run
    (no new run, no repeated epoch), sends the parked metrics, and registers one version: every epoch
    logged exactly once."""
    name, storage, model = "fault-mlflow-driver", tmp_path / "storage", "test-fault-mlflow-driver"
    log1, log2 = tmp_path / "driver-1.log", tmp_path / "driver-2.log"
    port = free_port()
    server = start_mlflow_server(tmp_path / "mlflow", port)
    restarted = None
    env = job_env(server.address, storage, cifar10.root, ray_address=ray_head.gcs_address)
    env["STABLE_SNN_OUTBOX_DEADLINE_S"] = "600"
    # epoch 2 waits for the outage, the kill lands in epoch 3, whatever the machine's speed
    env[FAULT_PLAN_ENV] = json.dumps({"hold_at_epochs": [2, 3]})
    args = _args(name, "--set", "optim.epochs=3", "--set", f"run.registered_model={model}", cifar10=cifar10)
    first = _start("jobs.train", args, env, log1)
    client = _client(server.address)
    outbox = storage / name / "mlflow-outbox"
    second = None
    try:
        def epoch_1_logged():
            runs = _runs_named(client, name)
            return runs and 1 in _steps(client, runs[0].info.run_id, "val_robust_acc") and runs[0].info.run_id

        _wait_for(lambda: (storage / name / ".held-epoch2").is_file(), "rank 0 held in epoch 2", first, log1)
        run_id = _wait_for(epoch_1_logged, "epoch 1's metrics in MLflow", first, log1)
        stop(server)
        release_hold(storage / name, 2)
        _wait_for(lambda: list(outbox.glob("*.json")), "metrics parked in the outbox", first, log1)
        _wait_for(lambda: (storage / name / ".held-epoch3").is_file(), "rank 0 held in epoch 3", first, log1)
        _wait_for(lambda: _registered_epoch(storage, name) >= 2, "a checkpoint written during the outage", first, log1)
        # the worker warns before it parks the metrics; Ray forwards the warning to the driver's output later
        _wait_for(lambda: "metrics kept for retry" in _tail(log1, None),
                  "the worker's 'metrics kept for retry' in the driver's output", first, log1, timeout=60)
        _kill_group(first)
        old_job = json.loads((storage / name / "driver.json").read_text())["job_id"]
        restarted = start_mlflow_server(tmp_path / "mlflow", port)
        second = _start("jobs.train", args, env, log2)  # at once: it must wait for the old actors
        t0 = time.monotonic()
        _wait_for(lambda: not _train_actors(ray_head.address, old_job), "the killed driver's actors to stop", timeout=120)
        gone_after = time.monotonic() - t0
        resumed_from = _registered_epoch(storage, name)
        rc = second.wait(timeout=900)
        out = _tail(log2, None)
        print(f"the killed driver's Train controller and workers were gone {gone_after:.1f} s after the kill")
        assert rc == 0, out[-6000:]
        assert "resuming MLflow run" in out
        assert resumed_from == 2
        assert not list(outbox.glob("*.json"))
        state, _ = load_checkpoint(storage / name / "checkpoint_epoch_0003")
        assert state["resumes"] == [resumed_from] and [h["epoch"] for h in state["history"]] == [1, 2, 3]
        runs = _runs_named(client, name)
        assert len(runs) == 1 and runs[0].info.run_id == run_id and runs[0].info.status == "FINISHED"
        _assert_epochs_logged_once(client, run_id, 3)
        assert len(client.search_model_versions(f"name='{model}'")) == 1
    finally:
        _kill_group(first)
        if second is not None:
            _kill_group(second)
        stop(restarted or server)


# -- 4. the loss becomes NaN ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_nan_loss_stops_with_epoch_and_step_and_last_good_checkpoint_registers(tmp_path, mlflow_server, ray_head, cifar10):
    """A NaN loss in the middle of epoch 2 stops the job (not retried, though max_failures allows it) with
    a message naming epoch and step; the epoch-1 checkpoint stays; a relaunch is refused before any
    compute; jobs.register registers epoch 1 into the same MLflow run with the alias candidate."""
    name, storage = "fault-nan", tmp_path / "storage"
    env = job_env(mlflow_server.address, storage, cifar10.root, ray_address=ray_head.gcs_address)
    env[FAULT_PLAN_ENV] = json.dumps({"nan_at_epoch": 2})
    args = _args(name, "--set", "optim.epochs=2", "--set", "run.max_failures=2",
                 "--set", "run.registered_model=test-fault-nan", cifar10=cifar10)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    log = out.stdout + out.stderr
    (tmp_path / "nan.log").write_text(log)
    print(f"stopped after {time.monotonic() - t0:.1f} s")
    assert out.returncode == 4, log[-6000:]
    assert "the loss became nan at epoch 2 step 5" in out.stderr
    assert "python -m jobs.register" in out.stderr
    assert log.count("putting a NaN into the classifier") == 1  # no retry of a deterministic failure
    assert sorted(p.name for p in (storage / name).glob("checkpoint_epoch_*")) == ["checkpoint_epoch_0001"]
    state, _ = load_checkpoint(storage / name / "checkpoint_epoch_0001")
    assert state["epoch"] == 1

    client = _client(mlflow_server.address)
    runs = _runs_named(client, name)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    run_id = runs[0].info.run_id
    assert client.search_model_versions("name='test-fault-nan'") == []

    t0 = time.monotonic()
    again = subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 4 and "epoch 2 step 5" in again.stderr and "choose a new run.name" in again.stderr
    assert "Connecting to existing Ray cluster" not in again.stdout + again.stderr
    print(f"relaunch refused after {time.monotonic() - t0:.1f} s")

    reg = subprocess.run([sys.executable, "-m", "jobs.register", "--config", str(QUICK), "--set", f"run.name={name}",
                          "--set", "run.registered_model=test-fault-nan"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert reg.returncode == 0, (reg.stdout + reg.stderr)[-4000:]
    assert "models:/test-fault-nan@candidate (version 1) from epoch 1" in reg.stdout
    versions = client.search_model_versions("name='test-fault-nan'")
    assert len(versions) == 1 and versions[0].run_id == run_id and versions[0].tags["epoch"] == "1"
    assert client.get_model_version_by_alias("test-fault-nan", "candidate").version == versions[0].version
    after = client.get_run(run_id).info
    assert after.status == "FAILED" and after.end_time == runs[0].info.end_time  # the run's outcome, as it ended
    assert _steps(client, run_id, "val_robust_acc") == [1]
