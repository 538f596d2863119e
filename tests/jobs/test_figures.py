"""jobs.figures: Figure 1's curves and the PNGs of the figure functions."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from jobs import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAM = 0.99


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_fig1_cli_writes_png(tmp_path):
    out = tmp_path / "sub" / "fig1.png"
    assert figures.main(["fig1", "--out", str(out)]) == 0
    width, height = png_size(out)
    assert width > 1000 and height > 300  # three panels side by side
    assert out.stat().st_size > 20_000


def test_fig1_constant_perturbation_curves():
    curves = figures.fig1_curves()
    assert set(curves) == {"constant", "gaussian"}
    c = curves["constant"]
    t = np.arange(1, 31)
    assert c.steps.tolist() == t.tolist()
    np.testing.assert_allclose(c.mppd, (1 - LAM**t) / (1 - LAM) * 0.1, rtol=1e-12)
    np.testing.assert_allclose(c.current, 0.3)
    np.testing.assert_allclose(c.perturbation, 0.1)
    # the clean neuron first fires at t = 4, the perturbed one at t = 3 (0.4 (1 + lam + lam^2) > 1)
    assert c.spikes_clean[:4].tolist() == [0, 0, 0, 1]
    assert c.spikes_pert[:3].tolist() == [0, 0, 1]
    # before the first spike the unsimplified difference is the MPPD (Eq. 8)
    np.testing.assert_allclose(c.potential_difference[:2], c.mppd[:2], rtol=1e-12)
    assert not np.allclose(c.potential_difference, c.mppd)  # after it, the reset makes them differ
    np.testing.assert_allclose(c.potential_difference, c.v_pert - c.v_clean)


def _prefix_distances(s, s_p):
    tasad, std = [], []
    for t in range(1, len(s) + 1):
        tasad.append(abs(s[:t].sum() - s_p[:t].sum()) / t)
        std.append(np.sqrt(((s[:t] - s_p[:t]) ** 2).sum()))
    return np.array(tasad), np.array(std)


@pytest.mark.parametrize("kind", ["constant", "gaussian"])
def test_fig1_tasad_std_on_prefixes(kind):
    c = figures.fig1_curves(seed=3)[kind]
    tasad, std = _prefix_distances(c.spikes_clean, c.spikes_pert)
    np.testing.assert_allclose(c.tasad, tasad, atol=1e-5)
    np.testing.assert_allclose(c.std, std, atol=1e-5)


def test_fig1_gaussian_perturbation_is_seeded():
    a, b, other = (figures.fig1_curves(seed=s)["gaussian"] for s in (7, 7, 8))
    np.testing.assert_array_equal(a.perturbation, b.perturbation)
    assert not np.array_equal(a.perturbation, other.perturbation)
    assert 0.1 < a.perturbation.std() < 0.6  # N(0, 0.3^2) over 30 draws
    eps, expected = 0.0, []
    for d in a.perturbation:  # Eq. 11, step by step
        eps = LAM * eps + d
        expected.append(eps)
    np.testing.assert_allclose(a.mppd, expected, rtol=1e-12)


def test_single_neuron_curves_validates_shapes():
    with pytest.raises(ValueError, match=r"\[T\]"):
        figures.single_neuron_curves(torch.zeros(5), torch.zeros(4))


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
