"""What a search leaves behind: one row per trial (early-stopped ones included), the clean-vs-robust
plot with its Pareto front, the best config on the search's MLflow run, and the best trial's selected
checkpoint registered."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from ..cli import percent
from ..tracking.models import register_model
from ..tracking.runs import RUN_NAME_TAG, validation_history
from ..training.checkpoints import intact_checkpoints, list_checkpoints, load_checkpoint_at, network_of
from ..training.figures import save_figure
from ..training.selection import SELECTED_CHECKPOINT, SELECTED_EPOCH, VAL_KEYS, record_selection
from .space import SEED_KEY, SearchSpace
from .trial import POINT_TAG, TRIAL_TAG

log = logging.getLogger("stable_snn.tune")

STOPPED_TAG = "stopped_early"  # "true" on the child run of a trial the scheduler stopped
FINAL = "final_"  # prefix of the validation metrics at a trial's last epoch


def trial_rows(client, parent_run_id: str, experiment: str, space: SearchSpace) -> list[dict]:
    """One row per trial (its child run): searched values, seed, the validation metrics of the selected
    checkpoint and of the last epoch, the selected epoch and checkpoint, whether it stopped early."""
    exp = client.get_experiment_by_name(experiment)
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    rows = []
    for run in children:
        hist = validation_history(client, run.info.run_id)
        epoch = run.data.tags.get(SELECTED_EPOCH)
        selected = hist.get(int(epoch), {}) if epoch is not None else {}
        final = hist[max(hist)] if hist else {}
        point = json.loads(run.data.tags.get(POINT_TAG, "{}"))
        rows.append({
            "trial_id": run.data.tags.get(TRIAL_TAG), "run_id": run.info.run_id, "status": run.info.status,
            STOPPED_TAG: run.data.tags.get(STOPPED_TAG) == "true",
            **{k: point.get(k, run.data.params.get(k)) for k in space.searched_keys},
            "point": json.dumps(point, sort_keys=True), SEED_KEY: int(run.data.params.get(SEED_KEY, 0)),
            **{k: selected.get(k) for k in VAL_KEYS}, **{FINAL + k: final.get(k) for k in VAL_KEYS},
            "selected_epoch": epoch, "final_epoch": max(hist) if hist else None,
            "checkpoint": run.data.tags.get(SELECTED_CHECKPOINT),
        })
    rows.sort(key=lambda r: r["trial_id"] or "")
    return rows


def log_unlogged_epochs(client, run_id: str, checkpoints: dict[int, str]) -> dict[int, dict[str, float]]:
    """The run's validation history, after logging the epochs its latest checkpoint holds and MLflow
    does not: a scheduler's stop can end a trial between its report to Tune and rank 0 logging that
    epoch, while the checkpoint (written after validation) already holds the epoch's metrics."""
    scores = validation_history(client, run_id)
    if not checkpoints or max(checkpoints) in scores:
        return scores
    state, _ = load_checkpoint_at(checkpoints[max(checkpoints)])
    for entry in state.get("history", []):
        if int(entry["epoch"]) not in scores:
            for key, value in entry.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    client.log_metric(run_id, key, float(value), step=int(entry["epoch"]))
    return validation_history(client, run_id)


