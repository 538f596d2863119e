"""The figures a training run logs: its curves and the DLIF gain heatmap (the paper's Fig. 4).

Plotting uses matplotlib's object API with the Agg canvas (no pyplot state).
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def save_figure(fig: Figure, out: str | Path) -> Path:
    """Draw ``fig`` into ``out`` (PNG or any format matplotlib writes), creating its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=150)
    logger.info("wrote %s", out)
    return out


def heatmap_gains(gains, out: str | Path, title: str = "DLIF gains a^l[t]") -> Path:
    """Heatmap of the DLIF gains ``[L, T]`` (layers x time steps; paper Fig. 4).

    ``gains``: a tensor or array, e.g. ``model.dlif_gains()``.
    """
    g = np.asarray(gains.detach().cpu() if isinstance(gains, torch.Tensor) else gains, dtype=float)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"gains must have shape [L, T] with L, T >= 1, got {list(g.shape)}")
    L, T = g.shape
    fig = Figure(figsize=(max(4.0, 0.45 * T + 2.0), max(3.0, 0.3 * L + 1.5)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(g, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(0.5, T + 0.5, L + 0.5, 0.5))
    ax.set_xlabel("time step t")
    ax.set_ylabel("spiking layer l")
    ax.set_xticks(range(1, T + 1))
    ax.set_yticks(range(1, L + 1))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="a^l[t]")
    return save_figure(fig, out)


STABILITY_KEYS = ("ms_mppd", "mppd_tv_l1", "tasad", "std", "stability")


def _panel_of(key: str) -> str:
    """The panel a history key is drawn in: loss, accuracy, stability, or a panel of its own."""
    k = key.lower()
    if "acc" in k:
        return "accuracy"
    if "loss" in k or k.startswith("ce") or "_ce" in k:
        return "loss"
    if any(name in k for name in STABILITY_KEYS):
        return "stability"
    return key


def training_curves(
    history: list[dict],
    out: str | Path,
    x_key: str = "epoch",
    skip_prefixes: Sequence[str] = ("dlif_gain/",),
    skip_suffixes: Sequence[str] = ("_se",),
) -> Path:
    """Plot a training history (one dict of numbers per epoch) into ``out``.

    Keys with ``acc`` share an accuracy panel, keys with ``loss``/``ce`` a loss panel, the
    stability terms (``ms_mppd``, ``tasad``, ``std``) a third; every other numeric key (``lr``,
    ``images_per_s``, ...) gets a panel of its own, as its scale is its own.  Keys starting with
    one of ``skip_prefixes`` are left out (the per-layer DLIF gains belong in
    :func:`heatmap_gains`), and so are keys ending with one of ``skip_suffixes`` (the standard
    errors of the validation accuracies); non-numeric values and missing keys are gaps.  The x axis is
    ``history[i][x_key]`` when present, else ``i + 1``.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    xs = [float(h.get(x_key, i + 1)) for i, h in enumerate(history)]
    keys: list[str] = []
    for h in history:
        for k, v in h.items():
            if (k != x_key and k not in keys and _is_number(v) and not k.startswith(tuple(skip_prefixes))
                    and not k.endswith(tuple(skip_suffixes))):
                keys.append(k)
    if not keys:
        raise ValueError(f"history has no numeric entries besides {x_key!r}")
    fixed = [p for p in ("loss", "accuracy", "stability") if any(_panel_of(k) == p for k in keys)]
    panels = fixed + [k for k in keys if _panel_of(k) == k]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.3 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, panel in zip(axes, panels):
        for k in keys:
            if _panel_of(k) == panel:
                ys = [float(h[k]) if _is_number(h.get(k)) else math.nan for h in history]
                ax.plot(xs, ys, marker="o", ms=3, label=k)
        ax.set_xlabel(x_key)
        ax.set_title(panel)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return save_figure(fig, out)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def log_figures(client, run_id: str, history: list[dict], gains) -> None:
    """Log ``figures/training_curves.png`` and, for DLIF, ``figures/dlif_gains.png`` to the run."""
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(training_curves(history, Path(tmp) / "training_curves.png")), "figures")
        if gains is not None:
            client.log_artifact(run_id, str(heatmap_gains(gains, Path(tmp) / "dlif_gains.png")), "figures")
