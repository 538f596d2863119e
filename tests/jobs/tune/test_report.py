"""The search's report: trials grouped by point with the seed left out (mean +- sd over seeds), and each
finished trial's selected checkpoint evaluated on the test split under the quick protocol."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from jobs.config import job_config_from_dict, load_job_config
from jobs.training.checkpoints import save_checkpoint
from jobs.tune.report import aggregate, evaluate_on_test, load_test_images, plot_report, report_markdown
from jobs.tune.space import load_space
from stable_snn.config import build_network
from tests.jobs.helpers import REPO, png_size


@pytest.fixture(scope="module")
def space():
    return load_space(REPO / "tune_spaces" / "table2-cpu.yaml", load_job_config(REPO / "jobs/configs/ablation-cpu.yaml"))


def row(trial: str, point: dict, seed: int, robust: float, final_robust: float, status: str = "FINISHED",
        stopped: bool = False) -> dict:
    return {"trial_id": trial, "run_id": trial, "status": status, "stopped_early": stopped,
            "objective.rho": point["objective.rho"], "objective.regularizer": point.get("objective.regularizer", "ms_mppd"),
            "point": json.dumps(point, sort_keys=True), "run.seed": seed, "val_clean_acc": 0.5, "val_robust_acc": robust,
            "final_val_clean_acc": 0.5, "final_val_robust_acc": final_robust, "checkpoint": f"/ck/{trial}",
            "selected_epoch": "5"}


RHO0, MS = {"objective.rho": 0.0}, {"objective.rho": 1.0, "objective.regularizer": "ms_mppd"}


def test_trials_are_grouped_by_point_with_mean_and_sd_over_seeds(space):
    rows = [row("a", RHO0, 0, 0.19, 0.19), row("b", MS, 0, 0.20, 0.21), row("c", RHO0, 1, 0.17, 0.18),
            row("d", MS, 1, 0.24, 0.25), row("e", MS, 2, 0.99, 0.99, status="KILLED", stopped=True)]
    agg = aggregate(rows, space)
    assert [a["objective.rho"] for a in agg] == [0.0, 1.0] and [a["seeds"] for a in agg] == [2, 2]
    ms = agg[1]
    assert ms["val_robust_acc_mean"] == pytest.approx(0.22) and ms["trials"] == "b d"  # the stopped trial is out
    assert ms["val_robust_acc_sd"] == pytest.approx(statistics.stdev([0.20, 0.24]))
    assert ms["final_val_robust_acc_mean"] == pytest.approx(0.23)
    text = report_markdown(agg, space)
    assert "| objective.rho | objective.regularizer | seeds |" in text
    assert "22.00 ± 2.83" in text and "val robust (final)" in text
    single = aggregate(rows[:1], space)
    assert "19.00 ± n/a" in report_markdown(single, space)


def test_the_report_plot_is_written(space, tmp_path):
    rows = [row("a", RHO0, 0, 0.19, 0.19), row("b", MS, 0, 0.20, 0.21)]
    width, height = png_size(plot_report(aggregate(rows, space), space, tmp_path / "report.png"))
    assert width > 300 and height > 300


def test_selected_checkpoints_are_evaluated_on_the_test_split(cifar10, tmp_path, space):
    """The quick protocol on a class-balanced test subset: clean, FGSM and PGD-10 for finished trials only."""
    cfg = job_config_from_dict({"model": {"arch": "vgg5", "timesteps": 2, "width": 0.125, "classifier_width": 16},
                                "data": {"root": str(cifar10.root), "download": cifar10.download},
                                "validation": {"batch_size": 10}, "run": {"name": "t"}})
    model = build_network(cfg, torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "ck", {"model": model.state_dict(), "epoch": 1}, cfg)
    finished = row("a", RHO0, 0, 0.2, 0.2) | {"checkpoint": str(tmp_path / "ck")}
    stopped = row("b", RHO0, 1, 0.2, 0.2, status="KILLED", stopped=True) | {"checkpoint": str(tmp_path / "ck")}
    out = evaluate_on_test([finished, stopped], limit=20)
    assert {"test_clean", "test_fgsm", "test_pgd10"} <= set(out[0]) and not any(k.startswith("test_") for k in out[1])
    assert all(0.0 <= out[0][k] <= 1.0 for k in ("test_clean", "test_fgsm", "test_pgd10"))
    images, labels = load_test_images(cfg, 20)
    assert images.shape == (20, 3, 32, 32) and torch.bincount(labels, minlength=10).tolist() == [2] * 10
    agg = aggregate(out, space)
    assert agg[0]["test_pgd10_mean"] == pytest.approx(out[0]["test_pgd10"]) and agg[0]["seeds"] == 1
