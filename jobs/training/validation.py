"""Per-epoch validation of a checkpoint: clean and PGD robust accuracy on a fixed subset, each with
its standard error (``val_clean_acc_se``, ``val_robust_acc_se``: sqrt(p (1 - p) / n) on n images).

Runs as Ray Train's validation task (``ValidationConfig``) so training workers do not
wait for it, or inline when training runs in-process.  It also measures each spiking
layer's firing rate, the synaptic operations per image and the per-layer MPPD L2
gains, and logs everything to the training run at ``step=epoch``.
"""
from __future__ import annotations

import logging

import torch
from filelock import FileLock

from stable_snn.attacks import PGD, decode, eval_mode
from stable_snn.data import build_splits, stack_dataset
from stable_snn.energy import activity
from stable_snn.gains import mppd_gains

from ..config import JobConfig
from ..logs import setup_logging
from ..threads import use_reserved_cpus
from ..tracking.outbox import run_logger
from ..tracking.runs import client_for
from .checkpoints import load_ray_checkpoint, network_of
from .selection import with_standard_errors

log = logging.getLogger(__name__)


def load_splits(cfg: JobConfig, augment: bool = False):
    """The config's train / validation split; a download (when asked) is serialised by a file lock per node."""
    root = cfg.data.resolved_root()
    kwargs = dict(
        format=cfg.data.format, download=cfg.data.download, val_size=cfg.data.val_size,
        train_subset=cfg.data.train_subset, test_subset=1, seed=cfg.run.seed, augment=augment, cutout=cfg.data.cutout,
    )
    if not cfg.data.download:
        return build_splits(cfg.data.dataset, root, **kwargs)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".download.lock")):
        return build_splits(cfg.data.dataset, root, **kwargs)


def validation_subset(cfg: JobConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation images ``[N, 3, 32, 32]`` and labels: ``validation.subset`` images of the
    validation split drawn with the run's seed (the split itself is ordered by class)."""
    images, labels = stack_dataset(load_splits(cfg).val)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.run.seed))
    keep = order[: min(cfg.validation.subset, len(labels))]
    return images[keep], labels[keep]


@torch.no_grad()
def _accuracy(model, images, labels, batch_size) -> float:
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += int((decode(model(images[i : i + batch_size])).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / len(labels)


def evaluate_model(model, cfg: JobConfig, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Clean / PGD accuracy, activity and MPPD gains of ``model`` (eval mode) on the given subset."""
    model.eval()
    bs = cfg.validation.batch_size
    pgd = PGD(eps=cfg.validation.eps, alpha=cfg.validation.pgd_step_size, steps=cfg.validation.pgd_steps)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    robust = 0
    for i in range(0, len(labels), bs):
        x, y = images[i : i + bs], labels[i : i + bs]
        adv = pgd(model, x, y, generator=gen)
        with torch.no_grad():
            robust += int((decode(model(adv)).argmax(1) == y).sum())
    metrics = with_standard_errors({
        "val_clean_acc": _accuracy(model, images, labels, bs),
        "val_robust_acc": robust / len(labels),
    }, len(labels))
    act = activity(model, images[: min(64, len(labels))])
    metrics["sops_per_image"] = act.sops_per_image
    metrics["dense_macs_per_image"] = act.dense_macs_per_image
    for name, rate in act.firing_rates.items():
        metrics[f"firing_rate/{name}"] = rate
    for g in mppd_gains(model, iters=50):
        metrics[f"mppd_gain/{g.name}"] = g.exact_gain
        metrics[f"mppd_gain_paper_bound/{g.name}"] = g.paper_bound
    return metrics


def validate_inline(model, cfg: JobConfig, data, epoch: int) -> dict[str, float]:
    """Validation on rank 0 inside the training loop (the model's modes are restored afterwards)."""
    images, labels = data
    with eval_mode(model):
        metrics = evaluate_model(model, cfg, images, labels)
    _log_validation(cfg, epoch, metrics, len(labels))
    return metrics


def _log_validation(cfg: JobConfig, epoch: int, metrics: dict[str, float], n: int) -> None:
    log.info("[%s] epoch %d validation: clean %.2f%% (SE %.2f)  PGD-%d %.2f%% (SE %.2f)  (%d images)", cfg.run.name,
             epoch, 100 * metrics["val_clean_acc"], 100 * metrics["val_clean_acc_se"], cfg.validation.pgd_steps,
             100 * metrics["val_robust_acc"], 100 * metrics["val_robust_acc_se"], n)


def validate_checkpoint(checkpoint, *, epoch: int, run_id: str | None = None, tracking_uri: str | None = None) -> dict:
    """Ray Train validation function for a registered checkpoint.

    Loads it, evaluates it, and logs the epoch's training metrics (from the checkpoint's
    history) together with the validation metrics to the MLflow run at ``step=epoch``, in
    one batch.  Ray Train runs it once per registered checkpoint, and again after a relaunch
    for a checkpoint whose validation had not finished (its snapshot keeps it pending); the
    logger skips an epoch the run already has, so every epoch is logged exactly once.  While
    MLflow is unreachable the metrics wait in the run's outbox (sent by the next validation
    or by the driver).
    """
    setup_logging()
    state, cfg = load_ray_checkpoint(checkpoint)
    use_reserved_cpus(cfg.run.validation_cpus)
    model = network_of(state, cfg)
    images, labels = validation_subset(cfg)
    metrics = evaluate_model(model, cfg, images, labels)
    _log_validation(cfg, epoch, metrics, len(labels))
    if run_id and tracking_uri:
        train = next((h for h in state.get("history", []) if int(h["epoch"]) == epoch), {})
        run_logger(client_for(tracking_uri), run_id, cfg.run).log({k: v for k, v in train.items() if k != "epoch"} | metrics, step=epoch)
    return {k: v for k, v in metrics.items() if k.startswith("val_")} | {"epoch": epoch}
