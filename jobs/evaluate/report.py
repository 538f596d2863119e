"""Reports of an evaluation: the per-sample table (Parquet, Markdown), the eps curve (PNG),
the headline tags of a model version, the flags as run tags, and the champion decision.

Pure functions of a :class:`~stable_snn.attacks.ProtocolResult`; no MLflow calls here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stable_snn.attacks import WORST_CASE, ProtocolResult

RESULTS_PARQUET = "results.parquet"
RESULTS_MARKDOWN = "results.md"
EPS_CURVE_PNG = "eps_curve.png"

RESULTS_SCHEMA = pa.schema([
    ("sample", pa.int64()), ("label", pa.int64()), ("attack", pa.string()), ("correct", pa.bool_()),
    ("predicted", pa.int64()),
])


STRICT_HEADLINE = "robust_accuracy_strict"
"""Model-version tag of the headline number: the worst case of ``strict`` on the test split."""


def tag_prefix(protocol: str, split: str = "test") -> str:
    """``eval.<protocol>`` for the test split, ``eval.validation.<protocol>`` for the validation split."""
    return f"eval.{protocol}" if split == "test" else f"eval.{split}.{protocol}"


def data_key(dataset: str, split: str, limit: int | None, data_seed: int = 0) -> str:
    """What "the same data" means when comparing versions: a split, whole or as a balanced subset.

    On the validation split each version is scored on its own run's held-out images (the ones it
    never trained on), so the key names how they were cut, not which images they are.
    """
    return f"{dataset}:{split}" if limit is None else f"{dataset}:{split}:balanced-{limit}:seed{data_seed}"


def write_results_parquet(result: ProtocolResult, path: Path, sample_ids=None) -> Path:
    """One row per sample and attack: sample (index in the test split), label, attack, correct, predicted."""
    table = pa.Table.from_pylist(result.records(sample_ids), schema=RESULTS_SCHEMA)
    pq.write_table(table, path)
    return path


def results_markdown(result: ProtocolResult, header: dict[str, str]) -> str:
    lines = [f"# Evaluation: {header.get('model', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    return "\n".join(lines) + "\n\n" + result.to_markdown()


def eps_curve_points(result: ProtocolResult) -> list[tuple[float, float]]:
    """(eps, accuracy) of the clean row (eps 0) and every full-set PGD row, sorted by eps."""
    points = []
    for name, row in result.rows.items():
        if name == "clean" or (name.startswith("pgd-10_eps") and row.n == len(result.labels)):
            points.append((row.eps, row.accuracy))
    return sorted(points)


def plot_eps_curve(result: ProtocolResult, path: Path, title: str) -> Path:
    """Accuracy against eps (in /255) as a PNG (matplotlib, Agg canvas)."""
    points = eps_curve_points(result)
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([255 * e for e, _ in points], [100 * a for _, a in points], marker="o")
    ax.set_xlabel("eps (/255), PGD-10 with step eps/4")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def metrics_of(result: ProtocolResult) -> dict[str, float]:
    """MLflow metrics: ``accuracy/<row>``, ``flag/<check>`` (0/1), ``zero_gradient_fraction``, ``seconds/<row>``."""
    metrics = {f"accuracy/{name}": acc for name, acc in result.accuracies.items()}
    metrics.update({f"flag/{name}": float(flag.raised) for name, flag in result.flags.items()})
    if result.zero_gradient is not None:
        metrics["zero_gradient_fraction"] = result.zero_gradient_fraction
    metrics.update({f"seconds/{name}": s for name, s in result.seconds.items()})
    return metrics


def version_tags(result: ProtocolResult, *, data: str, run_id: str, split: str = "test") -> dict[str, str]:
    """Headline numbers as model-version tags ``<prefix>.<row>`` (:func:`tag_prefix`), plus data
    (:func:`data_key`), run and flags; the worst case of ``strict`` on the test split also as
    :data:`STRICT_HEADLINE`."""
    prefix = tag_prefix(result.protocol, split)
    tags = {f"{prefix}.{name}": f"{acc:.4f}" for name, acc in result.accuracies.items()}
    tags[f"{prefix}.data"] = data
    tags[f"{prefix}.run_id"] = run_id
    if result.flags:
        tags[f"{prefix}.flags"] = ",".join(result.raised_flags) or "none"
    if result.protocol == "strict" and split == "test" and WORST_CASE in result.accuracies:
        tags[STRICT_HEADLINE] = f"{result.accuracies[WORST_CASE]:.4f}"
    return tags


def flag_tags(result: ProtocolResult) -> dict[str, str]:
    """Run tags of the sanity flags: ``flag.<check>`` (raised / ok) and ``flags_raised``."""
    if not result.flags:
        return {}
    tags = {f"flag.{name}": "raised" if f.raised else "ok" for name, f in result.flags.items()}
    tags["flags_raised"] = ",".join(result.raised_flags) or "none"
    return tags


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(*, protocol: str, data: str, candidate_version: str, candidate_score: float,
                     champion_version: str | None, champion_tags: dict[str, str] | None,
                     split: str = "validation") -> PromotionDecision:
    """Move the champion alias only if the candidate's worst case beats the champion's on the same protocol and data
    (the validation split: each version on its own run's held-out images, cut the same way)."""
    prefix = tag_prefix(protocol, split)
    if champion_version is None:
        return PromotionDecision(True, "there is no champion yet")
    if str(champion_version) == str(candidate_version):
        return PromotionDecision(False, f"version {candidate_version} already is the champion")
    tags = champion_tags or {}
    score = tags.get(f"{prefix}.{WORST_CASE}")
    if score is None or tags.get(f"{prefix}.data") != data:
        return PromotionDecision(False, (
            f"champion version {champion_version} has no {protocol} result on {data} to compare with "
            f"(its tag {prefix}.data={tags.get(f'{prefix}.data')!r}); "
            "evaluate it with the same protocol, --split, --limit and --data-seed first"))
    champion_score = float(score)
    if math.isnan(candidate_score) or candidate_score <= champion_score:
        return PromotionDecision(False, (f"worst case {candidate_score:.4f} does not beat champion version "
                                         f"{champion_version} ({champion_score:.4f})"))
    return PromotionDecision(True, (
        f"worst case {candidate_score:.4f} beats champion version {champion_version} ({champion_score:.4f})"))
