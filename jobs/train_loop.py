"""The Ray Train worker function: one DDP worker of a stable-snn training run.

Each worker builds its own data shard and model from the config, runs
``stable_snn.objective.train_step`` per batch, and every epoch reports a checkpoint
(model, optimiser, scheduler, epoch, RNG states, history, config) through
``ray.train.report``.  An epoch's metrics reach MLflow once: from Ray Train's validation
task after the checkpoint is registered (``jobs.validation``), or with inline validation
(Tune trials) from rank 0 after reporting, and again on resume for an epoch the server
missed; the logger drops a step the server already has, so there are no gaps and no
duplicates.

Failures: a worker that dies is replaced by Ray Train (``run.max_failures``) and the new
group resumes from the latest registered checkpoint.  A non-finite loss
(:class:`NonFiniteLossError`, naming epoch and step) or a corrupt checkpoint to resume from
would recur on every retry: :func:`stop_on_fatal_callback` makes them stop the run at once.
Test-only switches: ``run.fail_at_epoch`` (rank 0 dies once in the middle of that epoch) and
``run.nan_at_epoch`` (the loss becomes NaN in the middle of that epoch).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from stable_snn.config import TrainConfig, config_from_dict
from stable_snn.objective import TwoPass, build_optimizer, build_perturbation, train_step

from .checkpointing import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .logs import setup_logging
from .registry import build_network
from .validation import load_splits, validate_inline, validation_subset

log = logging.getLogger("stable_snn.train")

COMMIT_WAIT_S = 600.0  # at most this long for Ray Train to register an epoch's checkpoint
TRAIN_KEYS = ("train_loss", "train_task_loss", "train_ce_clean", "train_ce_pert", "train_acc", "train_pert_acc", "images_per_s", "lr")


NONFINITE_MARKER = "nonfinite-loss.json"  # in the run's storage folder: why and where the run stopped


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the epoch and step."""


def nonfinite_message(run_name: str, loss: float, epoch: int, step: int, storage: str) -> str:
    where = f"{storage.rstrip('/')}/{run_name}"
    kept = (f"The last good checkpoint (epoch {epoch - 1}) is kept in {where} and can still be registered: "
            f"python -m jobs.register --config <preset> --set run.name={run_name}") if epoch > 1 else "No checkpoint was written yet."
    return (f"run {run_name!r}: the loss became {loss} at epoch {epoch} step {step}; training stopped (a non-finite "
            f"loss recurs on every retry, so it is not retried). {kept}")


def _record_nonfinite(cfg: TrainConfig, message: str, epoch: int, step: int, loss: float) -> None:
    """Write the marker that makes a relaunch of this run fail at once instead of recomputing the NaN."""
    import json

    from .checkpointing import write_run_file

    try:
        write_run_file(cfg.run.resolved_storage(), cfg.run.name, NONFINITE_MARKER,
                       json.dumps({"epoch": epoch, "step": step, "loss": str(loss), "message": message}, indent=1))
    except OSError as e:
        log.warning("could not record the non-finite loss in the run's storage folder: %s", e)


def fatal_error(error: BaseException) -> BaseException | None:
    """The deterministic failure behind ``error``, if any: retrying would only repeat it."""
    from .checkpointing import CheckpointError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (NonFiniteLossError, CheckpointError)):
            return error
        error = getattr(error, "controller_failure", None) or getattr(error, "_base_exc", None) or error.__cause__
    return None


