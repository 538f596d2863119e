"""jobs.tools.precision_check: the same tiny training in fp32 and bf16 from one seed, compared on held-out images."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # two short training runs
def test_precision_check_json(cifar10):
    cmd = [sys.executable, "-m", "jobs.tools.precision_check", "--data-root", str(cifar10.root),
           "--train-images", "64", "--eval-images", "20", "--epochs", "1", "--batch-size", "32",
           "--timesteps", "2", "--classifier-width", "32", "--kernels", "eager", "--json"]
    if cifar10.download:
        cmd.append("--download")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    fp32, bf16 = out["runs"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    for run in out["runs"]:
        # 20 held-out images: every accuracy is a multiple of 5 %
        assert 0.0 <= run["pgd10_acc"] <= run["clean_acc"] + 5.0 <= 105.0
        assert run["clean_acc"] % 5.0 == 0.0 and run["pgd10_acc"] % 5.0 == 0.0
        assert run["final_loss"] > 0.0
    assert bf16["clean_diff_vs_fp32"] == bf16["clean_acc"] - fp32["clean_acc"]
    assert bf16["pgd10_diff_vs_fp32"] == bf16["pgd10_acc"] - fp32["pgd10_acc"]
    # one seed, one initial model: after one step-sized epoch the two runs are close but not bit-equal
    assert abs(bf16["final_loss"] - fp32["final_loss"]) < 0.5
