"""jobs.tools.precision_check: fp32 vs bf16 RFGSM gradients, paired by seed, and the decision rule."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs.tools.measure import bf16_is_native
from jobs.tools.precision_check import compare, table

REPO = Path(__file__).resolve().parents[3]


def run(seed, ap, clean, pgd):
    return {"seed": seed, "precision": "bf16", "attack_precision": ap, "clean_acc": clean, "pgd10_acc": pgd,
            "final_loss": 1.0, "train_s": 1.0}


def test_the_decision_rule_takes_the_mean_paired_difference_over_seeds():
    runs = [run(0, "fp32", 50.0, 20.0), run(0, "bf16", 52.0, 19.0), run(1, "fp32", 40.0, 30.0), run(1, "bf16", 39.0, 29.5)]
    summary = compare(runs, "fp32")
    assert summary["fp32"] == {"mean_clean_acc": 45.0, "mean_pgd10_acc": 25.0}
    bf16 = summary["bf16"]
    assert (bf16["clean_acc_diff"], bf16["pgd10_acc_diff"]) == (0.5, -0.75)  # (+2 - 1) / 2, (-1 - 0.5) / 2
    assert bf16["within_tolerance"]
    assert "clean +0.50, PGD-10 -0.75 points (within 1.5 points of fp32)" in table(runs, summary, "fp32")

    runs[3] = run(1, "bf16", 39.0, 27.0)  # PGD-10 now 2 points lower on average
    summary = compare(runs, "fp32")
    assert summary["bf16"]["pgd10_acc_diff"] == -2.0 and not summary["bf16"]["within_tolerance"]
    assert "(NOT within 1.5 points of fp32)" in table(runs, summary, "fp32")


def test_emulated_bf16_is_refused_unless_forced():
    if bf16_is_native(torch.device("cpu")):
        pytest.skip("this CPU computes bf16 in hardware")
    proc = subprocess.run([sys.executable, "-m", "jobs.tools.precision_check", "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bf16 on this cpu is emulated" in proc.stderr and "about 90x longer" in proc.stderr
    assert "--allow-emulated-bf16" in proc.stderr


@pytest.mark.slow  # four tiny training runs
@pytest.mark.timeout(60)
def test_precision_check_json(cifar10):
    cmd = [sys.executable, "-m", "jobs.tools.precision_check", "--data-root", str(cifar10.root), "--device", "cpu",
           "--train-images", "64", "--eval-images", "20", "--epochs", "1", "--batch-size", "32", "--timesteps", "2",
           "--width", "0.25", "--classifier-width", "32", "--backend", "eager", "--precision", "fp32",
           "--seeds", "0", "1", "--allow-emulated-bf16", "--json"]
    if cifar10.download:
        cmd.append("--download")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["seed"], r["attack_precision"]) for r in out["runs"]] == [(0, "fp32"), (0, "bf16"), (1, "fp32"), (1, "bf16")]
    for r in out["runs"]:
        # 20 held-out images: every accuracy is a multiple of 5 %
        assert 0.0 <= r["clean_acc"] <= 100.0 and 0.0 <= r["pgd10_acc"] <= 100.0
        assert r["clean_acc"] % 5.0 == 0.0 and r["pgd10_acc"] % 5.0 == 0.0
        assert math.isfinite(r["final_loss"])
    seed0, seed1 = out["runs"][0], out["runs"][2]
    assert seed0["final_loss"] != seed1["final_loss"]  # another seed, another run
    by = {(r["attack_precision"], r["seed"]): r for r in out["runs"]}
    assert set(out["summary"]) == {"fp32", "bf16"}  # the decision rule itself: the test above, on literal runs
    assert isinstance(out["summary"]["bf16"]["within_tolerance"], bool)
    # one seed, one initial model and batches: the two attack precisions train close but not bit-equal
    assert abs(by["bf16", 0]["final_loss"] - by["fp32", 0]["final_loss"]) < 0.5
