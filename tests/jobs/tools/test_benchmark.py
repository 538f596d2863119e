"""jobs.tools.benchmark: a tiny run of the training-step and PGD benchmarks prints one parsable JSON object;
its defaults are the training job's step settings."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jobs.config import load_job_config
from jobs.tools.benchmark import parse_args, speeds
from jobs.tools.measure import bf16_is_native
from jobs.training.settings import step_settings
from tests.threads import torch_threads

REPO = Path(__file__).resolve().parents[3]
TINY = ["--width", "0.25", "--classifier-width", "32", "--timesteps", "2", "--batch-size", "4",
        "--steps", "1", "--warmup", "0", "--backend", "eager", "--allow-emulated-bf16", "--json"]
QUICK = REPO / "jobs" / "configs" / "quick.yaml"
PAPER = REPO / "jobs" / "configs" / "paper-vgg11-cifar10-at-rho1.yaml"


def run_benchmark(*extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jobs.tools.benchmark", *TINY, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("preset, overrides, expected", [
    # (precision, attack precision, backend, threads) of a worker, written out from the preset's fields
    (QUICK, [], ("fp32", "fp32", load_job_config(QUICK).model.backend, 1)),  # 0.5 CPUs per worker: 1 thread
    (QUICK, ["run.cpus_per_worker=2", "model.backend=compiled"], ("fp32", "fp32", "compiled", 2)),
    (PAPER, [], ("bf16", "fp32", "eager", 4)),
    (PAPER, ["optim.attack_precision=bf16", "run.cpus_per_worker=2.5"], ("bf16", "bf16", "eager", 2)),
])
def test_the_defaults_are_the_training_jobs_step_settings(preset, overrides, expected):
    argv = ["--config", str(preset), "--allow-emulated-bf16"] + [a for o in overrides for a in ("--set", o)]
    args = parse_args(argv)
    job = step_settings(load_job_config(preset, overrides))  # what jobs.training's workers train with
    assert (job.precision, job.attack_precision, job.backend, job.threads) == expected
    assert (args.precision, args.attack_precision, args.backend, args.threads) == expected
    # an explicit flag wins over the job's setting
    assert parse_args([*argv, "--threads", "3", "--backend", "reference"]).threads == 3


def test_eval_defaults_to_fp32_like_the_evaluation_job():
    args = parse_args(["--config", str(PAPER), "--eval", "--allow-emulated-bf16"])
    assert args.precision == "fp32" and args.backend == "eager"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_benchmark_json(precision):
    out = run_benchmark("--precision", precision, "--mode", "at", "--rho", "1.0")
    assert (out["precision"], out["attack_precision"], out["backend"], out["threads"]) == (precision, "fp32", "eager", 1)
    assert out["benchmark"] == "train_step"
    assert set(out["paths"]) == {"fast", "reference"}
    for key in ("fast_images_per_s", "reference_images_per_s", "speedup", "fast_peak_mb", "reference_peak_mb",
                "fast_step_s", "reference_step_s", "fast_gflop_per_step", "reference_gflop_per_step"):
        assert isinstance(out[key], float) and out[key] > 0, key
    # the reference does one more forward (the wasted pass) and runs conv1 T times
    assert out["reference_gflop_per_step"] > out["fast_gflop_per_step"]
    assert out["epoch_images"] == 50000
    assert out["fast_epoch_min"] > 0 and out["reference_epoch_min"] > 0
    if precision == "fp32":  # same weights, batch and noise: the first losses agree
        assert out["fast_first_loss"] == pytest.approx(out["reference_first_loss"], rel=1e-4)


def test_busy_processes_run_beside_the_block_and_are_gone_after_it():
    from jobs.tools.benchmark import busy_processes

    with busy_processes(2) as pids:
        assert len(pids) == 2
        time.sleep(0.5)
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            assert stat.rsplit(")", 1)[1].split()[0] == "R" or int(stat.rsplit(")", 1)[1].split()[11]) > 0  # running, or has run
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_the_report_names_the_wait_policy_and_the_busy_processes():
    out = run_benchmark("--precision", "fp32", "--busy", "1", "--no-memory")
    assert out["busy_processes"] == 1 and out["omp_wait_policy"] == "PASSIVE"  # jobs/openmp.py's default
    assert parse_args(["--busy", "0"]).busy == 0


def test_speeds_from_step_times():
    """Medians 0.5 s (fast) and 1.5 s (reference) of batch-4 steps: 8 and 8/3 images/s, a speedup of 3;
    a 50000-image epoch is 12500 steps: 6250 s = 104 1/6 min fast, 18750 s = 312.5 min reference."""
    out = speeds({"fast": [0.6, 0.4, 0.5], "reference": [1.0, 2.0, 1.5]}, batch=4, epoch_images=50000)
    assert (out["fast_step_s"], out["reference_step_s"]) == (0.5, 1.5)
    assert out["fast_images_per_s"] == pytest.approx(8.0)
    assert out["reference_images_per_s"] == pytest.approx(8 / 3)
    assert out["speedup"] == pytest.approx(3.0)
    assert out["fast_epoch_min"] == pytest.approx(104 + 1 / 6)
    assert out["reference_epoch_min"] == pytest.approx(312.5)


def test_eval_benchmark_json():
    out = run_benchmark("--eval", "--pgd-steps", "2", "--precision", "fp32", "--no-memory")
    assert out["benchmark"] == "pgd_eval" and out["pgd_steps"] == 2
    assert set(out["paths"]) == {"fast", "reference"}
    assert out["fast_images_per_s"] > 0 and out["reference_images_per_s"] > 0
    assert out["fast_adv_correct"] == out["reference_adv_correct"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--batch-size", "-1"], "--batch-size must be >= 1"),
    (["--width", "0"], "--width must be > 0"),
    (["--eval", "--precision", "fp16"], "--eval supports --precision fp32 or bf16"),
    (["--arch", "resnet18"], "invalid choice: 'resnet18'"),
    (["--kernels", "eager"], "unrecognized arguments: --kernels"),
    (["--backend", "triton"], "invalid choice: 'triton'"),
    (["--set", "model.backend=triton"], "model.backend='triton' is invalid"),
    (["--config", "no/such/preset.yaml"], "does not exist"),
    (["--busy", "-1"], "--busy must be >= 0, got -1"),
])
def test_bad_arguments_are_refused_before_any_work(args, message, capsys):
    """In-process (the entry point's own refusal is what test_emulated_bf16_is_refused_unless_allowed runs)."""
    from jobs.tools.benchmark import main

    with torch_threads(1), pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert message in err
    assert "step 1" not in err  # nothing was timed


def test_emulated_bf16_is_refused_unless_allowed():
    if bf16_is_native(torch.device("cpu")):
        pytest.skip("this CPU computes bf16 in hardware")
    proc = subprocess.run([sys.executable, "-m", "jobs.tools.benchmark", "--config", str(PAPER)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bf16 on this cpu is emulated" in proc.stderr and "--allow-emulated-bf16" in proc.stderr


def test_cuda_without_a_device_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run([sys.executable, "-m", "jobs.tools.benchmark", "--device", "cuda"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--device cuda: no CUDA device" in proc.stderr
