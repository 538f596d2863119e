"""Benchmark the training step (or PGD-10 evaluation) as the training job runs it against the reference path.

    python -m jobs.tools.benchmark [--config PRESET] [--set section.field=value ...] \\
        --arch vgg5 --timesteps 8 --batch-size 32 --mode at --rho 1.0 \\
        [--precision P] [--attack-precision P] [--backend B] [--threads N] [--device cpu|cuda] \\
        [--eval] [--peaks] [--profile] [--busy N] [--json]

The fast path runs as a worker of ``--config``'s training job runs the step (default: the
``quick`` preset): its precision (``optim.precision``), RFGSM input-gradient precision
(``optim.attack_precision``), model backend (``model.backend``) and torch threads (the CPUs a
worker reserves, ``run.cpus_per_worker``), all read by :func:`jobs.training.settings.step_settings`,
which the training job uses too; ``--precision`` etc. override them.  The shape (``--arch`` ...
``--classifier-width``) and the objective (``--mode``, ``--rho``, ``--chi``) are the benchmark's own.
With ``--eval`` the fast path's precision defaults to fp32, as the evaluation job and the
per-epoch validation run their attacks.

Both paths start from the same weights and batch, in one process.  After ``--warmup``
steps of each (compilation happens there), ``--steps`` warm steps are timed alternately
(fast, reference, fast, ...) so machine noise hits both alike; the step time reported is
the median.  The reference path is :mod:`stable_snn.reference` (fp32, the authors' loop);
the fast path is :func:`stable_snn.objective.train_step` (``--eval``: the library's PGD).
Also reported: peak memory of one step of each path (CUDA: the allocator's peak; CPU: the
peak of the profiler's allocation record), the FLOPs of one step counted with
``torch.utils.flop_counter``'s formulas, the GFLOP/s they make, and with ``--peaks`` this
machine's fp32 matmul peak (and bf16's when the fast path runs bf16).  bf16 on a device
without bf16 hardware (an AVX2-only CPU emulates it about 90x slower) is refused unless
``--allow-emulated-bf16``.

``--busy N`` runs N busy-looping processes beside the benchmark, as the raylet, another worker or a
validation task share a node; with it, ``OMP_WAIT_POLICY=ACTIVE`` in the environment shows what
spinning OpenMP threads cost there (the jobs wait passively by default: :mod:`jobs.openmp`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from stable_snn.attacks import PGD
from stable_snn.config import ATTACK_PRECISIONS, MODES, PRECISIONS, ConfigError, ObjectiveConfig
from stable_snn.models import BACKENDS, build_model, list_models
from stable_snn.neurons import NEURONS
from stable_snn.objective import build_optimizer, perturb, train_step
from stable_snn.reference import reference_forward, reference_pgd, reference_train_step

from ..config import load_job_config
from ..logs import setup_logging
from ..openmp import WAIT_POLICY
from ..training.settings import step_settings
from .measure import bf16_is_native, count_flops, matmul_peak, peak_memory_mb, profile_step, timed

log = logging.getLogger("stable_snn.benchmark")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.tools.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="the training job's preset whose step settings are the defaults (default: quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of --config, as jobs.train does (repeatable)")
    p.add_argument("--arch", default="vgg5", choices=list_models())
    p.add_argument("--neuron", default="dlif", choices=list(NEURONS))
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0, help="conv width multiplier")
    p.add_argument("--classifier-width", type=int, default=4096, help="VGG classifier hidden size")
    p.add_argument("--mode", default="at", choices=[m for m in MODES if m != "at_reg"])  # the reference has no SNN-RAT
    p.add_argument("--rho", type=float, default=1.0)
    p.add_argument("--chi", type=float, default=0.5)
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="fast path precision (default: the job's)")
    p.add_argument("--attack-precision", default=None, choices=ATTACK_PRECISIONS,
                   help="training RFGSM's input-gradient precision (default: the job's)")
    p.add_argument("--backend", default=None, choices=BACKENDS, help="fast path model backend (default: the job's)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: a job worker's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--allow-emulated-bf16", action="store_true",
                   help="run bf16 on a device without bf16 hardware (about 90x slower than fp32)")
    p.add_argument("--eval", action="store_true", help="benchmark PGD-10 evaluation instead of the training step")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per path first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peaks", action="store_true", help="measure the matmul peak(s) in this run")
    p.add_argument("--profile", action="store_true", help="profile one step of each path: where the time goes")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory steps")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="images in the pass whose time is estimated (default: 50000, a CIFAR-10 training epoch; "
                        "with --eval 10000, its test set)")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="busy-looping processes beside the benchmark for its whole run (a shared node)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    for name, minimum in (("steps", 1), ("warmup", 0), ("busy", 0), ("batch_size", 1), ("timesteps", 1), ("pgd_steps", 1),
                          ("classifier_width", 1), ("epoch_images", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            p.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    if args.width <= 0:
        p.error(f"--width must be > 0, got {args.width}")
    job_defaults(p, args)
    if args.eval and args.precision == "fp16":
        p.error("--eval supports --precision fp32 or bf16 (fp16 attack gradients can underflow)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch here (torch.cuda.is_available() is False); "
                "use --device cpu")
    bf16 = args.precision == "bf16" or (args.attack_precision == "bf16" and not args.eval)
    if bf16 and not args.allow_emulated_bf16 and not bf16_is_native(torch.device(args.device)):
        p.error(f"bf16 on this {args.device} is emulated (no bf16 hardware: about 90x slower than fp32); "
                "use --precision fp32 --attack-precision fp32, or --allow-emulated-bf16 to run it anyway")
    if args.epoch_images is None:
        args.epoch_images = 10000 if args.eval else 50000
    return args


def job_defaults(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the step settings left unset from the training job's config (``--config``, ``--set``)."""
    try:
        settings = step_settings(load_job_config(args.config, args.overrides))
    except ConfigError as e:
        p.error(f"--config {args.config}: {e}")
    if args.eval and args.precision is None:
        args.precision = "fp32"  # evaluation and validation attacks run fp32 whatever the training precision
    for name in ("precision", "attack_precision", "backend", "threads"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(settings, name))