def end_stopped_trials(client, parent_run_id: str, experiment: str, storage: str, errored: set[str]) -> list[str]:
    """End the child runs a scheduler stopped mid-training (still RUNNING once the search is over, or
    closed FAILED by their stopped driver although Tune saw no error):
    the selection rule picks among the checkpoints they wrote, the run is tagged ``stopped_early``
    and ends KILLED with the metrics it reached.  Runs of trials in ``errored`` (trial ids) end
    FAILED, and so do runs that never validated an epoch.  Returns the ids of the trials ended as
    stopped early."""
    exp = client.get_experiment_by_name(experiment)
    # A stopped trial's driver may have closed its run FAILED on the way out (its ``finally``), or been
    # stopped before it could (RUNNING): the trials Tune saw erroring are the ``errored`` ones.
    unfinished = [run for status in ("RUNNING", "FAILED") for run in client.search_runs([exp.experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = '{status}'"))]
    to_end = [run for run in unfinished if run.info.status == "RUNNING" or run.data.tags.get(TRIAL_TAG) not in errored]
    stopped = []
    for run in to_end:
        run_id, trial_id = run.info.run_id, run.data.tags.get(TRIAL_TAG)
        checkpoints, _ = intact_checkpoints(list_checkpoints(storage, run.data.tags[RUN_NAME_TAG]))
        scores = validation_history(client, run_id) if trial_id in errored else log_unlogged_epochs(client, run_id, checkpoints)
        if trial_id in errored or not scores:  # a scheduler stops a trial only after it reported an epoch
            client.set_terminated(run_id, status="FAILED")
            continue
        if any("val_robust_acc" in scores.get(e, {}) for e in checkpoints):
            params = run.data.params
            n = min(int(params["validation.subset"]), int(params["data.val_size"]))
            record_selection(client, run_id, checkpoints, scores, n)
        client.set_tag(run_id, STOPPED_TAG, "true")
        client.set_tag(run_id, "stopped_at_epoch", str(max(scores, default=0)))
        client.set_terminated(run_id, status="KILLED")
        stopped.append(trial_id)
        log.info("trial %s was stopped early by the scheduler; its MLflow run %s ended", trial_id, run_id)
    return stopped


def is_finished(row: dict) -> bool:
    """Whether a trial trained to the end with a validated, selected checkpoint."""
    return (row["status"] == "FINISHED" and not row[STOPPED_TAG] and row.get("val_robust_acc") is not None
            and bool(row.get("checkpoint")))


def finished_trials(rows: list[dict]) -> list[dict]:
    """The trials that trained to the end with a validated, selected checkpoint."""
    return [r for r in rows if is_finished(r)]


def best_trial(rows: list[dict], space: SearchSpace) -> dict | None:
    """The finished trial whose selected checkpoint scores best (:meth:`SearchSpace.score`)."""
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
    """Validation clean vs robust accuracy of the trials' selected checkpoints, the Pareto front in
    red, early-stopped trials as open circles."""
    fig = Figure(figsize=(5, 4), layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in rows if r.get("val_clean_acc") is not None and r.get("val_robust_acc") is not None]
    if done:
        pts = [(r["val_clean_acc"], r["val_robust_acc"]) for r in done]
        front = set(pareto_front(pts))
        colours = ["C3" if i in front else "C0" for i in range(len(pts))]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], edgecolors=colours,
                   facecolors=["none" if r[STOPPED_TAG] else c for r, c in zip(done, colours)])
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
    for key in space.searched_keys:
        client.log_param(parent_run_id, f"best.{key}", best.get(key))
    for k in ("val_robust_acc", "val_clean_acc"):
        if best.get(k) is not None:
            client.log_metric(parent_run_id, f"best_{k}", best[k])
    client.set_tag(parent_run_id, "best_trial", best["trial_id"])


def register_best(client, best: dict, alias: str):
    """Register the best trial's selected checkpoint into the trial's run, with the selection's tags."""
    state, cfg = load_checkpoint_at(best["checkpoint"])
    summary = {k: best.get(k) for k in VAL_KEYS}
    version = register_model(client, best["run_id"], network_of(state, cfg), cfg, int(best["selected_epoch"]),
                             summary, alias)
    for key, value in client.get_run(best["run_id"]).data.tags.items():
        if key.startswith("selection."):
            client.set_model_version_tag(version.name, version.version, key, value)
    return version


def summary_lines(name: str, rows: list[dict], finished: int, errors: int, space: SearchSpace) -> list[str]:
    """What the job prints: one line for the search, one per trial."""
    stopped = sum(r[STOPPED_TAG] for r in rows)
    lines = [f"search {name}: {len(rows)} trial(s), {finished} finished, {stopped} stopped early, {errors} errored"]
    for r in rows:
        values = ", ".join(f"{k}={r.get(k)}" for k in [*space.searched_keys, SEED_KEY])
        lines.append(f"  {r['trial_id']}  {values}  clean {percent(r.get('val_clean_acc'))}  "
                     f"robust {percent(r.get('val_robust_acc'))}  (epoch {r.get('selected_epoch')}, {r['status']})")
    return lines
