"""Which checkpoint of a run stands for it: the one rule that ``jobs.train``, every ``jobs.tune``
trial and ``jobs.register`` apply, on the validation split only (never the test split).

**Rule**: keep the latest checkpoint unless an earlier one is better on validation robust accuracy
by more than two standard errors of the difference.  The earlier candidate is the one with the
highest validation robust accuracy (ties: the later epoch); the standard error of the difference is
``sqrt(se_earlier^2 + se_latest^2)`` with ``se = sqrt(p (1 - p) / n)`` per accuracy on ``n``
validation images.  Both accuracies come from the same images, whose errors are positively
correlated, so this treats them as independent and errs towards the latest checkpoint: a noisy
bump on a small validation subset cannot displace a model trained for longer.

Ray Train's ``CheckpointConfig(num_to_keep=k, checkpoint_score_attribute="val_robust_acc")`` keeps
the k best checkpoints by that score and, always, the latest one (Ray 2.60's checkpoint manager);
the rule picks either the latest or the best-scoring earlier checkpoint, so both survive with any
``k >= 1``.  The rule is applied to the checkpoints that exist, so what it selects can be loaded.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MARGIN_SE = 2.0  # how many standard errors an earlier checkpoint must win by
ROBUST, CLEAN = "val_robust_acc", "val_clean_acc"
RULE = (f"latest checkpoint unless an earlier one has a higher {ROBUST} by more than {MARGIN_SE:g} standard "
        "errors of the difference")


def standard_error(accuracy: float, n: int) -> float:
    """The standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` images."""
    if n < 1:
        raise ValueError(f"an accuracy needs at least one image, got n={n}")
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n)


def with_standard_errors(metrics: dict[str, float], n: int) -> dict[str, float]:
    """``metrics`` plus ``<key>_se`` for each of its validation accuracies (``val_*_acc``) on ``n`` images."""
    return metrics | {f"{k}_se": standard_error(v, n) for k, v in metrics.items()
                      if k.startswith("val_") and k.endswith("_acc")}


@dataclass(frozen=True)
class Selection:
    """The checkpoint the rule chose, and why."""

    epoch: int  # the selected checkpoint's epoch
    latest_epoch: int
    earlier_epoch: int | None  # the best earlier candidate (None: no earlier checkpoint was validated)
    gap: float  # val_robust_acc(earlier) - val_robust_acc(latest); 0 without an earlier one
    margin: float  # MARGIN_SE standard errors of that difference
    rule: str = RULE

    def tags(self) -> dict[str, str]:
        """The selection as MLflow tags (on the training run and the registered version)."""
        return {
            "selection.rule": self.rule,
            "selection.epoch": str(self.epoch),
            "selection.latest_epoch": str(self.latest_epoch),
            "selection.earlier_epoch": "" if self.earlier_epoch is None else str(self.earlier_epoch),
            "selection.gap": f"{self.gap:.6f}",
            "selection.margin": f"{self.margin:.6f}",
        }


def _se(metrics: dict[str, float], n: int | None) -> float:
    if metrics.get(f"{ROBUST}_se") is not None:
        return float(metrics[f"{ROBUST}_se"])
    if n is None:
        raise ValueError(f"no {ROBUST}_se logged and no validation size given")
    return standard_error(float(metrics[ROBUST]), n)


def select_checkpoint(scores: dict[int, dict[str, float]], n_images: int | None = None) -> Selection:
    """Apply the rule to ``{epoch: validation metrics}`` of the checkpoints that exist.

    Epochs without ``val_robust_acc`` are not candidates.  Standard errors come from the logged
    ``val_robust_acc_se``, else from ``n_images`` (the validation subset's size).
    """
    validated = {int(e): m for e, m in scores.items() if m.get(ROBUST) is not None}
    if not validated:
        raise ValueError(f"no checkpoint has a validation {ROBUST} to select on")
    latest = max(validated)
    earlier = [e for e in validated if e < latest]
    if not earlier:
        return Selection(latest, latest, None, 0.0, 0.0)
    best = max(earlier, key=lambda e: (validated[e][ROBUST], e))
    gap = float(validated[best][ROBUST]) - float(validated[latest][ROBUST])
    margin = MARGIN_SE * math.hypot(_se(validated[best], n_images), _se(validated[latest], n_images))
    return Selection(best if gap > margin else latest, latest, best, gap, margin)


SELECTED_EPOCH, SELECTED_CHECKPOINT = "selected_epoch", "selected_checkpoint"  # tags of a training run
VAL_KEYS = (CLEAN, ROBUST, f"{CLEAN}_se", f"{ROBUST}_se")


def validation_size(cfg) -> int:
    """The number of validation images a run of ``cfg`` validates on (``validation.subset`` of the split)."""
    return min(cfg.validation.subset, cfg.data.val_size)


def record_selection(client, run_id: str, checkpoints: dict[int, str], scores: dict[int, dict[str, float]],
                     n_images: int, named: bool = False) -> tuple[Selection, str, dict[str, float | None]]:
    """Select among ``checkpoints`` (``{epoch: path}``, the ones that exist) by their validation ``scores``
    and tag the MLflow run ``run_id`` with the selection; returns ``(selection, path, its metrics)``.
    ``named``: the caller named the one checkpoint to take (recorded as the rule)."""
    selection = select_checkpoint({e: scores.get(e, {}) for e in checkpoints}, n_images)
    if named:
        selection = dataclasses.replace(selection, rule="the checkpoint named by the user")
    path = checkpoints[selection.epoch]
    for key, value in {**selection.tags(), SELECTED_EPOCH: str(selection.epoch), SELECTED_CHECKPOINT: path}.items():
        client.set_tag(run_id, key, value)
    return selection, path, {k: scores[selection.epoch].get(k) for k in VAL_KEYS}


def tag_version(client, version, selection: Selection) -> None:
    """Record on a registered model version which rule chose its checkpoint, and by what margin."""
    for key, value in selection.tags().items():
        client.set_model_version_tag(version.name, version.version, key, value)