def stop_on_fatal_callback():
    """A Ray Train callback (it runs in the controller) that turns a worker's non-finite loss or corrupt
    checkpoint into a non-retryable controller error: ``FailureConfig.max_failures`` retries every
    worker error, and these would recur on every retry."""
    import ray.train

    class StopOnFatalError(ray.train.UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            for rank in sorted(worker_exceptions):
                fatal = fatal_error(worker_exceptions[rank])
                if fatal is not None:
                    raise type(fatal)(f"{fatal} (worker rank {rank})")

    return StopOnFatalError()


def _stability_key(cfg: TrainConfig) -> str:
    return f"train_{cfg.objective.regularizer}"


def _all_reduce(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def run_epoch(cfg, model, forward, optimizer, loader, perturbation, generator, reg_generator, device, epoch, rank=0) -> dict[str, float]:
    """One epoch over this worker's shard; returns metrics summed over all workers."""
    model.train()
    sums = [0.0] * 8  # loss, task, ce_clean, ce_pert, stability, correct, correct_pert, count
    start = time.perf_counter()
    crash_step = max(1, len(loader) // 2) if cfg.run.fail_at_epoch == epoch else None
    nan_step = max(1, len(loader) // 2) if cfg.run.nan_at_epoch == epoch else None
    for step, (images, labels) in enumerate(loader):
        if step == crash_step:
            _maybe_inject_failure(cfg, epoch, rank)
        if step == nan_step:
            _inject_nan(model, epoch)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        stats = train_step(
            model, optimizer, images, labels, cfg.objective, perturbation=perturbation, generator=generator,
            forward=forward, precision=cfg.optim.precision, reg_generator=reg_generator, attack_precision="fp32",
        )
        if not stats.finite:
            message = nonfinite_message(cfg.run.name, stats.loss, epoch, step + 1, cfg.run.resolved_storage())
            log.error(message)
            if rank == 0:
                _record_nonfinite(cfg, message, epoch, step + 1, stats.loss)
            raise NonFiniteLossError(message)
        b = stats.batch
        sums[0] += stats.loss * b
        sums[1] += stats.task_loss * b
        sums[2] += stats.ce_clean * b
        sums[3] += (stats.ce_pert or 0.0) * b
        sums[4] += (stats.stability or 0.0) * b
        sums[5] += stats.correct_clean
        sums[6] += stats.correct_pert or 0
        sums[7] += b
    elapsed = time.perf_counter() - start
    sums = _all_reduce(sums + [elapsed], device)
    n = max(sums[7], 1.0)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    metrics = {
        "train_loss": sums[0] / n,
        "train_task_loss": sums[1] / n,
        "train_ce_clean": sums[2] / n,
        "train_acc": sums[5] / n,
        "images_per_s": sums[7] / (sums[8] / world),
        "lr": optimizer.param_groups[0]["lr"],
    }
    if cfg.objective.mode != "natural":
        metrics["train_ce_pert"] = sums[3] / n
        metrics["train_pert_acc"] = sums[6] / n
        metrics[_stability_key(cfg)] = sums[4] / n
    return metrics


def _gain_metrics(model) -> dict[str, float]:
    gains = model.dlif_gains()
    if gains is None:
        return {}
    return {f"dlif_gain/l{l}_t{t}": float(gains[l, t]) for l in range(gains.shape[0]) for t in range(gains.shape[1])}


def _maybe_inject_failure(cfg: TrainConfig, epoch: int, rank: int) -> None:
    """Test-only switch ``run.fail_at_epoch``: rank 0 dies once, in the middle of that epoch."""
    if rank != 0:
        return
    marker = Path(cfg.run.resolved_storage()) / cfg.run.name / f".failure-injected-epoch{epoch}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("1")
    log.warning("run.fail_at_epoch=%d: killing this worker in the middle of the epoch to test recovery", epoch)
    os._exit(17)


def _inject_nan(model, epoch: int) -> None:
    """Test-only switch ``run.nan_at_epoch``: from the middle of that epoch on, the classifier's last
    parameter holds a NaN, so the loss ``train_step`` computes is NaN (every rank, every retry)."""
    log.warning("run.nan_at_epoch=%d: putting a NaN into the classifier to test the non-finite loss stop", epoch)
    with torch.no_grad():
        list(model.parameters())[-1].view(-1)[0] = float("nan")


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    setup_logging()
    cfg: TrainConfig = config_from_dict(loop_config["config"])
    run_id, tracking_uri = loop_config.get("run_id"), loop_config.get("tracking_uri")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))

    splits = load_splits(cfg, augment=cfg.data.augment)
    model = build_network(cfg).to(device)
    forward = ray.train.torch.prepare_model(TwoPass(model, record_spikes=cfg.objective.regularizer != "ms_mppd"))
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.optim.epochs, eta_min=0.0)
    per_worker_batch = cfg.optim.batch_size // max(world, 1)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    loader = torch.utils.data.DataLoader(
        splits.train, batch_size=per_worker_batch, shuffle=True, drop_last=True,
        num_workers=cfg.data.loader_workers, generator=gen, persistent_workers=cfg.data.loader_workers > 0,
    )
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    # Generators are re-seeded from (seed, epoch[, rank]) every epoch, so a resumed run draws
    # exactly what an uninterrupted one would; the SNN-RAT generator is identical on every
    # worker so the regulariser keeps the DDP replicas equal.
    start_epoch, history, resumes = 1, [], []
    attack_gen, reg_gen = torch.Generator(), torch.Generator()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state, _ = load_checkpoint(Path(folder), map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
        resumes = [*state.get("resumes", []), start_epoch - 1]
        log.info("[%s] resuming from the checkpoint of epoch %d", cfg.run.name, start_epoch - 1)

    # With asynchronous validation, an epoch's metrics are logged by its validation task, which
    # runs only once Ray Train has registered the checkpoint: a crash can then never log an epoch
    # twice.  With inline validation (Tune trials) rank 0 logs them after reporting.
    inline = bool(loop_config.get("inline_validation", False))
    logger = None
    if rank == 0 and inline and run_id and tracking_uri:
        from mlflow import MlflowClient

        from .tracking import RunLogger, configure_client_retries, outbox_for

        configure_client_retries()
        logger = RunLogger(MlflowClient(tracking_uri), run_id, outbox_for(cfg.run.resolved_storage(), cfg.run.name))
        _log_missing_epochs(logger, history)

    perturbation = build_perturbation(cfg.objective)
    val_data = validation_subset(cfg) if inline and rank == 0 else None
    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        splits.train.set_epoch(epoch)
        gen.manual_seed(cfg.run.seed * 100_003 + epoch)
        attack_gen.manual_seed((cfg.run.seed * 100_003 + epoch) * 1_009 + rank)
        reg_gen.manual_seed(cfg.run.seed * 100_003 + epoch + 17)
        metrics = run_epoch(cfg, model, forward, optimizer, loader, perturbation, attack_gen, reg_gen, device, epoch, rank)
        scheduler.step()
        metrics |= _gain_metrics(model)
        if rank == 0:
            _log_epoch_line(cfg, epoch, metrics)
        # Inline validation runs before the checkpoint is written, so the checkpoint's history holds
        # the epoch's validation metrics too and a resumed rank 0 can log an epoch it never logged.
        val_metrics = validate_inline(model, cfg, val_data, epoch) if inline and rank == 0 else {}
        report = {"epoch": epoch, **{k: v for k, v in metrics.items() if not k.startswith("dlif_gain/")}}
        report |= {k: v for k, v in val_metrics.items() if k.startswith("val_")}
        metrics |= val_metrics
        history.append({"epoch": epoch, **metrics})
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "rng": rng_state(),
                    "history": history,
                    "resumes": resumes,  # epochs this run was resumed from
                }
                save_checkpoint(Path(tmp), state, cfg)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if inline:
                ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
            else:
                ray.train.report(
                    report, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
                    validation=ray.train.ValidationTaskConfig(fn_kwargs={"epoch": epoch}) if rank == 0 else False,
                )
        # `report` returns before the controller has registered the checkpoint; a worker lost in that
        # window would make the restarted group resume from the checkpoint before (the epoch done
        # twice).  Wait for the registration, so a failure in the next epoch resumes from this one.
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=COMMIT_WAIT_S,
        )
        if logger is not None:
            logger.log(metrics, step=epoch)
    if logger is not None and not logger.flush(deadline_s=float(loop_config.get("flush_deadline_s", 10))):
        log.warning("MLflow at %s is unreachable; %d metric values wait in the outbox for the driver", tracking_uri, logger.unsent)


