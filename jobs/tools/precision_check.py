"""Does reduced precision change what training learns?  Train the same model twice, compare accuracy.

    python -m jobs.tools.precision_check --data-root DIR [--download] [--precisions fp32 bf16] [--epochs N] [--json]

Trains a small VGG5 (the ``quick`` preset's shape: width 0.25, classifier 256, DLIF, T=4,
mode ``at`` with rho = 1, chi = 0.5) on a class-balanced subset of CIFAR-10 for a few epochs,
once per precision, from the same initial weights, batches, augmentation and attack noise
(one seed), then measures clean and PGD-10 (eps 8/255, step 2/255, fp32, BatchNorm in eval
mode) accuracy on held-out validation images.  The fast path of the model is used in every
run (``--kernels``); only the training precision differs.  The target: bf16 within 1.5
points of fp32 on both numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

from stable_snn.attacks import PGD
from stable_snn.config import PRECISIONS, ObjectiveConfig
from stable_snn.data import build_splits
from stable_snn.models import build_model
from stable_snn.neurons.fused import KERNELS
from stable_snn.objective import build_optimizer, train_step

from ..logs import setup_logging

log = logging.getLogger("stable_snn.precision_check")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.tools.precision_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="CIFAR-10 location (default $STABLE_SNN_DATA_ROOT or ./data)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision if absent")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS)
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--classifier-width", type=int, default=256)
    p.add_argument("--kernels", default="compiled", choices=KERNELS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def accuracy(model, images, labels, batch_size: int, attack=None, seed: int = 0) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(labels), batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        if attack is not None:
            x = attack(model, x, y, gen)
        with torch.no_grad():
            correct += int((model(x).mean(0).argmax(1) == y).sum())
    return 100.0 * correct / len(labels)


def train_one(args, precision: str, splits) -> dict:
    torch.manual_seed(args.seed)  # the job's seed: the same initial weights for every precision
    model = build_model("vgg5", splits.num_classes, args.timesteps, "dlif", width=args.width,
                        classifier_width=args.classifier_width, backend=args.kernels)
    cfg = ObjectiveConfig(mode="at", rho=1.0, chi=0.5)
    opt = build_optimizer(model, args.lr, 0.9, 5e-4)
    steps_per_epoch = len(splits.train) // args.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    attack_gen = torch.Generator().manual_seed(args.seed + 1)
    start = time.perf_counter()
    losses = []
    for epoch in range(args.epochs):
        splits.train.set_epoch(epoch)
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(args.seed + 100 + epoch))
        model.train()
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size].tolist()
            samples = [splits.train[i] for i in idx]
            images = torch.stack([s[0] for s in samples])
            labels = torch.tensor([s[1] for s in samples])
            stats = train_step(model, opt, images, labels, cfg, generator=attack_gen, precision=precision)
            sched.step()
            losses.append(stats.loss)
        log.info("%s epoch %d: mean loss %.4f (%.0f s)", precision, epoch + 1,
                 sum(losses[-steps_per_epoch:]) / steps_per_epoch, time.perf_counter() - start)
    val = [splits.val[i] for i in range(len(splits.val))]
    images, labels = torch.stack([v[0] for v in val]), torch.tensor([v[1] for v in val])
    clean = accuracy(model, images, labels, 100)
    robust = accuracy(model, images, labels, 100, PGD(eps=8 / 255, alpha=2 / 255, steps=10), seed=args.seed + 2)
    return {"precision": precision, "clean_acc": clean, "pgd10_acc": robust, "final_loss": losses[-1],
            "train_s": time.perf_counter() - start}


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(logging.WARNING if args.json else logging.INFO)
    root = args.data_root or os.environ.get("STABLE_SNN_DATA_ROOT") or "data"
    splits = build_splits("cifar10", root, download=args.download, val_size=args.eval_images, train_subset=args.train_images,
                          test_subset=1, seed=args.seed, augment=True)
    results = [train_one(args, p, splits) for p in args.precisions]
    out = {"runs": results, "config": vars(args)}
    base = results[0]
    for r in results[1:]:
        r["clean_diff_vs_" + base["precision"]] = r["clean_acc"] - base["clean_acc"]
        r["pgd10_diff_vs_" + base["precision"]] = r["pgd10_acc"] - base["pgd10_acc"]
    if args.json:
        print(json.dumps(out))
    else:
        for r in results:
            extra = "".join(f", {k} {v:+.2f}" for k, v in r.items() if k.startswith(("clean_diff", "pgd10_diff")))
            print(f"{r['precision']}: clean {r['clean_acc']:.2f}%, PGD-10 {r['pgd10_acc']:.2f}%{extra} "
                  f"(final loss {r['final_loss']:.4f}, {r['train_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
