"""How the MLflow UI shows an experiment of the jobs: saved views of its runs table, and links to them.

The MLflow UI (3.17) shows an experiment in the view of its "GenAI / Model training" switch, which
a new browser has on GenAI (traces), or in the one a link's ``workflowType`` names; it does not read
the experiment's ``mlflow.experimentKind`` tag for that (checked in headless Chromium).  So every
link made here carries ``workflowType=machine_learning``.

Each experiment also gets saved views of its runs table, listed under "Views" in the UI:
``training`` (every training run and search trial with ρ, χ, β, the mode and the validation
accuracies, best robust accuracy first) and ``evaluation`` (the attack evaluations with their
accuracies).  A saved view is an experiment tag ``mlflow.sharedViewState.<id>`` holding
``{name, createdAt, updatedAt, state}``, ``state`` being the JSON of the table's search, sort and
columns, and a link opens it with ``?viewStateShareKey=<id>``: the layout of MLflow 3.17.2's UI,
which has no API for it (``tests/ui/test_mlflow_ui.py`` renders it and fails when it changes).
"""
from __future__ import annotations

import json
import time
import urllib.parse

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
ML_VIEW = "workflowType=machine_learning"  # the UI's "Model training" side
TRAINING_VIEW, EVALUATION_VIEW = "stable-snn-training", "stable-snn-evaluation"


def column(kind: str, key: str) -> str:
    """The UI's id of a runs-table column: ``params.`objective.rho```, ``metrics.`val_robust_acc```."""
    return f"{kind}.`{key}`"


def view_states() -> dict[str, tuple[str, dict]]:
    """``{view id: (name, state)}`` of the saved views every experiment of the jobs gets."""
    objective = [column("params", f"objective.{k}") for k in ("mode", "rho", "chi", "beta")]
    return {
        TRAINING_VIEW: ("stable-snn: training runs and search trials", {
            "searchFilter": "tags.`stable_snn.job` = 'train'",
            "orderByKey": column("metrics", "val_robust_acc"), "orderByAsc": False,
            "selectedColumns": [column("metrics", "val_robust_acc"), column("metrics", "val_clean_acc"), *objective,
                                column("params", "model.arch"), column("params", "model.neuron")],
        }),
        EVALUATION_VIEW: ("stable-snn: attack evaluations", {
            "searchFilter": "tags.`stable_snn.job` = 'evaluate'",
            "orderByKey": column("metrics", "accuracy/worst-case"), "orderByAsc": False,
            "selectedColumns": [column("metrics", "accuracy/worst-case"), column("metrics", "accuracy/clean"), *objective],
        }),
    }


def add_views(client, exp_id: str, tags: dict[str, str]) -> None:
    """Save the views an experiment (with ``tags``) lacks; a view already there is left as it is."""
    now = int(time.time() * 1000)
    for view_id, (name, state) in view_states().items():
        if VIEW_TAG_PREFIX + view_id not in tags:
            envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
            client.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + view_id, json.dumps(envelope))


def runs_link(tracking_uri: str, exp_id: str, view: str | None = TRAINING_VIEW) -> str:
    """The experiment's runs table in the model-training view, with a saved view (None: the plain table)."""
    share = f"viewStateShareKey={view}&" if view else ""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{exp_id}/runs?{share}{ML_VIEW}"


def run_link(tracking_uri: str, exp_id: str, run_id: str) -> str:
    return f"{tracking_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}?{ML_VIEW}"


def compare_link(tracking_uri: str, exp_id: str, run_ids: list[str]) -> str:
    """The UI's comparison of ``run_ids`` (parameters, metrics, parallel coordinates)."""
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")))
    return f"{tracking_uri.rstrip('/')}/#/compare-runs?runs={runs}&experiments=%5B%22{exp_id}%22%5D&{ML_VIEW}"