def _log_missing_epochs(logger, history: list[dict]) -> None:
    """On resume: send the outbox, then log any checkpointed epoch whose metrics never reached MLflow
    (rank 0 died between reporting an epoch and logging it).  The logger drops a step that is
    already on the server, so nothing is logged twice."""
    if not history or not logger.flush(deadline_s=0):
        return  # the server is away: what is in the outbox is sent later, nothing is re-logged blindly
    try:
        logged = {m.step for m in logger.client.get_metric_history(logger.run_id, "train_loss")}
    except Exception as e:
        log.warning("could not read the MLflow metric history (%s); re-logging is skipped", e)
        return
    for entry in history:
        if entry["epoch"] not in logged:
            logger.log({k: v for k, v in entry.items() if k != "epoch"}, step=int(entry["epoch"]))


def _log_epoch_line(cfg: TrainConfig, epoch: int, m: dict[str, float]) -> None:
    parts = [f"[{cfg.run.name}] epoch {epoch}/{cfg.optim.epochs}", f"loss {m['train_loss']:.4f}", f"task {m['train_task_loss']:.4f}"]
    key = _stability_key(cfg)
    if key in m:
        parts.append(f"{cfg.objective.regularizer} {m[key]:.4g}")
    parts.append(f"acc {100 * m['train_acc']:.2f}%")
    if "train_pert_acc" in m:
        parts.append(f"pert acc {100 * m['train_pert_acc']:.2f}%")
    parts.append(f"{m['images_per_s']:.1f} img/s")
    parts.append(f"lr {m['lr']:.4g}")
    log.info("  ".join(parts))
