"""The search's report (the paper's Table 2 as one command): the trials that trained to the end,
grouped by their searched values with the seed left out, each cell the mean +- sd over the seeds of

* the validation clean and PGD accuracy of the selected checkpoint and of the final epoch, and
* with a test-image limit, the selected checkpoint's accuracies on the TEST split under the
  ``quick`` protocol (clean, FGSM, PGD-10; :func:`stable_snn.attacks.evaluate_protocol`), on a
  class-balanced subset drawn with seed 0, the same images for every trial.

Test accuracies are reported only: nothing is selected or registered on them.  The report is
logged to the search's MLflow run as ``report.md``, ``report.csv`` and ``report.png``.
"""
from __future__ import annotations

import logging
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from stable_snn.attacks import evaluate_protocol
from stable_snn.data import build_splits, stack_dataset

from ..training.checkpoints import load_checkpoint_at, network_of
from ..training.figures import save_figure
from .results import FINAL, finished_trials, is_finished, markdown_table
from .space import SearchSpace

log = logging.getLogger("stable_snn.tune")

TEST_PROTOCOL = "quick"
TEST_SEED = 0
VALIDATION_COLUMNS = {"val_clean_acc": "val clean (selected)", "val_robust_acc": "val robust (selected)",
                      f"{FINAL}val_clean_acc": "val clean (final)", f"{FINAL}val_robust_acc": "val robust (final)"}


def test_key(row_name: str) -> str:
    """The report's key of a protocol row: ``pgd-10`` -> ``test_pgd10``."""
    return "test_" + row_name.replace("-", "")


def load_test_images(cfg, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``limit`` class-balanced images ``[N, 3, 32, 32]`` of the config's test split (seed 0) and labels;
    only those images are decoded."""
    splits = build_splits(cfg.data.dataset, cfg.data.resolved_root(), format=cfg.data.format,
                          download=cfg.data.download, val_size=0, train_subset=1, test_subset=limit, seed=TEST_SEED,
                          augment=False)
    return stack_dataset(splits.test)


def evaluate_on_test(rows: list[dict], limit: int) -> list[dict]:
    """Each finished trial's selected checkpoint on ``limit`` test images under the quick protocol:
    ``rows`` with ``test_*`` accuracies added (one model at a time, in this process)."""
    data: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for row in rows:
        if not is_finished(row):
            out.append(row)
            continue
        state, cfg = load_checkpoint_at(row["checkpoint"])
        key = (cfg.data.dataset, str(cfg.data.resolved_root()))
        if key not in data:
            data[key] = load_test_images(cfg, limit)
        images, labels = data[key]
        result = evaluate_protocol(network_of(state, cfg).eval(), images, labels, TEST_PROTOCOL,
                                   batch_size=cfg.validation.batch_size, generator_seed=TEST_SEED)
        accuracies = {test_key(name): acc for name, acc in result.accuracies.items()}
        log.info("trial %s on %d test images (%s): %s", row["trial_id"], len(labels), TEST_PROTOCOL,
                 ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracies.items()))
        out.append(row | accuracies)
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def aggregate(rows: list[dict], space: SearchSpace) -> list[dict]:
    """One row per group of finished trials with equal searched values (the seed excepted): the values,
    the number of seeds, and ``<metric>_mean`` / ``<metric>_sd`` over the seeds (sd: n - 1)."""
    groups: dict[str, list[dict]] = {}
    for row in finished_trials(rows):
        groups.setdefault(row["point"], []).append(row)
    metrics = [*VALIDATION_COLUMNS, *dict.fromkeys(k for r in rows for k in r if k.startswith("test_"))]
    out = []
    for members in groups.values():
        agg = {k: members[0].get(k) for k in space.searched_keys} | {"seeds": len(members)}
        for m in metrics:
            values = [float(r[m]) for r in members if r.get(m) is not None]
            if values:
                agg[f"{m}_mean"], agg[f"{m}_sd"] = _mean_sd(values)
        agg["trials"] = " ".join(r["trial_id"] for r in members)
        out.append(agg)
    return out


def _label(metric: str) -> str:
    return VALIDATION_COLUMNS.get(metric) or metric.replace("_", " ")


def _pm(agg: dict, metric: str) -> str | None:
    if f"{metric}_mean" not in agg:
        return None
    sd = agg[f"{metric}_sd"]
    return f"{100 * agg[f'{metric}_mean']:.2f} ± {'n/a' if math.isnan(sd) else f'{100 * sd:.2f}'}"


def report_markdown(aggregated: list[dict], space: SearchSpace) -> str:
    """The report as a Markdown table: accuracies in percent, mean ± sd over the seeds."""
    metrics = list(dict.fromkeys(k.removesuffix("_mean") for a in aggregated for k in a if k.endswith("_mean")))
    rows = [{**{k: a.get(k) for k in space.searched_keys}, "seeds": a["seeds"], **{_label(m): _pm(a, m) for m in metrics}}
            for a in aggregated]
    return markdown_table(rows)


def plot_report(aggregated: list[dict], space: SearchSpace, out: Path) -> Path:
    """Robust accuracy per group: validation (selected, final) and test PGD-10, mean with sd bars."""
    metrics = [m for m in ("val_robust_acc", f"{FINAL}val_robust_acc", "test_pgd10")
               if any(f"{m}_mean" in a for a in aggregated)]
    fig = Figure(figsize=(max(5.0, 1.6 * len(aggregated) + 2), 4), layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(metrics), 1)
    for i, m in enumerate(metrics):
        means = [100 * a.get(f"{m}_mean", math.nan) for a in aggregated]
        sds = [100 * a.get(f"{m}_sd", math.nan) for a in aggregated]
        ax.bar([g + i * width for g in range(len(aggregated))], means, width, yerr=np.nan_to_num(sds), capsize=3,
               label=_label(m))
    names = ["\n".join(f"{k.split('.')[-1]}={a.get(k)}" for k in space.searched_keys) for a in aggregated]
    ax.set_xticks([g + width * (len(metrics) - 1) / 2 for g in range(len(aggregated))], names, fontsize=7)
    ax.set_ylabel("robust accuracy (%), mean ± sd over seeds")
    ax.set_title(f"search {space.name}")
    if metrics:
        ax.legend(fontsize=7)
    return save_figure(fig, out)


def log_report(client, parent_run_id: str, aggregated: list[dict], space: SearchSpace) -> str:
    """Log ``report.md``, ``report.csv`` and ``report.png`` to the search's run; returns the Markdown."""
    text = report_markdown(aggregated, space)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "report.md").write_text(text)
        pd.DataFrame(aggregated).to_csv(tmp / "report.csv", index=False)
        plot_report(aggregated, space, tmp / "report.png")
        for f in ("report.md", "report.csv", "report.png"):
            client.log_artifact(parent_run_id, str(tmp / f))
    return text
