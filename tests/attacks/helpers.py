"""Helpers of the attack tests: tiny networks, a CIFAR-10 subset, the training recipe of ``trained``.

The trained network (``trained``) is a VGG5 at width 0.25, classifier width 64, T = 2, trained
for 250 Adam steps of 32 images (random flips) on 4,000 random CIFAR-10 training images from the
offline Parquet copy (or torchvision's download when the copy is absent). It reaches about 40 %
clean accuracy on the test split: weak, but a real image model with real gradients, which is
what the invariants (robust <= clean, more steps never help the defender, worst case <= each
attack) and the torchattacks cross-check need. It is trained once per session (about 20-40 s on
one core); every test runs with one torch thread, restored afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from stable_snn.models import build_model

TINY = dict(timesteps=2, width=0.25, classifier_width=64)
TRAIN_IMAGES, TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 4000, 250, 32, 3e-3
TEST_IMAGES = 128


def seeded_model(seed: int = 0, **kw) -> torch.nn.Module:
    """``build_model("vgg5", **TINY)`` initialised from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("vgg5", **{**TINY, **kw})


def load_cifar_subset(source, split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images of ``split`` as float ``[n, 3, 32, 32]`` in [0, 1] and int64 labels."""
    from stable_snn.data import load_arrays
    from stable_snn.data.parquet import decode_image

    rng = np.random.default_rng(seed)
    parquet = source.root / f"{split}.parquet"
    if parquet.is_file():  # decode only the rows we need
        table = pq.read_table(parquet, columns=["image", "label"])
        sub = table.take(np.sort(rng.choice(table.num_rows, n, replace=False)))
        images = np.stack([decode_image(b) for b in sub.column("image").to_pylist()])
        labels = np.asarray(sub.column("label").to_pylist(), dtype=np.int64)
    else:
        arrays = load_arrays("cifar10", source.root, split, download=source.download)
        idx = np.sort(rng.choice(len(arrays.labels), n, replace=False))
        images, labels = arrays.images[idx], arrays.labels[idx]
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(labels).long()


@dataclass
class Trained:
    model: torch.nn.Module
    images: torch.Tensor  # [TEST_IMAGES, 3, 32, 32]
    labels: torch.Tensor
    clean_accuracy: float


def train_tiny(source) -> Trained:
    """The recipe described above (one torch thread)."""
    x, y = load_cifar_subset(source, "train", TRAIN_IMAGES, seed=0)
    model = seeded_model(0)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=TRAIN_LR, total_steps=TRAIN_STEPS)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, len(x), (TRAIN_BATCH,), generator=g)
        flip = torch.rand(TRAIN_BATCH, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), x[idx].flip(3), x[idx])
        loss = F.cross_entropy(model(xb).mean(0), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    xt, yt = load_cifar_subset(source, "test", TEST_IMAGES, seed=1)
    return Trained(model, xt, yt, accuracy(model, xt, yt))


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).mean(0).argmax(1) == y).float().mean().item()


def predictions(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).mean(0).argmax(1)
