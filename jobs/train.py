"""Train a robust stable SNN on Ray Train, tracked in MLflow; register the best robust checkpoint.

    python -m jobs.train --config jobs/configs/quick.yaml [--set section.field=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train --config ...

Relaunching with the same ``run.name`` resumes the run from its last checkpoint in the
storage path and keeps logging into the same MLflow run.

Exit status: 0 done; 2 refused before any compute (bad config or data, a corrupt checkpoint
to resume from, the run still trained by another driver); 3 the MLflow server is unreachable
(at the start, or after training with the metrics kept in the outbox); 4 the loss became NaN
or Inf (the last good checkpoint is kept: ``python -m jobs.register`` registers it).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stable_snn.config import ConfigError, TrainConfig, load_config

from .logs import setup_logging

log = logging.getLogger("stable_snn.train")

OUTBOX_DEADLINE_S = float(os.environ.get("STABLE_SNN_OUTBOX_DEADLINE_S", "300"))
# How long a relaunched driver waits for the Ray actors of the run's previous driver to go.
PREVIOUS_DRIVER_WAIT_S = float(os.environ.get("STABLE_SNN_PREVIOUS_DRIVER_WAIT_S", "120"))
DRIVER_FILE = "driver.json"  # in the run's storage folder: the Ray session and job of its latest driver
TRAIN_ACTORS = ("TrainController", "RayTrainWorker")


class RunInUseError(RuntimeError):
    """Another live driver still trains this run."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Config sections and fields (override any with --set section.field=value): "
            "model.{arch,neuron,gain_form,timesteps,leak,threshold,surrogate_width,width,classifier_width}, "
            "data.{dataset,root,format,download,val_size,train_subset,test_subset,augment,cutout,loader_workers}, "
            "objective.{mode,rho,chi,regularizer,reduction,beta,gaussian_sigma,rfgsm_step,rfgsm_init_std}, "
            "optim.{epochs,batch_size,lr,momentum,weight_decay,precision}, "
            "validation.{subset,eps,pgd_steps,pgd_step_size,batch_size,cpus,gpus}, "
            "run.{name,seed,num_workers,use_gpu,cpus_per_worker,placement_strategy,storage_path,max_failures,keep_checkpoints,"
            "tracking_uri,experiment,registered_model} (test-only: run.{fail_at_epoch,nan_at_epoch}). "
            "Environment: MLFLOW_TRACKING_URI (tracking server), STABLE_SNN_STORAGE_PATH (checkpoints), "
            "STABLE_SNN_DATA_ROOT (datasets)."
        ),
    )
    p.add_argument("--config", required=True, help="YAML preset, e.g. jobs/configs/quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set objective.rho=0.5 (repeatable)")
    p.add_argument("--no-register", action="store_true", help="do not register the best checkpoint in the model registry")
    p.add_argument("--alias", default="candidate", help="alias given to the registered model version (default: candidate)")
    return p.parse_args(argv)


