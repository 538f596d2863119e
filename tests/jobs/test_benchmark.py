"""jobs.benchmark: a tiny run of the training-step and PGD benchmarks prints one parsable JSON object."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--width", "0.25", "--classifier-width", "32", "--timesteps", "2", "--batch-size", "4",
        "--steps", "1", "--warmup", "0", "--kernels", "eager", "--json"]


def run_benchmark(*extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jobs.benchmark", *TINY, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_benchmark_json(precision):
    out = run_benchmark("--precision", precision, "--mode", "at", "--rho", "1.0")
    assert out["benchmark"] == "train_step"
    assert set(out["paths"]) == {"fast", "reference"}
    for key in ("fast_images_per_s", "reference_images_per_s", "speedup", "fast_peak_mb", "reference_peak_mb",
                "fast_step_s", "reference_step_s", "fast_gflop_per_step", "reference_gflop_per_step"):
        assert isinstance(out[key], float) and out[key] > 0, key
    # the reference does one more forward (the wasted pass) and runs conv1 T times
    assert out["reference_gflop_per_step"] > out["fast_gflop_per_step"]
    if precision == "fp32":  # same weights, batch and noise: the first losses agree
        assert out["fast_first_loss"] == pytest.approx(out["reference_first_loss"], rel=1e-4)


def test_eval_benchmark_json():
    out = run_benchmark("--eval", "--pgd-steps", "2", "--precision", "fp32", "--no-memory")
    assert out["benchmark"] == "pgd_eval" and out["pgd_steps"] == 2
    assert set(out["paths"]) == {"fast", "reference"}
    assert out["fast_images_per_s"] > 0 and out["reference_images_per_s"] > 0
    assert out["fast_adv_correct"] == out["reference_adv_correct"]
