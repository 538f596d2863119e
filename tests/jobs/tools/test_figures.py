"""jobs.tools.figures: Figure 1's curves and its PNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.tools import figures
from tests.jobs.helpers import png_size

LAM = 0.99


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
