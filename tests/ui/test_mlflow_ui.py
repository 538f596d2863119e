"""The MLflow UI as a researcher opens it, rendered by headless Chromium from the real jobs' records.

The session's tiny Tune search (``python -m jobs.tune`` over the shipped rho-grid, four trials, interrupted
and resumed) and an attack evaluation of its registered model (``python -m jobs.evaluate``) write to the
session's MLflow server; then the links the jobs print are opened in Chromium and the rendered DOM
is read: the training view of the runs table lists every trial with its ρ and validation robust accuracy, the compare page shows the trials'
parameters and metrics side by side, and the evaluation view lists the evaluation.  The
screenshots are kept in ``$STABLE_SNN_UI_SCREENSHOTS`` (default ``.artifacts/ui-check``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jobs.tracking.views import EVALUATION_VIEW, compare_link, runs_link
from tests.jobs.helpers import REPO

SCREENSHOTS = Path(os.environ.get("STABLE_SNN_UI_SCREENSHOTS", REPO / ".artifacts" / "ui-check"))
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # wide enough for every column of the training view (the runs table renders only the columns in sight)
    "--window-size=2400,1000", "--virtual-time-budget=15000",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed (Debian: apt-get install -y chromium; .ci/run installs it)"
    return path


def render(url: str, name: str, tmp_path: Path) -> str:
    """The DOM of ``url`` after 15 s of virtual time; its screenshot saved as ``SCREENSHOTS/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / f"chromium-{name}"
    profile.mkdir()
    out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                          f"--screenshot={SCREENSHOTS / f'{name}.png'}", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


# HTML's void elements have no end tag (a DOM dump writes ``<input ...>``): they open no level.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Grid(HTMLParser):
    """The cells of the runs table (an ag-grid): ``rows[run id][column id]`` is the cell's text."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: str | None = None
        self._cell: list | None = None  # [column id, depth, text parts]
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        a = dict(attrs)
        if a.get("role") == "row" and a.get("row-id"):
            self._row = a["row-id"]
        if self._cell is not None:
            self._cell[1] += 1
        elif self._row and a.get("role") == "gridcell" and a.get("col-id"):
            self._cell = [a["col-id"], 1, []]

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self._cell is not None:
            self._cell[1] -= 1
            if self._cell[1] == 0:
                self.rows.setdefault(self._row, {})[self._cell[0]] = "".join(self._cell[2]).strip()
                self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2].append(data)


def text_of(dom: str) -> str:
    class Text(HTMLParser):
        parts: list[str] = []
        skip = 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            self.skip -= tag in ("script", "style")

        def handle_data(self, data):
            if not self.skip and data.strip():
                self.parts.append(data.strip())

    parser = Text()
    parser.parts = []
    parser.feed(dom)
    return " ".join(parser.parts)


@pytest.fixture(scope="module")
def search(rho_grid_search, cifar10):
    """The session's rho-grid search (3 trials, interrupted and resumed) and an evaluation of its best
    trial in the search's experiment, run as a user would."""
    from mlflow import MlflowClient

    uri = rho_grid_search.tracking_uri
    evaluation = subprocess.run([sys.executable, "-m", "jobs.evaluate",
                                 "--model-uri", f"models:/{rho_grid_search.registered_model}@candidate",
                                 "--protocol", "quick", "--limit", "8", "--workers", "0", "--threads", "1",
                                 "--dataset-root", str(cifar10.root), "--experiment", rho_grid_search.experiment],
                                cwd=REPO, env=rho_grid_search.env, capture_output=True, text=True, timeout=600)
    assert evaluation.returncode == 0, (evaluation.stdout + evaluation.stderr)[-6000:]
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(rho_grid_search.experiment).experiment_id
    runs = client.search_runs([exp_id])
    trials = rho_grid_search.children(client)
    evaluations = [r for r in runs if r.data.tags.get("stable_snn.job") == "evaluate"]
    assert len(trials) == len(rho_grid_search.grid) and len(evaluations) == 1
    return uri, exp_id, trials, evaluations[0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_training_view_lists_the_trials_with_rho_and_robust_accuracy(search, tmp_path):
    uri, exp_id, trials, _ = search
    dom = render(runs_link(uri, exp_id), "runs-training-view", tmp_path)
    assert "Model training" in text_of(dom)
    rows = Grid(dom).rows
    assert {t.info.run_id for t in trials} <= set(rows), rows.keys()
    for t in trials:
        row = rows[t.info.run_id]
        assert row["attributes.`Run Name`"].endswith(t.info.run_name)  # after the text of its colour chip
        assert float(row["params.`objective.rho`"]) == float(t.data.params["objective.rho"])
        assert float(row["metrics.`val_robust_acc`"]) == pytest.approx(t.data.metrics["val_robust_acc"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_compare_page_shows_the_trials_parameters_and_metrics(search, tmp_path):
    uri, exp_id, trials, _ = search
    text = text_of(render(compare_link(uri, exp_id, [t.info.run_id for t in trials]), "compare-trials", tmp_path))
    assert f"Comparing {len(trials)} Runs" in text
    names = " ".join(t.info.run_name for t in trials)
    assert f"Run Name: {names}" in text
    rhos = " ".join(t.data.params["objective.rho"] for t in trials)
    assert f"objective.rho {rhos}" in text
    # The metrics table below the plots lists the trials' metrics by name, as a virtual list: the first
    # rows are in the page, the others (val_robust_acc among them) come as it scrolls.
    metrics = text.split("Run details", 1)[1].split(" Metrics ", 1)[1].split(" Artifacts ", 1)[0]
    keys = sorted(set().union(*(t.data.metrics for t in trials)))
    assert "val_robust_acc" in keys
    assert metrics.startswith("Show diff only " + " ".join(keys[:3]))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_evaluation_view_lists_the_evaluation(search, tmp_path):
    uri, exp_id, _, evaluation = search
    rows = Grid(render(runs_link(uri, exp_id, EVALUATION_VIEW), "runs-evaluation-view", tmp_path)).rows
    assert set(rows) == {evaluation.info.run_id}
    assert float(rows[evaluation.info.run_id]["metrics.`accuracy/worst-case`"]) == pytest.approx(
        evaluation.data.metrics["accuracy/worst-case"])
