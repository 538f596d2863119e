"""Session-wide artifacts of real job runs, shared by the slow tests that need a trained model.

- ``quick_run`` -> :class:`QuickRun`: the quick preset submitted once per session with
  ``ray job submit`` (1 epoch of 16-image batches, the TINY data cut) to the session's two-node cluster
  (``tests.fixtures_services.two_node_cluster``, stopped once the run is done), its 2 workers placed
  ``STRICT_SPREAD``, one on each node, checkpointing into one storage folder both nodes write to,
  logging to the session's MLflow server; its MLflow run, checkpoints, the registered model
  ``test-quick@candidate``, and where its workers ran.
  Tests that read it must not change what others read: they may add aliases, tags or runs of
  their own names, never move ``candidate`` or delete anything.
- ``rho_grid_search`` -> :class:`RhoGridSearch`: the shipped rho-grid space on three of its values (3 trials, 2 at a time) on a tiny
  preset, killed once two trials have finished and resumed with ``--resume``; its trials are in the
  experiment ``tune-search`` and its best trial is registered as ``test-tune@candidate``.  The Tune
  resume test checks the search; the MLflow UI check renders it (and adds one evaluation run).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import yaml

from tests.fixtures_services import HEAD_RESOURCE, WORKER_RESOURCE, two_node_cluster
from tests.jobs.helpers import QUICK, REPO, TINY, job_env

__all__ = ["QuickRun", "quick_run", "RhoGridSearch", "rho_grid_search", "SHARED_RUNS", "shared_run"]

# The session-wide runs that several slow tests read (these two, and the attack tests' in-process
# trained network): under pytest-xdist every test that reads one goes to one worker (its
# ``xdist_group``, tests/conftest.py), so each is made once.
SHARED_RUNS = ("quick_run", "rho_grid_search", "trained")


def shared_run(item) -> str | None:
    """The session-wide run that the test ``item`` reads, if any: its group under pytest-xdist."""
    return next((name for name in SHARED_RUNS if name in getattr(item, "fixturenames", ())), None)

QUICK_RUN_NAME = "quick-submit"
QUICK_MODEL = "test-quick"


@dataclass(frozen=True)
class Placement:
    """Where a run's Ray Train workers ran, read from Ray's state API before its cluster stopped."""

    nodes: dict[str, str]  # HEAD_RESOURCE / WORKER_RESOURCE -> the id of the node carrying it
    workers: list  # the RayTrainWorker actors (``ray.util.state`` records; dead by then, still listed)


def read_placement(address: str) -> Placement:
    from ray.util.state import list_actors, list_nodes

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # for the state API client in this process
        nodes = list_nodes(address=address, detail=True, timeout=60, raise_on_missing_output=False)
        workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                              timeout=60, raise_on_missing_output=False)
    by_resource = {key: node.node_id for node in nodes for key in (HEAD_RESOURCE, WORKER_RESOURCE)
                   if node.resources_total.get(key)}
    return Placement(by_resource, workers)


@dataclass(frozen=True)
class QuickRun:
    """A finished ``jobs.train`` run of the quick preset, submitted with ``ray job submit``."""

    tracking_uri: str
    run_name: str
    registered_model: str  # registered as f"models:/{registered_model}@candidate"
    storage: Path  # STABLE_SNN_STORAGE_PATH of the run: checkpoints in storage / run_name
    env: dict  # the job environment it ran with
    output: subprocess.CompletedProcess
    placement: Placement  # on the two-node cluster, stopped since

    @property
    def model_uri(self) -> str:
        return f"models:/{self.registered_model}@candidate"

    @property
    def checkpoints(self) -> list[Path]:
        return sorted((self.storage / self.run_name).glob("checkpoint_epoch_*"))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, mlflow_server, cifar10) -> QuickRun:
    root = tmp_path_factory.mktemp("quick-run")
    storage = root / "storage"
    env = job_env(mlflow_server.address, storage, cifar10.root)
    runtime_env = {"env_vars": {**{k: env[k] for k in
                                   ("MLFLOW_TRACKING_URI", "STABLE_SNN_STORAGE_PATH", "STABLE_SNN_DATA_ROOT", "RAY_AUTH_MODE")},
                                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",  # a sample a second: the run is short
                                # as an image exporting OMP_NUM_THREADS=nproc does: each worker must still run
                                # the threads of the CPUs it reserved (tests/jobs/test_threads.py)
                                "OMP_NUM_THREADS": "2"}}
    job = [
        "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "-m", "jobs.train", "--config", "jobs/configs/quick.yaml", "--set", f"run.name={QUICK_RUN_NAME}",
        "--set", "optim.epochs=1", "--set", f"run.registered_model={QUICK_MODEL}", *TINY, *cifar10.overrides()[2:],
        # 16 steps a worker instead of 4: enough for predictions that depend on the image, so that an
        # attack on this model changes some of them (tests/jobs/evaluate/test_evaluate.py)
        "--set", "optim.batch_size=16",
        # one 0.5-CPU worker on each 1-CPU node, the 0.5-CPU validation task beside one of them
        "--set", "run.placement_strategy=STRICT_SPREAD",
    ]
    with two_node_cluster(root / "cluster") as cluster:  # stopped once the run is done and its placement read
        out = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "submit", "--address",
                              cluster.head.address, *job], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        placement = read_placement(cluster.head.address)
    return QuickRun(mlflow_server.address, QUICK_RUN_NAME, QUICK_MODEL, storage, env, out, placement)


SEARCH_NAME, SEARCH_EXPERIMENT, SEARCH_MODEL = "grid-test", "tune-search", "test-tune"
SEARCH_TRIAL = [
    "--set", "run.num_workers=1", "--set", "run.cpus_per_worker=0.5", "--set", "run.validation_cpus=0.25",
    "--set", "optim.epochs=1", "--set", "model.timesteps=2", "--set", "data.train_subset=256",
    "--set", "data.val_size=128", "--set", "validation.subset=32", "--set", "validation.batch_size=32",
    "--set", "validation.pgd_steps=2", "--set", f"run.experiment={SEARCH_EXPERIMENT}",
    "--set", f"run.registered_model={SEARCH_MODEL}",
]


@dataclass(frozen=True)
class RhoGridSearch:
    """A rho-grid search interrupted (its driver's process group killed) and resumed to the end."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    registered_model: str  # the best trial as f"models:/{registered_model}@candidate"
    first_returncode: int  # the killed first invocation's
    finished_at_kill: dict  # child run id -> end time, of the trials finished when the first driver was killed
    resumed: subprocess.CompletedProcess  # the ``--resume`` invocation
    env: dict
    grid: list[float]  # the values of objective.rho searched, one trial each

    def children(self, client) -> list:
        return child_runs(client, self.experiment, self.parent_run_id)


def child_runs(client, experiment: str, parent_run_id: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.fixture(scope="session")
def rho_grid_search(tmp_path_factory, mlflow_server, ray_head, cifar10) -> RhoGridSearch:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("rho-grid-search")
    env = job_env(mlflow_server.address, root / "storage", cifar10.root, ray_address=ray_head.gcs_address)
    # the shipped space on three of its rho values, two trials at a time (a quarter CPU for each trial's
    # driver and validation): killed after two finished, the third is interrupted and run again
    space = yaml.safe_load((REPO / "tune_spaces" / "rho-grid.yaml").read_text())
    grid = [0.0, 1.0, 2.0]
    assert set(grid) < set(space["params"]["objective.rho"]["grid"])
    space |= {"max_concurrent_trials": 2, "params": {"objective.rho": {"grid": grid}}}
    (root / "rho-grid.yaml").write_text(yaml.safe_dump(space))
    args = ["--space", str(root / "rho-grid.yaml"), "--config", str(QUICK), "--name", SEARCH_NAME, *SEARCH_TRIAL,
            "--trial-cpus", "0.25", *cifar10.overrides()[2:]]
    client = MlflowClient(mlflow_server.address)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.tune", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    parent = None
    finished: dict = {}
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            exp = client.get_experiment_by_name(SEARCH_EXPERIMENT)
            parents = exp and client.search_runs(
                [exp.experiment_id], filter_string=f"tags.`stable_snn.run_name` = '{SEARCH_NAME}'")
            if parents:
                parent = parents[0].info.run_id
                finished = {r.info.run_id: r.info.end_time for r in child_runs(client, SEARCH_EXPERIMENT, parent)
                            if r.info.status == "FINISHED"}
                if len(finished) >= 2:
                    break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate(timeout=60)[0]
    assert parent is not None and len(finished) >= 2, output[-4000:]
    time.sleep(5)  # the cluster notices the driver's death and cleans up its actors
    resumed = subprocess.run([sys.executable, "-m", "jobs.tune", *args, "--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    return RhoGridSearch(mlflow_server.address, SEARCH_EXPERIMENT, parent, SEARCH_MODEL, proc.returncode, finished,
                         resumed, env, grid)
