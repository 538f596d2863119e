"""jobs.training.figures: the training curves and the DLIF gain heatmap a run logs."""
from __future__ import annotations

import pytest
import torch

from jobs.training import figures
from tests.jobs.helpers import png_size


def test_heatmap_gains(tmp_path):
    out = figures.heatmap_gains(torch.rand(5, 8), tmp_path / "gains.png")
    assert png_size(out)[0] > 100
    with pytest.raises(ValueError, match=r"\[L, T\]"):
        figures.heatmap_gains(torch.rand(8), tmp_path / "bad.png")


def test_training_curves(tmp_path):
    """The training job's history: per-epoch numbers, per-layer gains (skipped), gaps."""
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "train_ce_clean": 2.1 / e, "train_acc": 0.1 * e,
         "val_robust_acc": 0.05 * e, "train_ms_mppd": 0.3 / e, "lr": 0.1 / e, "images_per_s": 300.0 + e,
         "note": "text is skipped", **{f"dlif_gain/l{l}_t{t}": 1.0 for l in range(3) for t in range(4)}}
        for e in range(1, 5)
    ]
    history[2].pop("val_robust_acc")  # a missing value is a gap
    out = figures.training_curves(history, tmp_path / "curves.png")
    assert png_size(out)[0] > 500
    with pytest.raises(ValueError, match="empty"):
        figures.training_curves([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match="numeric"):
        figures.training_curves([{"epoch": 1, "dlif_gain/l0_t0": 1.0}], tmp_path / "gains_only.png")


@pytest.mark.parametrize("key,panel", [
    ("train_loss", "loss"), ("train_ce_pert", "loss"), ("val_clean_acc", "accuracy"),
    ("train_pert_acc", "accuracy"), ("train_ms_mppd", "stability"), ("train_tasad", "stability"),
    ("lr", "lr"), ("images_per_s", "images_per_s"),
])
def test_training_curve_panels(key, panel):
    assert figures._panel_of(key) == panel
