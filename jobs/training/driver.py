"""The driver side of one training run: open (or resume) its MLflow run, fit on Ray Train, log the
figures and register the selected checkpoint (:mod:`jobs.training.selection`).  ``jobs.train`` runs it once; every
``jobs.tune`` trial runs it with inline validation as a child run of the search."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from ..config import JobConfig
from ..errors import TrackingUnavailableError
from ..tracking.models import register_model
from ..tracking.outbox import run_logger
from ..tracking.runs import close_run, open_training_run, validation_history
from .checkpoints import checkpoint_location, load_checkpoint_at, load_ray_checkpoint, network_of
from ..openmp import openmp_env
from .faults import StopOnFatalError, fatal_error, fault_plan_env
from .figures import log_figures
from .guard import claim_run, release_run
from .preflight import check_resumable
from .selection import record_selection, tag_version, validation_size
from .trainer import build_trainer

log = logging.getLogger("stable_snn.train")

OUTBOX_DEADLINE_S = float(os.environ.get("STABLE_SNN_OUTBOX_DEADLINE_S", "300"))
@dataclass
class TrainingOutcome:
    run_id: str
    selected_epoch: int
    metrics: dict  # val_clean_acc / val_robust_acc (and their standard errors) of the selected checkpoint
    checkpoint_path: str
    version: object | None = None  # the registered ModelVersion, if any


def job_runtime_env(environ=os.environ) -> dict:
    """The Ray runtime environment a driver gives its job's workers: OpenMP's wait policy
    (:mod:`jobs.openmp`) and a test's fault plan, if any. (Under ``ray job submit`` Ray keeps the
    submission's runtime environment instead; the Ray nodes' own environment then carries the policy.)"""
    return {"env_vars": {**openmp_env(environ), **fault_plan_env(environ)}}


def connect_ray() -> None:
    """Join the Ray cluster of ``$RAY_ADDRESS`` (or start a local one), once per process."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(log_to_driver=True, runtime_env=job_runtime_env())


def run_training(cfg: JobConfig, client, tracking_uri: str, *, register: bool = True, alias: str = "candidate",
                 parent_run_id: str | None = None, callbacks=None, inline_validation: bool = False,
                 extra_tags: dict[str, str] | None = None) -> TrainingOutcome:
    """Open (or resume) the MLflow run, fit on Ray Train, log figures, register the selected checkpoint.

    The MLflow run is closed in ``finally`` (FINISHED on success, FAILED otherwise; a
    relaunch with the same ``run.name`` resumes it), and the run's lock given back.
    """
    check_resumable(cfg)
    lock = claim_run(cfg)
    run_id = open_training_run(client, cfg, parent_run_id=parent_run_id, extra_tags=extra_tags)
    client.set_tag(run_id, "ray_job_id", ray.get_runtime_context().get_job_id())
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        client.set_tag(run_id, "ray_submission_id", os.environ["RAY_JOB_SUBMISSION_ID"])
    status = "FAILED"
    try:
        log.info("training %s (%s, %s, %s, T=%d) with %d worker(s); MLflow run %s at %s",
                 cfg.run.name, cfg.model.arch, cfg.model.neuron, cfg.objective.mode, cfg.model.timesteps,
                 cfg.run.num_workers, run_id, tracking_uri)
        result = fit(cfg, run_id, tracking_uri, callbacks, inline_validation)
        flush_outbox(client, run_id, cfg, tracking_uri, OUTBOX_DEADLINE_S)
        outcome = finish(client, run_id, cfg, result, alias if register else None)
        status = "FINISHED"
        return outcome
    finally:
        close_run(client, run_id, status)
        release_run(lock)


def fit(cfg: JobConfig, run_id: str, tracking_uri: str, callbacks, inline_validation: bool):
    """``TorchTrainer.fit``; a deterministic failure raises the worker's own error (epoch and step,
    or the checkpoint file) instead of Ray's wrapper."""
    trainer = build_trainer(cfg, run_id, tracking_uri, callbacks=[*(callbacks or []), StopOnFatalError()],
                            inline_validation=inline_validation)
    try:
        return trainer.fit()
    except Exception as e:
        fatal = fatal_error(e)
        if fatal is None:
            raise
        raise fatal from None


def kept_checkpoints(cfg: JobConfig, result) -> tuple[dict[int, str], dict[int, dict]]:
    """``({epoch: location}, {epoch: reported metrics})`` of the checkpoints Ray Train kept for the run;
    a location is a local path or a storage URI (``s3://...``)."""
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("epoch") is not None]
    storage = cfg.run.resolved_storage()
    return ({int(m["epoch"]): checkpoint_location(storage, cfg.run.name, c) for c, m in kept},
            {int(m["epoch"]): dict(m) for _, m in kept})


def finish(client, run_id: str, cfg: JobConfig, result, alias: str | None) -> TrainingOutcome:
    """Select the run's checkpoint (validation only), log the figures and tags; registered with
    ``alias`` unless it is None."""
    checkpoints, reported = kept_checkpoints(cfg, result)
    if not checkpoints:
        raise RuntimeError("training reported no checkpoint")
    val = validation_history(client, run_id)
    scores = {e: reported.get(e, {}) | val.get(e, {}) for e in checkpoints}
    selection, path, summary = record_selection(client, run_id, checkpoints, scores, validation_size(cfg))
    state, _ = load_checkpoint_at(path)
    model = network_of(state, cfg)
    history = [h | val.get(int(h["epoch"]), {}) for h in latest_history(result, state)]
    log_figures(client, run_id, history, model.dlif_gains())
    version = None
    if alias is not None:
        version = register_model(client, run_id, model, cfg, selection.epoch, summary, alias)
        tag_version(client, version, selection)
    return TrainingOutcome(run_id, selection.epoch, summary, path, version)


def latest_history(result, state) -> list[dict]:
    """Full per-epoch training history: from the last checkpoint when it is newer than the best one."""
    if result.checkpoint is None:
        return state.get("history", [])
    last_state, _ = load_ray_checkpoint(result.checkpoint)
    return last_state.get("history", state.get("history", []))


def flush_outbox(client, run_id: str, cfg: JobConfig, tracking_uri: str, deadline_s: float) -> None:
    """Send the metrics parked in the run's outbox during an MLflow outage, retrying until
    ``deadline_s``; then fail with a message naming the URI (the checkpoints are untouched)."""
    outbox = run_logger(client, run_id, cfg.run)
    if not outbox.flush(deadline_s=deadline_s):
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} stayed unreachable for {deadline_s:.0f} s after training: "
            f"{outbox.unsent} metric values wait in {outbox.outbox} and nothing was registered; the checkpoints "
            f"are intact in {cfg.run.resolved_storage()}/{cfg.run.name} (relaunch with the same run.name to finish)"
        )
