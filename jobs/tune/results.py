"""What a search leaves behind: one row per trial, the clean-vs-robust plot with its Pareto front,
the best config on the search's MLflow run, and the best trial's checkpoint registered."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from ..cli import percent
from ..tracking.models import register_model
from ..training.checkpoints import load_checkpoint_at, network_of
from ..training.figures import save_figure
from .space import SearchSpace
from .trial import TRIAL_TAG

VAL_KEYS = ("val_robust_acc", "val_clean_acc")


def trial_rows(client, parent_run_id: str, experiment: str, space: SearchSpace) -> list[dict]:
    """One row per trial (its child run): searched values, best validation metrics, checkpoint."""
    exp = client.get_experiment_by_name(experiment)
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    rows = []
    for run in children:
        best = dict.fromkeys(VAL_KEYS)
        hist = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in VAL_KEYS}
        epoch = run.data.tags.get("best_epoch")
        if epoch is not None and int(epoch) in hist["val_robust_acc"]:
            best = {k: hist[k].get(int(epoch)) for k in hist}
        rows.append({
            "trial_id": run.data.tags.get(TRIAL_TAG), "run_id": run.info.run_id, "status": run.info.status,
            **{p.key: run.data.params.get(p.key) for p in space.params}, **best,
            "best_epoch": epoch, "checkpoint": run.data.tags.get("best_checkpoint"),
        })
    rows.sort(key=lambda r: r["trial_id"] or "")
    return rows


def finished_trials(rows: list[dict]) -> list[dict]:
    """The trials that finished with a validated checkpoint."""
    return [r for r in rows if r["status"] == "FINISHED" and r.get("val_robust_acc") is not None and r.get("checkpoint")]


def best_trial(rows: list[dict], space: SearchSpace) -> dict | None:
    """The finished trial that scores best (:meth:`SearchSpace.score`)."""
    finished = finished_trials(rows)
    return max(finished, key=space.score) if finished else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (clean, robust), both maximised."""
    front = []
    for i, (c, r) in enumerate(points):
        if not any((c2 >= c and r2 >= r) and (c2 > c or r2 > r) for j, (c2, r2) in enumerate(points) if j != i):
            front.append(i)
    return front


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (columns default to the keys of the first row)."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_clean_vs_robust(rows: list[dict], title: str, out: Path) -> Path:
    """Validation clean vs robust accuracy of the trials, the Pareto front in red."""
    fig = Figure(figsize=(5, 4), layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in rows if r.get("val_clean_acc") is not None and r.get("val_robust_acc") is not None]
    if done:
        pts = [(r["val_clean_acc"], r["val_robust_acc"]) for r in done]
        front = set(pareto_front(pts))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=["C3" if i in front else "C0" for i in range(len(pts))])
        fp = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in fp], [p[1] for p in fp], "C3--", label="Pareto front")
        for r, (c, rb) in zip(done, pts):
            ax.annotate(r["trial_id"][-5:] if r["trial_id"] else "", (c, rb), fontsize=7)
        ax.legend()
    ax.set_xlabel("validation clean accuracy")
    ax.set_ylabel("validation PGD robust accuracy")
    ax.set_title(title)
    return save_figure(fig, out)


def log_search_results(client, parent_run_id: str, rows: list[dict], space: SearchSpace, best: dict | None) -> None:
    """``trials.csv``, ``trials.md``, ``clean_vs_robust.png`` and the best trial's values and metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pd.DataFrame(rows).to_csv(tmp / "trials.csv", index=False)
        (tmp / "trials.md").write_text(markdown_table(rows))
        plot_clean_vs_robust(rows, f"search {space.name}", tmp / "clean_vs_robust.png")
        for f in ("trials.csv", "trials.md", "clean_vs_robust.png"):
            client.log_artifact(parent_run_id, str(tmp / f))
        if best is None:
            return
        (tmp / "best_config.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
        client.log_artifact(parent_run_id, str(tmp / "best_config.yaml"))
    for p in space.params:
        client.log_param(parent_run_id, f"best.{p.key}", best.get(p.key))
    for k in VAL_KEYS:
        if best.get(k) is not None:
            client.log_metric(parent_run_id, f"best_{k}", best[k])
    client.set_tag(parent_run_id, "best_trial", best["trial_id"])


def register_best(client, best: dict, alias: str):
    """Register the best trial's best checkpoint into the trial's run."""
    state, cfg = load_checkpoint_at(best["checkpoint"])
    summary = {k: best.get(k) for k in ("val_clean_acc", "val_robust_acc")}
    return register_model(client, best["run_id"], network_of(state, cfg), cfg, int(best["best_epoch"]), summary, alias)


def summary_lines(name: str, rows: list[dict], finished: int, errors: int, space: SearchSpace) -> list[str]:
    """What the job prints: one line for the search, one per trial."""
    lines = [f"search {name}: {len(rows)} trial(s), {finished} finished, {errors} errored"]
    for r in rows:
        values = ", ".join(f"{p.key}={r.get(p.key)}" for p in space.params)
        lines.append(f"  {r['trial_id']}  {values}  clean {percent(r.get('val_clean_acc'))}  "
                     f"robust {percent(r.get('val_robust_acc'))}  ({r['status']})")
    return lines
