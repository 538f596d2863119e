"""The steps of a training worker, each callable without Ray: what a worker trains with, where a run
resumes, how each epoch's randomness is seeded, one epoch, and what an epoch reports and checkpoints.

:mod:`jobs.training.worker` strings them together inside Ray Train.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from stable_snn.config import build_network
from stable_snn.objective import TwoPass, build_optimizer, needs_spikes, train_step

from ..config import JobConfig
from .checkpoints import restore_rng_state, rng_state, run_path
from .faults import FaultPlan, stop_on_nonfinite
from .settings import step_settings
from .progress import EpochProgress

log = logging.getLogger("stable_snn.train")

GAIN_PREFIX = "dlif_gain/"  # per-layer, per-step DLIF gains: logged, never reported to Ray


# -- what a worker trains with -------------------------------------------------------------------


@dataclass
class TrainingParts:
    """The model, its two-pass module, the optimiser, its schedule, the loss scaler (fp16 only), the
    training loader and the generators of one worker, all built from the config."""

    model: torch.nn.Module
    forward: torch.nn.Module  # TwoPass, wrapped as the caller asked (DDP under Ray)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    loader: DataLoader
    generators: EpochGenerators


def build_parts(cfg: JobConfig, train_set, world_size: int = 1, rank: int = 0, device=torch.device("cpu"),
                wrap=lambda forward: forward) -> TrainingParts:
    """What one of ``world_size`` data-parallel workers trains with.

    The initial weights are drawn from a generator seeded with ``run.seed``, so every worker and
    every run of one seed starts from the same network.  The loader serves ``optim.batch_size``
    images per step on every worker: that is the batch one BatchNorm pass normalises over, and the
    global batch is ``batch_size * world_size``; the learning rate is ``optim.scaled_lr(world_size)``.
    fp16 gets a ``GradScaler`` (loss scaling, so small gradients survive fp16's range).
    """
    model = build_network(cfg, torch.Generator().manual_seed(cfg.run.seed)).to(device)
    forward = wrap(TwoPass(model, record_spikes=needs_spikes(cfg.objective)))
    optimizer = build_optimizer(model, cfg.optim.scaled_lr(world_size), cfg.optim.momentum, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.optim.epochs, eta_min=0.0)
    scaler = torch.amp.GradScaler(torch.device(device).type) if cfg.optim.precision == "fp16" else None
    generators = EpochGenerators.create(cfg.run.seed)
    return TrainingParts(model, forward, optimizer, scheduler, scaler,
                         train_loader(cfg, train_set, generators, world_size, rank), generators)


def train_loader(cfg: JobConfig, train_set, generators: EpochGenerators, world_size: int = 1,
                 rank: int = 0) -> DataLoader:
    """Batches of ``optim.batch_size`` images of this worker's share of the training set, in an order
    that depends on (run.seed, epoch) only (:meth:`EpochGenerators.start_epoch` re-seeds it)."""
    if world_size > 1:
        # The sampler shuffles with seed + epoch: the shuffle seed epoch_seeds gives for each epoch.
        sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=epoch_seeds(cfg.run.seed, 0, rank)[0], drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=generators.shuffle)
    # The loader processes' base seed comes from a generator of its own: drawn when a persistent
    # iterator starts (a worker's first epoch only), it must not move the shuffle, or a restarted
    # worker would shuffle its first epoch unlike the uninterrupted run. The augmentation is seeded
    # per (seed, epoch, image), so the base seed changes nothing the run computes.
    base_seed = torch.Generator().manual_seed(cfg.run.seed)
    return DataLoader(train_set, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                      num_workers=cfg.data.loader_workers, generator=base_seed,
                      persistent_workers=cfg.data.loader_workers > 0)


# -- resuming ---------------------------------------------------------------------------------


@dataclass
class ResumePoint:
    """Where a worker starts: the first epoch to train, the history so far, the epochs resumed from."""

    start_epoch: int = 1
    history: list[dict] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)


def resume_point(state: dict[str, Any] | None) -> ResumePoint:
    """The resume point of a checkpoint's state (a new run without one)."""
    if state is None:
        return ResumePoint()
    done = int(state["epoch"])
    return ResumePoint(done + 1, list(state.get("history", [])), [*state.get("resumes", []), done])


def restore(state: dict[str, Any], model, optimizer, scheduler, scaler: torch.amp.GradScaler | None = None) -> None:
    """Load a checkpoint's model, optimiser, scheduler, loss-scaler and global RNG states."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])


# -- per-epoch randomness -----------------------------------------------------------------------


def epoch_seeds(seed: int, epoch: int, rank: int) -> tuple[int, int, int]:
    """Seeds of an epoch's (shuffle, attack, regulariser) generators: a function of (seed, epoch[, rank])
    only, so a resumed run draws what an uninterrupted one would.  The regulariser's seed is the same
    on every worker, so SNN-RAT keeps the DDP replicas equal."""
    base = seed * 100_003 + epoch
    return base, base * 1_009 + rank, base + 17


@dataclass
class EpochGenerators:
    """The worker's generators: the loader's shuffle, the training attack's noise, SNN-RAT's row choice."""

    shuffle: torch.Generator
    attack: torch.Generator
    regularizer: torch.Generator

    @classmethod
    def create(cls, seed: int) -> EpochGenerators:
        return cls(torch.Generator().manual_seed(seed), torch.Generator(), torch.Generator())

    def start_epoch(self, loader, dataset, seed: int, epoch: int, rank: int) -> None:
        """Re-seed everything random in ``epoch``: the sampler (DDP), the augmentation, the generators."""
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for generator, s in zip((self.shuffle, self.attack, self.regularizer), epoch_seeds(seed, epoch, rank)):
            generator.manual_seed(s)


# -- one epoch ----------------------------------------------------------------------------------


def stability_key(cfg: JobConfig) -> str:
    return f"train_{cfg.objective.regularizer}"


def _all_reduce(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def run_epoch(cfg: JobConfig, model, forward, optimizer, loader, perturbation, generators: EpochGenerators,
              device, epoch: int, rank: int = 0, faults: FaultPlan = FaultPlan(),
              scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One epoch over this worker's shard (``stable_snn.objective.train_step`` per batch, with the
    fp16 loss ``scaler`` when given); returns the metrics summed over all workers.  A non-finite
    loss stops the run (NonFiniteLossError)."""
    model.train()
    settings = step_settings(cfg)
    sums = [0.0] * 8  # loss, task, ce_clean, ce_pert, stability, correct, correct_pert, count
    start = time.perf_counter()
    run_dir = run_path(cfg.run.resolved_storage(), cfg.run.name)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    progress = EpochProgress(f"[{cfg.run.name}] epoch {epoch}/{cfg.optim.epochs}", len(loader), world, enabled=rank == 0)
    for step, (images, labels) in enumerate(loader):
        faults.inject(epoch=epoch, step=step, steps=len(loader), rank=rank, model=model, run_dir=run_dir)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        stats = train_step(
            model, optimizer, images, labels, cfg.objective, perturbation=perturbation, generator=generators.attack,
            forward=forward, precision=settings.precision, reg_generator=generators.regularizer,
            attack_precision=settings.attack_precision, scaler=scaler,
        )
        if not stats.finite:
            raise stop_on_nonfinite(cfg, stats.loss, epoch, step + 1, rank)
        b = stats.batch
        for i, v in enumerate((stats.loss * b, stats.task_loss * b, stats.ce_clean * b, (stats.ce_pert or 0.0) * b,
                               (stats.stability or 0.0) * b, stats.correct_clean, stats.correct_pert or 0, b)):
            sums[i] += v
        progress.update(b)
    progress.close()
    sums = _all_reduce(sums + [time.perf_counter() - start], device)
    return epoch_metrics(cfg, sums, world, optimizer.param_groups[0]["lr"])


def epoch_metrics(cfg: JobConfig, sums: list[float], world: int, lr: float) -> dict[str, float]:
    """Per-image means of the summed epoch (``sums``: run_epoch's eight sums and the seconds summed over workers)."""
    n = max(sums[7], 1.0)
    metrics = {
        "train_loss": sums[0] / n,
        "train_task_loss": sums[1] / n,
        "train_ce_clean": sums[2] / n,
        "train_acc": sums[5] / n,
        "images_per_s": sums[7] / (sums[8] / world),
        "lr": lr,
    }
    if cfg.objective.mode != "natural":
        metrics["train_ce_pert"] = sums[3] / n
        metrics["train_pert_acc"] = sums[6] / n
        metrics[stability_key(cfg)] = sums[4] / n
    return metrics


def gain_metrics(model) -> dict[str, float]:
    """``dlif_gain/l{l}_t{t}``: the DLIF gains a^l[t] (none for LIF)."""
    gains = model.dlif_gains()
    if gains is None:
        return {}
    return {f"{GAIN_PREFIX}l{l}_t{t}": float(gains[l, t]) for l in range(gains.shape[0]) for t in range(gains.shape[1])}


# -- what an epoch reports and checkpoints ------------------------------------------------------


def report_payload(epoch: int, metrics: dict[str, float], val_metrics: dict[str, float]) -> dict[str, float]:
    """The metrics handed to ``ray.train.report``: the epoch, the training metrics without the DLIF
    gains, and the validation accuracies (``val_*``) when validation ran inline."""
    report = {"epoch": epoch, **{k: v for k, v in metrics.items() if not k.startswith(GAIN_PREFIX)}}
    return report | {k: v for k, v in val_metrics.items() if k.startswith("val_")}


def checkpoint_state(model, optimizer, scheduler, epoch: int, history: list[dict], resumes: list[int],
                     scaler: torch.amp.GradScaler | None = None) -> dict:
    """What a checkpoint holds: everything a worker needs to go on exactly where this epoch ended."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "rng": rng_state(),
        "history": history,
        "resumes": resumes,  # epochs this run was resumed from
    }


def epoch_line(cfg: JobConfig, epoch: int, m: dict[str, float]) -> str:
    """The per-epoch progress line of rank 0."""
    parts = [f"[{cfg.run.name}] epoch {epoch}/{cfg.optim.epochs}", f"loss {m['train_loss']:.4f}", f"task {m['train_task_loss']:.4f}"]
    key = stability_key(cfg)
    if key in m:
        parts.append(f"{cfg.objective.regularizer} {m[key]:.4g}")
    parts.append(f"acc {100 * m['train_acc']:.2f}%")
    if "train_pert_acc" in m:
        parts.append(f"pert acc {100 * m['train_pert_acc']:.2f}%")
    parts.append(f"{m['images_per_s']:.1f} img/s")
    parts.append(f"lr {m['lr']:.4g}")
    return "  ".join(parts)