# -- the two paths ------------------------------------------------------------------------

def build(args, device: torch.device):
    torch.manual_seed(args.seed)  # the job's seed: weights of both paths
    model = build_model(args.arch, 10, args.timesteps, args.neuron, width=args.width,
                        classifier_width=args.classifier_width).to(device)
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    images = torch.rand(args.batch_size, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    fast = copy.deepcopy(model)
    fast.backend = args.backend
    return model, fast, images, labels


def train_paths(args, device, reference_model, fast_model, images, labels):
    cfg = ObjectiveConfig(mode=args.mode, rho=args.rho, chi=args.chi)

    # the fast path's optimizer is the library's (fused SGD); the reference's the authors' plain SGD
    opt_fast = build_optimizer(fast_model, 0.1, 0.9, 5e-4)
    opt_ref = torch.optim.SGD(reference_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen_fast = torch.Generator(device=device).manual_seed(args.seed + 2)
    gen_ref = torch.Generator(device=device).manual_seed(args.seed + 2)
    losses = {}

    def fast():
        stats = train_step(fast_model, opt_fast, images, labels, cfg, generator=gen_fast, precision=args.precision,
                           attack_precision=args.attack_precision)
        losses.setdefault("fast", stats.loss)

    def reference():
        terms = reference_train_step(reference_model, opt_ref, images, labels, cfg, generator=gen_ref)
        losses.setdefault("reference", terms["total"])

    return fast, reference, losses


def eval_paths(args, device, reference_model, fast_model, images, labels):
    reference_model.eval()
    fast_model.eval()
    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=args.pgd_steps)
    gen_fast = torch.Generator(device=device).manual_seed(args.seed + 3)
    gen_ref = torch.Generator(device=device).manual_seed(args.seed + 3)
    precision = "bf16" if args.precision == "bf16" else "fp32"
    correct = {}

    def fast():
        adv = perturb(attack, fast_model, images, labels, gen_fast, precision)
        with torch.no_grad():
            correct.setdefault("fast", int((fast_model(adv).mean(0).argmax(1) == labels).sum()))

    def reference():
        adv = reference_pgd(reference_model, images, labels, steps=args.pgd_steps, generator=gen_ref)
        with torch.no_grad():
            correct.setdefault("reference", int((reference_forward(reference_model, adv).mean(0).argmax(1) == labels).sum()))

    return fast, reference, correct


def time_alternately(args, fast, reference, device: torch.device) -> dict[str, list[float]]:
    """``--warmup`` untimed steps of each path, then ``--steps`` timed ones, alternating."""
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        fast()
        reference()
    log.info("warm-up done in %.1f s", time.perf_counter() - t0)
    times = {"fast": [], "reference": []}
    for i in range(args.steps):
        times["fast"].append(timed(fast, device))
        times["reference"].append(timed(reference, device))
        log.info("step %d: fast %.3f s, reference %.3f s", i + 1, times["fast"][-1], times["reference"][-1])
    return times


def settings(args) -> dict:
    """What was benchmarked, as reported."""
    train = not args.eval
    return {
        "benchmark": "train_step" if train else "pgd_eval",
        "arch": args.arch, "neuron": args.neuron, "timesteps": args.timesteps, "batch_size": args.batch_size,
        "width": args.width, "classifier_width": args.classifier_width,
        "mode": args.mode if train else None, "rho": args.rho if train else None,
        "chi": args.chi if train else None, "pgd_steps": None if train else args.pgd_steps,
        "device": args.device, "threads": torch.get_num_threads(), "precision": args.precision,
        "attack_precision": args.attack_precision if train else None,
        "backend": args.backend, "config": args.config, "overrides": args.overrides,
        "steps": args.steps, "warmup": args.warmup,
        "paths": {"fast": "stable_snn.objective.train_step" if train else "stable_snn.attacks.PGD",
                  "reference": "stable_snn.reference"},
        "epoch_images": args.epoch_images, "busy_processes": args.busy,
        "omp_wait_policy": os.environ.get(WAIT_POLICY, "unset"),
    }


def speeds(times: dict[str, list[float]], batch: int, epoch_images: int) -> dict:
    """Median step times, images/s, the speedup and the estimated pass over ``epoch_images``."""
    fast_s, ref_s = statistics.median(times["fast"]), statistics.median(times["reference"])
    return {
        "fast_step_s": fast_s, "reference_step_s": ref_s,
        "fast_step_times_s": times["fast"], "reference_step_times_s": times["reference"],
        "fast_images_per_s": batch / fast_s, "reference_images_per_s": batch / ref_s,
        "speedup": ref_s / fast_s,
        "fast_epoch_min": epoch_images * fast_s / batch / 60, "reference_epoch_min": epoch_images * ref_s / batch / 60,
    }


def flops(args, device, make, reference_model, fast_model, images, labels, out: dict) -> dict:
    """FLOPs per step and GFLOP/s of both paths (with ``--peaks``, against this machine's matmul peaks).
    Counted on eager copies of compiled models: compiled kernels hide their ops from the counter,
    and the matmul FLOPs are the same."""
    counting = copy.deepcopy(fast_model)
    if counting.backend == "compiled":
        counting.backend = "eager"
    count_fast, count_ref, _ = make(args, device, copy.deepcopy(reference_model), counting, images, labels)
    res = {"fast_gflop_per_step": count_flops(count_fast) / 1e9, "reference_gflop_per_step": count_flops(count_ref) / 1e9}
    res["fast_gflop_per_s"] = res["fast_gflop_per_step"] / out["fast_step_s"]
    res["reference_gflop_per_s"] = res["reference_gflop_per_step"] / out["reference_step_s"]
    if args.peaks:
        res["peak_fp32_gflop_per_s"] = matmul_peak(torch.float32, device)
        if args.precision != "fp32":
            res["peak_bf16_gflop_per_s"] = matmul_peak(torch.bfloat16, device)
        low = "peak_bf16_gflop_per_s" if args.precision != "fp32" else "peak_fp32_gflop_per_s"
        res["fast_fraction_of_peak"] = res["fast_gflop_per_s"] / res[low]
        res["reference_fraction_of_fp32_peak"] = res["reference_gflop_per_s"] / res["peak_fp32_gflop_per_s"]
    return res


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` processes spinning on a core each while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run(args) -> dict:
    with busy_processes(args.busy):
        return _run(args)


def _run(args) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    reference_model, fast_model, images, labels = build(args, device)
    # BatchNorm statistics of a trained-like model for the eval benchmark: one pass on the batch
    if args.eval:
        with torch.no_grad():
            reference_model.train()(images)
            fast_model.load_state_dict(reference_model.state_dict())
    make = eval_paths if args.eval else train_paths
    fast, reference, first = make(args, device, reference_model, fast_model, images, labels)
    out = settings(args) | speeds(time_alternately(args, fast, reference, device), args.batch_size, args.epoch_images)
    what = "adv_correct" if args.eval else "first_loss"
    out[f"fast_{what}"], out[f"reference_{what}"] = first.get("fast"), first.get("reference")
    if not args.no_memory:
        out["fast_peak_mb"] = peak_memory_mb(fast, device)
        out["reference_peak_mb"] = peak_memory_mb(reference, device)
        out["memory_ratio"] = out["fast_peak_mb"] / out["reference_peak_mb"]
    out |= flops(args, device, make, reference_model, fast_model, images, labels, out)
    if args.profile:
        out["fast_profile"] = profile_step(fast, device)
        out["reference_profile"] = profile_step(reference, device)
    return out


def report(out: dict) -> str:
    what = "PGD-%d evaluation" % out["pgd_steps"] if out["benchmark"] == "pgd_eval" else "training step (mode %s)" % out["mode"]
    lines = [
        f"{out['arch']} T={out['timesteps']} batch {out['batch_size']} {what} on {out['device']} "
        f"({out['threads']} threads, OMP_WAIT_POLICY {out['omp_wait_policy']}"
        + (f", {out['busy_processes']} busy processes beside it" if out["busy_processes"] else "")
        + f"), fast path in {out['precision']} on the {out['backend']} backend"
        + (f", RFGSM gradient in {out['attack_precision']}" if out["attack_precision"] else ""),
        f"  fast:      {out['fast_step_s']:.3f} s/step  {out['fast_images_per_s']:.1f} images/s",
        f"  reference: {out['reference_step_s']:.3f} s/step  {out['reference_images_per_s']:.1f} images/s",
        f"  speedup:   {out['speedup']:.2f}x",
        f"  estimated pass over {out['epoch_images']} images: fast {out['fast_epoch_min']:.1f} min, "
        f"reference {out['reference_epoch_min']:.1f} min",
    ]
    if "fast_peak_mb" in out:
        lines.append(f"  peak memory: fast {out['fast_peak_mb']:.0f} MiB, reference {out['reference_peak_mb']:.0f} MiB "
                     f"(ratio {out['memory_ratio']:.2f})")
    lines.append(f"  FLOPs/step: fast {out['fast_gflop_per_step']:.1f} GFLOP ({out['fast_gflop_per_s']:.0f} GFLOP/s), "
                 f"reference {out['reference_gflop_per_step']:.1f} GFLOP ({out['reference_gflop_per_s']:.0f} GFLOP/s)")
    if "peak_fp32_gflop_per_s" in out:
        bf16 = f", bf16 {out['peak_bf16_gflop_per_s']:.0f} GFLOP/s" if "peak_bf16_gflop_per_s" in out else ""
        lines.append(f"  matmul peaks: fp32 {out['peak_fp32_gflop_per_s']:.0f} GFLOP/s{bf16}; "
                     f"fast at {100 * out['fast_fraction_of_peak']:.0f}% of its precision's peak, reference at "
                     f"{100 * out['reference_fraction_of_fp32_peak']:.0f}% of fp32's")
    for path in ("fast", "reference"):
        prof = out.get(f"{path}_profile")
        if prof:
            cats = ", ".join(f"{k} {v:.0f} ms" for k, v in prof["by_category_ms"].items())
            lines.append(f"  {path} profile ({prof['total_ms']:.0f} ms self time): {cats}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(logging.WARNING if args.json else logging.INFO)
    out = run(args)
    print(json.dumps(out) if args.json else report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