def git_commit() -> str | None:
    if os.environ.get("STABLE_SNN_GIT_COMMIT"):
        return os.environ["STABLE_SNN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def preflight(cfg: TrainConfig) -> TrainConfig:
    """Checks that need no compute (the dataset is where the config says), and the config with its
    locations resolved by the driver (data root, storage path), so every worker on every node reads
    the same ones and the logged config says where they were."""
    from stable_snn.config import apply_overrides
    from stable_snn.data.formats import resolve_format

    root = cfg.data.resolved_root()
    resolve_format(cfg.data.dataset, root, "train", format=cfg.data.format, download=cfg.data.download)
    return apply_overrides(cfg, [f"data.root={root}", f"run.storage_path={cfg.run.resolved_storage()}"])


def open_run(client, cfg: TrainConfig, tracking_uri: str, parent_run_id: str | None = None, extra_tags: dict | None = None):
    """Reuse the unfinished MLflow run of ``run.name`` (resume) or create a new one."""
    from .tracking import JOB_KIND_TAG, RUN_NAME_TAG, experiment_id, find_run

    exp = experiment_id(client, cfg.run.experiment)
    existing = find_run(client, exp, cfg.run.name)
    if existing is not None:
        if existing.info.status == "FINISHED":
            raise ConfigError(
                f"run.name={cfg.run.name!r} already finished (MLflow run {existing.info.run_id}); "
                "choose a new name with --set run.name=..."
            )
        log.info("resuming MLflow run %s of %s", existing.info.run_id, cfg.run.name)
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, True
    tags = {RUN_NAME_TAG: cfg.run.name, JOB_KIND_TAG: "train", "mlflow.runName": cfg.run.name, **(extra_tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    run = client.create_run(exp, run_name=cfg.run.name, tags=tags)
    from mlflow.entities import Param

    params = [Param(k, str(v)) for k, v in cfg.flat().items()]
    params.append(Param("derived.weight_decay", str(cfg.weight_decay)))
    for i in range(0, len(params), 90):
        client.log_batch(run.info.run_id, params=params[i : i + 90])
    with tempfile.TemporaryDirectory() as tmp:
        from stable_snn.config import dump_config

        path = Path(tmp) / "config.yaml"
        path.write_text(dump_config(cfg))
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id, False


def log_figures(client, run_id: str, history: list[dict], gains) -> None:
    from .figures import heatmap_gains, training_curves

    with tempfile.TemporaryDirectory() as tmp:
        curves = Path(tmp) / "training_curves.png"
        training_curves(history, curves)
        client.log_artifact(run_id, str(curves), "figures")
        if gains is not None:
            heat = Path(tmp) / "dlif_gains.png"
            heatmap_gains(gains, heat)
            client.log_artifact(run_id, str(heat), "figures")


def validation_history(client, run_id: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for key in ("val_clean_acc", "val_robust_acc"):
        for m in client.get_metric_history(run_id, key):
            out.setdefault(int(m.step), {})[key] = m.value
    return out


@dataclass
class TrainingOutcome:
    run_id: str
    best_epoch: int
    metrics: dict  # val_clean_acc / val_robust_acc of the best checkpoint
    checkpoint_path: str
    version: object | None = None  # the registered ModelVersion, if any


def run_training(
    cfg: TrainConfig,
    client,
    tracking_uri: str,
    *,
    register: bool = True,
    alias: str = "candidate",
    parent_run_id: str | None = None,
    callbacks=None,
    inline_validation: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> TrainingOutcome:
    """Open (or resume) the MLflow run, fit on Ray Train, log figures, register the best checkpoint.

    The MLflow run is closed in ``finally`` (FINISHED on success, FAILED otherwise; a
    relaunch with the same ``run.name`` resumes it).
    """
    import ray

    from .checkpointing import load_checkpoint
    from .registry import build_network
    from .train_loop import fatal_error, stop_on_fatal_callback
    from .trainer import best_checkpoint, build_trainer

    check_resumable(cfg)
    claim_run(cfg)
    run_id, _ = open_run(client, cfg, tracking_uri, parent_run_id=parent_run_id, extra_tags=extra_tags)
    ctx = ray.get_runtime_context()
    client.set_tag(run_id, "ray_job_id", ctx.get_job_id())
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        client.set_tag(run_id, "ray_submission_id", os.environ["RAY_JOB_SUBMISSION_ID"])
    status = "FAILED"
    try:
        log.info("training %s (%s, %s, %s, T=%d) with %d worker(s); MLflow run %s at %s",
                 cfg.run.name, cfg.model.arch, cfg.model.neuron, cfg.objective.mode, cfg.model.timesteps,
                 cfg.run.num_workers, run_id, tracking_uri)
        trainer = build_trainer(cfg, run_id, tracking_uri, callbacks=[*(callbacks or []), stop_on_fatal_callback()],
                                inline_validation=inline_validation)
        try:
            result = trainer.fit()
        except Exception as e:
            fatal = fatal_error(e)
            if fatal is None:
                raise
            raise fatal from None  # the worker's own message (epoch and step, or the checkpoint file)
        flush_outbox(client, run_id, cfg, tracking_uri, OUTBOX_DEADLINE_S)
        ckpt, metrics = best_checkpoint(result)
        if ckpt is None:
            raise RuntimeError("training reported no checkpoint")
        with ckpt.as_directory() as folder:
            state, _ = load_checkpoint(Path(folder))
        model = build_network(cfg)
        model.load_state_dict(state["model"])
        val = validation_history(client, run_id)
        history = [h | val.get(int(h["epoch"]), {}) for h in _latest_history(result, state)]
        log_figures(client, run_id, history, model.dlif_gains())
        best_epoch = int(state["epoch"])
        summary = {k: metrics.get(k) for k in ("val_clean_acc", "val_robust_acc")}
        client.set_tag(run_id, "best_epoch", str(best_epoch))
        client.set_tag(run_id, "best_checkpoint", ckpt.path)
        version = None
        if register:
            version = register_model(client, run_id, model, cfg, best_epoch, summary, alias)
        status = "FINISHED"
        return TrainingOutcome(run_id, best_epoch, summary, ckpt.path, version)
    finally:
        try:
            client.set_terminated(run_id, status=status)
        except Exception as e:  # the run keeps its status RUNNING; a relaunch resumes it
            log.warning("could not close MLflow run %s: %s", run_id, e)


def flush_outbox(client, run_id: str, cfg: TrainConfig, tracking_uri: str, deadline_s: float) -> None:
    """Send the metrics parked in the run's outbox during an MLflow outage, retrying until
    ``deadline_s``; then fail with a message naming the URI (the checkpoints are untouched)."""
    from .tracking import RunLogger, TrackingUnavailableError, outbox_for

    outbox = RunLogger(client, run_id, outbox_for(cfg.run.resolved_storage(), cfg.run.name))
    if not outbox.flush(deadline_s=deadline_s):
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} stayed unreachable for {deadline_s:.0f} s after training: "
            f"{outbox.unsent} metric values wait in {outbox.outbox} and nothing was registered; the checkpoints "
            f"are intact in {cfg.run.resolved_storage()}/{cfg.run.name} (relaunch with the same run.name to finish)"
        )


def check_resumable(cfg: TrainConfig) -> None:
    """Refuse, before any compute, a relaunch that could only fail again: the run stopped on a
    non-finite loss, or the checkpoint it would resume from is truncated or tampered with."""
    from .checkpointing import latest_registered_checkpoint, run_path, verify_checkpoint_at, read_run_file
    from .train_loop import NONFINITE_MARKER, NonFiniteLossError

    storage, name = cfg.run.resolved_storage(), cfg.run.name
    marker = read_run_file(storage, name, NONFINITE_MARKER)
    if marker is not None:
        try:
            message = json.loads(marker)["message"]
        except (ValueError, KeyError):
            message = f"run {name!r} stopped on a non-finite loss"
        raise NonFiniteLossError(
            f"{message}. Relaunching it would repeat that: choose a new run.name (or delete "
            f"{run_path(storage, name)}/{NONFINITE_MARKER} to try again)"
        )
    latest = latest_registered_checkpoint(storage, name)
    if latest is not None:
        verify_checkpoint_at(latest)
        log.info("run %s resumes from %s (checksums verified)", name, latest)


def claim_run(cfg: TrainConfig) -> None:
    """Make sure no earlier driver of this run still trains it, then record this driver.

    A driver that dies (killed, node lost) takes its Ray Train controller and workers with it
    (they are owned by the driver's job), but Ray stops them asynchronously.  A relaunch on the
    same Ray cluster waits until the previous job's controller and workers are gone, so two
    controllers never train (and checkpoint, and log) the same run; it refuses with
    :class:`RunInUseError` if they are still alive after ``STABLE_SNN_PREVIOUS_DRIVER_WAIT_S``.
    """
    import ray

    from .checkpointing import read_run_file, write_run_file

    storage, name = cfg.run.resolved_storage(), cfg.run.name
    ctx = ray.get_runtime_context()
    me = {"session": ctx.get_session_name(), "job_id": ctx.get_job_id(), "pid": os.getpid(),
          "host": socket.gethostname(), "started": time.time()}
    text = read_run_file(storage, name, DRIVER_FILE)
    previous = json.loads(text) if text else None
    if previous and previous.get("session") == me["session"] and previous.get("job_id") != me["job_id"]:
        _wait_for_previous_driver(cfg, previous)
    elif previous and previous.get("session") != me["session"]:
        log.info("the previous driver of %s ran on another Ray cluster session (%s): nothing of it runs on this one",
                 name, previous.get("session"))
    write_run_file(storage, name, DRIVER_FILE, json.dumps(me, indent=1))


def _wait_for_previous_driver(cfg: TrainConfig, previous: dict) -> None:
    import ray
    from ray.util.state import list_actors

    job = previous["job_id"]
    address = ray.get_runtime_context().gcs_address  # explicit: with several Ray instances on a host, none is implied
    deadline = time.monotonic() + PREVIOUS_DRIVER_WAIT_S
    t0 = time.monotonic()
    while True:
        try:
            actors = list_actors(address=address, filters=[("job_id", "=", job), ("state", "!=", "DEAD")], limit=10_000,
                                 raise_on_missing_output=False)
        except Exception as e:  # no dashboard / state API: cannot check, say so
            log.warning("cannot list the Ray actors of the previous driver of %s (job %s): %s", cfg.run.name, job, e)
            return
        alive = [a for a in actors if a.class_name in TRAIN_ACTORS]
        if not alive:
            if time.monotonic() - t0 > 1:
                log.info("the previous driver's Ray Train actors of %s are gone after %.1f s", cfg.run.name, time.monotonic() - t0)
            return
        if time.monotonic() > deadline:
            raise RunInUseError(
                f"run.name={cfg.run.name!r} is still being trained by Ray job {job} (driver pid {previous.get('pid')} "
                f"on {previous.get('host')}): {len(alive)} of its Ray Train actors "
                f"({', '.join(sorted({a.class_name for a in alive}))}) are alive after {PREVIOUS_DRIVER_WAIT_S:.0f} s; "
                "stop that job first (ray job stop, or end its driver) or choose another run.name"
            )
        log.info("waiting for the previous driver's Ray Train actors of %s (job %s) to stop: %d alive",
                 cfg.run.name, job, len(alive))
        time.sleep(2)


def register_model(client, run_id: str, model, cfg: TrainConfig, epoch: int, summary: dict, alias: str):
    """Register the model of ``epoch`` of the run (idempotent: a version already registered from
    this run and epoch is reused, and only the alias is set)."""
    from .registry import log_and_register

    name = cfg.registered_model_name
    try:
        existing = [v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                    if v.tags.get("epoch") == str(epoch)]
    except Exception:  # no such registered model yet
        existing = []
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        client.set_registered_model_alias(name, alias, version.version)
        log.info("%s version %s already holds epoch %d of run %s: alias %s set, nothing registered again",
                 name, version.version, epoch, run_id, alias)
        return version
    return log_and_register(
        client, run_id, model, cfg, name=cfg.registered_model_name, alias=alias,
        tags={"run_name": cfg.run.name, "epoch": epoch, "arch": cfg.model.arch, "mode": cfg.objective.mode,
              "rho": cfg.objective.rho, "chi": cfg.objective.chi,
              **{k: f"{v:.4f}" for k, v in summary.items() if v is not None}},
    )


def connect(cfg: TrainConfig):
    """Tracking URI (checked within seconds), an MLflow client, and a Ray connection."""
    from .tracking import check_reachable, configure_client_retries, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(cfg.run.tracking_uri)
    check_reachable(tracking_uri)
    configure_client_retries()
    import mlflow
    import ray
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    return tracking_uri, MlflowClient(tracking_uri)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from .tracking import TrackingUnavailableError, check_reachable, resolve_tracking_uri

    try:
        cfg = load_config(args.config, args.overrides)
        check_reachable(resolve_tracking_uri(cfg.run.tracking_uri))  # seconds, before torch is even imported
        cfg = preflight(cfg)
    except TrackingUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .checkpointing import CheckpointError
    from .train_loop import NonFiniteLossError

    # Expected failures end the job with one line and an exit code (2 bad input or state,
    # 3 tracking server, 4 diverged training); anything else keeps its traceback.
    exit_codes = ((TrackingUnavailableError, 3), (NonFiniteLossError, 4),
                  ((ConfigError, CheckpointError, RunInUseError), 2))
    try:
        check_resumable(cfg)  # before Ray starts: a relaunch that can only fail again is refused here
        tracking_uri, client = connect(cfg)
        outcome = run_training(cfg, client, tracking_uri, register=not args.no_register, alias=args.alias)
    except Exception as e:
        code = next((c for kinds, c in exit_codes if isinstance(e, kinds)), None)
        if code is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return code
    if outcome.version is not None:
        print(f"registered model: models:/{outcome.version.name}@{args.alias} (version {outcome.version.version})")
    print(f"MLflow run: {outcome.run_id} ({cfg.run.experiment}/{cfg.run.name}) at {tracking_uri}")
    print("best checkpoint: epoch {}  val clean {}  val PGD-{} {}".format(
        outcome.best_epoch, _pct(outcome.metrics["val_clean_acc"]), cfg.validation.pgd_steps,
        _pct(outcome.metrics["val_robust_acc"])))
    return 0


def _latest_history(result, state) -> list[dict]:
    """Full per-epoch training history: from the last checkpoint when it is newer than the best one."""
    last = result.checkpoint
    if last is None:
        return state.get("history", [])
    from .checkpointing import load_checkpoint

    with last.as_directory() as folder:
        last_state, _ = load_checkpoint(Path(folder))
    return last_state.get("history", state.get("history", []))


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


if __name__ == "__main__":
    sys.exit(main())
