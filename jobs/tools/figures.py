"""The paper's Figure 1: MPPD vs TASAD vs STD on one LIF neuron.

    python -m jobs.tools.figures fig1 --out fig1.png

Figure 1 (Sec. 3.1-3.2): one LIF neuron (lam = 0.99, theta = 1) receives a constant input
of 0.3 theta for 30 steps, perturbed by +0.1 theta (constant) or by Gaussian noise
N(0, (0.3 theta)^2) drawn from a seeded generator.

* (a) membrane potentials v[t] (before reset, Eq. 1) of the clean and the perturbed run, their
  difference (the unsimplified perturbation dynamics, Eq. 9) and the MPPD (Eq. 11);
* (b) MPPD, TASAD (Eq. 12) and STD (Eq. 13) over time for the constant perturbation;
* (c) the same for the Gaussian perturbation.

TASAD and STD at step t are computed on the prefix [1:t].  Differences are taken as
perturbed minus clean (the paper's eps = v - v~ with the opposite sign), so a positive
perturbation gives a positive curve: for the constant one MPPD[t] = (1 - lam^t)/(1 - lam) * 0.1 theta.

Everything is computed with the library (``lif_multistep_reference``, ``mppd``, ``tasad``,
``std``); plotting uses matplotlib's object API with the Agg canvas (no pyplot state).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from stable_snn.neurons import lif_multistep_reference
from stable_snn.perturbation import mppd, std, tasad

from ..training.figures import save_figure

FIG1_TIMESTEPS = 30
FIG1_INPUT = 0.3  # x theta
FIG1_CONSTANT_PERTURBATION = 0.1  # x theta
FIG1_GAUSSIAN_STD = 0.3  # x theta


@dataclass(frozen=True)
class NeuronCurves:
    """Curves of one LIF neuron under one input perturbation, each ``[T]`` (index t-1 is step t)."""

    steps: np.ndarray  # 1..T
    current: np.ndarray  # clean input current I[t]
    perturbation: np.ndarray  # I~[t] - I[t]
    v_clean: np.ndarray  # membrane potential before reset, clean run
    v_pert: np.ndarray  # membrane potential before reset, perturbed run
    spikes_clean: np.ndarray
    spikes_pert: np.ndarray
    potential_difference: np.ndarray  # v~[t] - v[t] (Eq. 9, with the reset)
    mppd: np.ndarray  # Eq. 11 of the perturbation (no reset)
    tasad: np.ndarray  # Eq. 12 on the prefix [1:t]
    std: np.ndarray  # Eq. 13 on the prefix [1:t]


def single_neuron_curves(
    current: torch.Tensor,
    perturbation: torch.Tensor,
    leak: float = 0.99,
    threshold: float = 1.0,
) -> NeuronCurves:
    """Run one LIF neuron (Eq. 1) on ``current`` and ``current + perturbation`` (both ``[T]``)."""
    if current.dim() != 1 or perturbation.shape != current.shape:
        raise ValueError(
            f"current and perturbation must both have shape [T], got {tuple(current.shape)} "
            f"and {tuple(perturbation.shape)}"
        )
    clean = current.double().view(-1, 1)  # [T, B=1]
    pert = clean + perturbation.double().view(-1, 1)
    with torch.no_grad():
        s, v = lif_multistep_reference(clean, leak, threshold, 1.0)
        s_p, v_p = lif_multistep_reference(pert, leak, threshold, 1.0)
        eps = mppd(pert - clean, leak)[:, 0]
        T = clean.shape[0]
        seq, seq_p = s.view(T, 1, 1), s_p.view(T, 1, 1)  # [T, B, N] for the spike distances
        tasad_t = [float(tasad(seq[:t], seq_p[:t])) for t in range(1, T + 1)]
        std_t = [float(std(seq[:t], seq_p[:t])) for t in range(1, T + 1)]
    return NeuronCurves(
        steps=np.arange(1, T + 1),
        current=clean[:, 0].numpy(),
        perturbation=(pert - clean)[:, 0].numpy(),
        v_clean=v[:, 0].numpy(),
        v_pert=v_p[:, 0].numpy(),
        spikes_clean=s[:, 0].numpy(),
        spikes_pert=s_p[:, 0].numpy(),
        potential_difference=(v_p - v)[:, 0].numpy(),
        mppd=eps.numpy(),
        tasad=np.asarray(tasad_t),
        std=np.asarray(std_t),
    )


def fig1_curves(
    timesteps: int = FIG1_TIMESTEPS,
    leak: float = 0.99,
    threshold: float = 1.0,
    seed: int = 0,
) -> dict[str, NeuronCurves]:
    """The two experiments of Figure 1: ``{"constant": ..., "gaussian": ...}``."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    current = torch.full((timesteps,), FIG1_INPUT * threshold, dtype=torch.float64)
    constant = torch.full((timesteps,), FIG1_CONSTANT_PERTURBATION * threshold, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    gaussian = FIG1_GAUSSIAN_STD * threshold * torch.randn(timesteps, generator=generator, dtype=torch.float64)
    return {
        "constant": single_neuron_curves(current, constant, leak, threshold),
        "gaussian": single_neuron_curves(current, gaussian, leak, threshold),
    }


def _distance_panel(ax, curves: NeuronCurves, title: str) -> None:
    ax.plot(curves.steps, curves.mppd, "k-", label="MPPD (Eq. 11)")
    ax.plot(curves.steps, curves.tasad, "-", color="tab:orange", label="TASAD (Eq. 12)")
    ax.plot(curves.steps, curves.std, "-", color="tab:green", label="STD (Eq. 13)")
    ax.axhline(0.0, color="0.7", lw=0.5)
    ax.set_xlabel("time step t")
    ax.set_title(title)
    ax.legend(fontsize=7)


def plot_fig1(curves: dict[str, NeuronCurves], out: str | Path, threshold: float = 1.0) -> Path:
    """Draw Figure 1 from :func:`fig1_curves` into ``out`` (PNG or any format matplotlib writes)."""
    const, gauss = curves["constant"], curves["gaussian"]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    ax_a.plot(const.steps, const.v_clean, "r-", label=f"v, input {FIG1_INPUT:g}θ")
    ax_a.plot(const.steps, const.v_pert, "b-", label=f"ṽ, input {FIG1_INPUT + FIG1_CONSTANT_PERTURBATION:g}θ")
    ax_a.plot(const.steps, const.potential_difference, "k:", label="ṽ − v (unsimplified, Eq. 9)")
    ax_a.plot(const.steps, const.mppd, "k-", label="MPPD (Eq. 11)")
    ax_a.axhline(threshold, color="0.6", ls="--", lw=0.8, label="threshold θ")
    ax_a.set_xlabel("time step t")
    ax_a.set_ylabel("membrane potential")
    ax_a.set_title(f"(a) constant perturbation +{FIG1_CONSTANT_PERTURBATION:g}θ")
    ax_a.legend(fontsize=7)
    _distance_panel(ax_b, const, f"(b) constant perturbation +{FIG1_CONSTANT_PERTURBATION:g}θ")
    _distance_panel(ax_c, gauss, f"(c) Gaussian perturbation N(0, ({FIG1_GAUSSIAN_STD:g}θ)²)")
    return save_figure(fig, out)


def fig1(out: str | Path, timesteps: int = FIG1_TIMESTEPS, leak: float = 0.99, seed: int = 0) -> dict[str, NeuronCurves]:
    """Compute and draw Figure 1; returns the curves behind it."""
    curves = fig1_curves(timesteps, leak, 1.0, seed)
    plot_fig1(curves, out)
    return curves


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tools.figures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="figure", required=True)
    p1 = sub.add_parser("fig1", help="Figure 1: MPPD vs TASAD/STD for one LIF neuron")
    p1.add_argument("--out", required=True, help="output file (PNG)")
    p1.add_argument("--timesteps", type=int, default=FIG1_TIMESTEPS)
    p1.add_argument("--leak", type=float, default=0.99)
    p1.add_argument("--seed", type=int, default=0, help="seed of the Gaussian perturbation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.figure == "fig1":
        fig1(args.out, args.timesteps, args.leak, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
