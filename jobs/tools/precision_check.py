"""Do bf16 RFGSM input gradients train as well as fp32 ones?  Train twice per seed and compare.

    python -m jobs.tools.precision_check --data-root DIR [--download] [--device cuda] \\
        [--precision bf16] [--attack-precisions fp32 bf16] [--seeds 0 1] [--epochs 5] [--json]

Trains the CPU ablation shape (VGG5, width 0.5, classifier 256, DLIF, T=4, mode ``at`` with
rho = 1, chi = 0.5, batch 64, SGD lr 0.1 with cosine decay) on a class-balanced subset of
CIFAR-10 (10,000 images, 5 epochs) in the training precision of the bf16 presets, once per
RFGSM input-gradient precision (``optim.attack_precision``) and seed.  The runs of one seed
start from the same weights and see the same batches, augmentation and attack noise; only the
attack's precision differs.  Each is measured on held-out validation images: clean and PGD-10
accuracy (eps 8/255, step 2/255, fp32, BatchNorm in eval mode).

Decision rule: bf16 attack gradients may become the default of the bf16 presets when, averaged
over the seeds, their clean and PGD-10 accuracy are both within 1.5 points of the fp32
gradients'; otherwise the presets keep fp32 (the default).

It is meant for a GPU or a CPU with bf16 hardware (AVX-512 BF16 or AMX).  Elsewhere bf16 is
emulated and the check would take about 90x longer than in fp32: it is refused unless
``--allow-emulated-bf16``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import torch

from stable_snn.attacks import PGD
from stable_snn.config import ATTACK_PRECISIONS, PRECISIONS, ObjectiveConfig
from stable_snn.data import build_splits
from stable_snn.models import BACKENDS, build_model
from stable_snn.objective import build_optimizer, train_step

from ..logs import setup_logging
from .measure import bf16_is_native

log = logging.getLogger("stable_snn.precision_check")

TOLERANCE_POINTS = 1.5  # the decision rule: mean |difference| to fp32 attack gradients, clean and PGD-10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.tools.precision_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="CIFAR-10 location (default $STABLE_SNN_DATA_ROOT or ./data)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision if absent")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="bf16", choices=PRECISIONS, help="training (autocast) precision of every run")
    p.add_argument("--attack-precisions", nargs="+", default=["fp32", "bf16"], choices=ATTACK_PRECISIONS,
                   help="RFGSM input-gradient precisions compared; the first is the baseline")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--allow-emulated-bf16", action="store_true",
                   help="run bf16 on a device without bf16 hardware (about 90x slower than fp32)")
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--classifier-width", type=int, default=256)
    p.add_argument("--backend", default="compiled", choices=BACKENDS)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for name in ("train_images", "eval_images", "epochs", "batch_size", "timesteps", "classifier_width"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.seeds) < 0:
        p.error(f"--seeds must be >= 0, got {args.seeds}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch here")
    bf16 = args.precision == "bf16" or "bf16" in args.attack_precisions
    if bf16 and not args.allow_emulated_bf16 and not bf16_is_native(torch.device(args.device)):
        p.error(f"bf16 on this {args.device} is emulated (no bf16 hardware): the check would take about 90x longer "
                "than in fp32. Run it on a GPU or a CPU with AVX-512 BF16 / AMX, or pass --allow-emulated-bf16")
    return args


def accuracy(model, images, labels, batch_size: int, attack=None, seed: int = 0) -> float:
    """Accuracy in % of ``model`` (eval mode) on ``images``, attacked with ``attack`` when given."""
    model.eval()
    gen = torch.Generator(device=images.device).manual_seed(seed)
    correct = 0
    for i in range(0, len(labels), batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        if attack is not None:
            x = attack(model, x, y, gen)
        with torch.no_grad():
            correct += int((model(x).mean(0).argmax(1) == y).sum())
    return 100.0 * correct / len(labels)


def batches(dataset, batch_size: int, seed: int, epoch: int, device):
    """The epoch's shuffled batches ``(images [B, 3, 32, 32], labels [B])`` (last partial batch dropped)."""
    dataset.set_epoch(epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1000 + 100 + epoch))
    for step in range(len(dataset) // batch_size):
        samples = [dataset[i] for i in order[step * batch_size:(step + 1) * batch_size].tolist()]
        yield (torch.stack([s[0] for s in samples]).to(device), torch.tensor([s[1] for s in samples]).to(device))


def train_one(args, attack_precision: str, seed: int, splits, val) -> dict:
    """One training run of the ablation shape; its validation accuracies."""
    device = torch.device(args.device)
    torch.manual_seed(seed)  # the run's seed: the same initial weights for every attack precision
    model = build_model("vgg5", splits.num_classes, args.timesteps, "dlif", width=args.width,
                        classifier_width=args.classifier_width, backend=args.backend).to(device)
    cfg = ObjectiveConfig(mode="at", rho=1.0, chi=0.5)
    opt = build_optimizer(model, args.lr, 0.9, 5e-4)
    steps_per_epoch = len(splits.train) // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    attack_gen = torch.Generator(device=device).manual_seed(seed + 1)
    start = time.perf_counter()
    losses = []
    for epoch in range(args.epochs):
        model.train()
        for images, labels in batches(splits.train, args.batch_size, seed, epoch, device):
            stats = train_step(model, opt, images, labels, cfg, generator=attack_gen, precision=args.precision,
                               attack_precision=attack_precision)
            sched.step()
            losses.append(stats.loss)
        log.info("seed %d, attack gradients in %s, epoch %d: mean loss %.4f (%.0f s)", seed, attack_precision,
                 epoch + 1, statistics.fmean(losses[-steps_per_epoch:]), time.perf_counter() - start)
    train_s = time.perf_counter() - start
    images, labels = val
    clean = accuracy(model, images, labels, 100)
    robust = accuracy(model, images, labels, 100, PGD(eps=8 / 255, alpha=2 / 255, steps=10), seed=seed + 2)
    return {"seed": seed, "precision": args.precision, "attack_precision": attack_precision, "clean_acc": clean,
            "pgd10_acc": robust, "final_loss": losses[-1], "train_s": train_s}


def compare(runs: list[dict], baseline: str) -> dict[str, dict]:
    """Per attack precision: mean accuracies over seeds and mean paired differences to ``baseline``."""
    by = {(r["attack_precision"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = {}
    for ap in dict.fromkeys(r["attack_precision"] for r in runs):
        row = {f"mean_{k}": statistics.fmean(by[ap, s][k] for s in seeds) for k in ("clean_acc", "pgd10_acc")}
        if ap != baseline:
            for k in ("clean_acc", "pgd10_acc"):
                row[f"{k}_diff"] = statistics.fmean(by[ap, s][k] - by[baseline, s][k] for s in seeds)
            row["within_tolerance"] = all(abs(row[f"{k}_diff"]) <= TOLERANCE_POINTS for k in ("clean_acc", "pgd10_acc"))
        out[ap] = row
    return out


def table(runs: list[dict], summary: dict[str, dict], baseline: str) -> str:
    """The runs and the decision as a Markdown table and a closing line."""
    lines = ["| seed | training | RFGSM gradient | clean % | PGD-10 % | final loss | train s |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['precision']} | {r['attack_precision']} | {r['clean_acc']:.2f} | "
                     f"{r['pgd10_acc']:.2f} | {r['final_loss']:.4f} | {r['train_s']:.0f} |")
    for ap, row in summary.items():
        line = f"mean over seeds, RFGSM gradient in {ap}: clean {row['mean_clean_acc']:.2f}%, PGD-10 {row['mean_pgd10_acc']:.2f}%"
        if "within_tolerance" in row:
            verdict = ("within" if row["within_tolerance"] else "NOT within") + f" {TOLERANCE_POINTS} points of {baseline}"
            line += (f"; vs {baseline}: clean {row['clean_acc_diff']:+.2f}, PGD-10 {row['pgd10_acc_diff']:+.2f} "
                     f"points ({verdict})")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(logging.WARNING if args.json else logging.INFO)
    root = args.data_root or os.environ.get("STABLE_SNN_DATA_ROOT") or "data"
    splits = build_splits("cifar10", root, download=args.download, val_size=args.eval_images,
                          train_subset=args.train_images, test_subset=1, seed=0, augment=True)
    val = [splits.val[i] for i in range(len(splits.val))]
    val = (torch.stack([v[0] for v in val]).to(args.device), torch.tensor([v[1] for v in val]).to(args.device))
    runs = [train_one(args, ap, seed, splits, val) for seed in args.seeds for ap in args.attack_precisions]
    baseline = args.attack_precisions[0]
    summary = compare(runs, baseline)
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary, "baseline": baseline, "config": vars(args)}))
    else:
        print(table(runs, summary, baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
