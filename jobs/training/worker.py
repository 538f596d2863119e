"""The Ray Train worker function: one DDP worker of a stable-snn training run.

Each worker builds its own data shard and model from the config
(:func:`~jobs.training.steps.build_parts`, DDP through ``ray.train.torch.prepare_model``), resumes from the checkpoint Ray
Train hands it, and every epoch runs :func:`~jobs.training.steps.run_epoch` and reports a
checkpoint (model, optimiser, scheduler, epoch, RNG states, history, config, checksums) through
``ray.train.report``.  An epoch's metrics reach MLflow once: from Ray Train's validation task
after the checkpoint is registered (``jobs.training.validation``), or with inline validation
(Tune trials) from rank 0 after reporting, and again on resume for an epoch the server missed;
the logger drops a step the server already has, so there are no gaps and no duplicates.

A worker that dies is replaced by Ray Train (``run.max_failures``) and the new group resumes
from the latest registered checkpoint; a non-finite loss stops the run (``jobs.training.faults``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from stable_snn.objective import build_perturbation

from ..config import JobConfig, job_config_from_dict
from ..logs import setup_logging
from ..threads import use_reserved_cpus
from ..tracking.outbox import RunLogger, run_logger
from ..tracking.runs import client_for
from ..tracking.system import start_system_metrics
from .checkpoints import load_ray_checkpoint, save_checkpoint
from .faults import FaultPlan
from .steps import (
    EpochGenerators, ResumePoint, build_parts, checkpoint_state, epoch_line, gain_metrics, report_payload, restore,
    resume_point, run_epoch,
)
from .validation import load_splits, validate_inline, validation_subset

log = logging.getLogger("stable_snn.train")

COMMIT_WAIT_S = 600.0  # at most this long for Ray Train to register an epoch's checkpoint


@dataclass
class Worker:
    """What one worker trains with, built from the config."""

    cfg: JobConfig
    rank: int
    device: torch.device
    splits: object  # stable_snn.data.Splits
    model: torch.nn.Module
    forward: torch.nn.Module  # TwoPass, DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    generators: EpochGenerators
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling


def build_worker(cfg: JobConfig) -> Worker:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_reserved_cpus(cfg.run.cpus_per_worker)
    log.info("rank %d of %d on %s: %d torch thread(s) for its %s reserved CPU(s) (OMP_NUM_THREADS=%s)", rank, world,
             device, torch.get_num_threads(), cfg.run.cpus_per_worker, os.environ.get("OMP_NUM_THREADS", "unset"))
    splits = load_splits(cfg, augment=cfg.data.augment)
    p = build_parts(cfg, splits.train, world, rank, device, wrap=ray.train.torch.prepare_model)
    return Worker(cfg, rank, device, splits, p.model, p.forward, p.optimizer, p.scheduler, p.loader, p.generators,
                  p.scaler)


def resume(w: Worker) -> ResumePoint:
    """Restore the checkpoint Ray Train hands this worker group, if any."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return resume_point(None)
    state, _ = load_ray_checkpoint(ckpt, map_location=w.device)
    restore(state, w.model, w.optimizer, w.scheduler, w.scaler)
    point = resume_point(state)
    log.info("[%s] resuming from the checkpoint of epoch %d", w.cfg.run.name, point.start_epoch - 1)
    return point


def report_epoch(w: Worker, epoch: int, report: dict, state: dict | None, inline: bool) -> None:
    """Report the epoch (rank 0 with its checkpoint) and wait until Ray Train has registered it.

    ``report`` returns before the controller has registered the checkpoint; a worker lost in that
    window would make the restarted group resume from the checkpoint before (the epoch done twice).
    """
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state is not None:
            save_checkpoint(Path(tmp), state, w.cfg)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        kwargs = dict(checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
        if not inline:  # Ray Train's asynchronous validation task validates (and logs) the checkpoint
            kwargs["validation"] = ray.train.ValidationTaskConfig(fn_kwargs={"epoch": epoch}) if w.rank == 0 else False
        ray.train.report(report, **kwargs)
    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=COMMIT_WAIT_S,
    )


def inline_logger(loop_config: dict, w: Worker, history: list[dict]) -> RunLogger | None:
    """Rank 0's logger when validation runs inline (Tune trials); it first logs any checkpointed
    epoch the server missed (rank 0 died between reporting an epoch and logging it)."""
    run_id, tracking_uri = loop_config.get("run_id"), loop_config.get("tracking_uri")
    if not (w.rank == 0 and loop_config.get("inline_validation") and run_id and tracking_uri):
        return None
    logger = run_logger(client_for(tracking_uri), run_id, w.cfg.run)
    if history and logger.flush(deadline_s=0):  # with the server away nothing is re-logged blindly
        try:
            logged = {m.step for m in logger.client.get_metric_history(run_id, "train_loss")}
        except Exception as e:  # the server's errors take many shapes; re-logging is an extra
            log.warning("could not read the MLflow metric history (%s); re-logging is skipped", e)
            return logger
        for entry in history:
            if entry["epoch"] not in logged:
                logger.log({k: v for k, v in entry.items() if k != "epoch"}, step=int(entry["epoch"]))
    return logger


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker: ``loop_config`` holds the config, the MLflow run
    id and tracking URI, and whether validation runs inline."""
    setup_logging()
    cfg = job_config_from_dict(loop_config["config"])
    faults = FaultPlan.from_env()
    w = build_worker(cfg)
    point = resume(w)
    inline = bool(loop_config.get("inline_validation", False))
    logger = inline_logger(loop_config, w, point.history)
    perturbation = build_perturbation(cfg.objective)
    val_data = validation_subset(cfg) if inline and w.rank == 0 else None
    monitor = start_system_metrics(loop_config.get("run_id"), loop_config.get("tracking_uri")) if w.rank == 0 else None
    for epoch in range(point.start_epoch, cfg.optim.epochs + 1):
        w.generators.start_epoch(w.loader, w.splits.train, cfg.run.seed, epoch, w.rank)
        metrics = run_epoch(cfg, w.model, w.forward, w.optimizer, w.loader, perturbation, w.generators, w.device,
                            epoch, w.rank, faults, w.scaler)
        w.scheduler.step()
        metrics |= gain_metrics(w.model)
        if w.rank == 0:
            log.info(epoch_line(cfg, epoch, metrics))
        # Inline validation runs before the checkpoint is written, so the checkpoint's history holds
        # the epoch's validation metrics too and a resumed rank 0 can log an epoch it never logged.
        val_metrics = validate_inline(w.model, cfg, val_data, epoch) if val_data is not None else {}
        report = report_payload(epoch, metrics, val_metrics)
        metrics |= val_metrics
        point.history.append({"epoch": epoch, **metrics})
        state = (checkpoint_state(w.model, w.optimizer, w.scheduler, epoch, point.history, point.resumes, w.scaler)
                 if w.rank == 0 else None)
        report_epoch(w, epoch, report, state, inline)
        if logger is not None:
            logger.log(metrics, step=epoch)
    if monitor is not None:
        monitor.finish()
    if logger is not None and not logger.flush(deadline_s=float(loop_config.get("flush_deadline_s", 10))):
        log.warning("MLflow at %s is unreachable; %d metric values wait in the outbox for the driver",
                    loop_config["tracking_uri"], logger.unsent)
