"""Learning check: a small DLIF network trained briefly with Eq. 17 (mode ``at``, rho = 1) beats chance.

VGG5 (width 0.25, T = 4) trained with :func:`stable_snn.objective.train_step` (RFGSM
perturbation, chi = 0.5, MS-MPPD with rho = 1) on 2,000 CIFAR-10 training images for a few
epochs, then evaluated on 500 held-out images (the validation split, class-balanced, never
trained on).  Chance is 10 %; the check asks for 20 %, twice chance and some 7 standard
errors above it on 500 images.  Measured: 28.6 % (3 epochs, 75 s on two threads);
runs with other schedules and batch sizes reached 24-32 %, so the margin is kept for
numerical drift (a different kernel changes the trajectory of spikes).

Data: the suite's ``cifar10`` fixture (the offline Parquet copy when present, else torchvision's
download).
Run it with ``python -m pytest -m slow tests/test_learning.py -s`` to see the accuracy reached.
"""
from __future__ import annotations

import logging
import time

import pytest
import torch

from stable_snn.config import ObjectiveConfig
from stable_snn.data import build_splits, stack_dataset
from stable_snn.models import build_model
from stable_snn.objective import build_optimizer, train_step

logger = logging.getLogger(__name__)

TRAIN_IMAGES, HELDOUT_IMAGES = 2000, 500
WIDTH, CLASSIFIER_WIDTH, TIMESTEPS = 0.25, 64, 4
EPOCHS, BATCH, LR = 3, 32, 0.1
MIN_ACCURACY = 0.20


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        logits = model(images[i:i + batch]).mean(0)  # decode: mean over T
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(labels)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dlif_adversarial_training_beats_chance(record_property, cifar10, all_torch_threads):
    start = time.perf_counter()
    splits = build_splits("cifar10", cifar10.root, download=cifar10.download, val_size=HELDOUT_IMAGES,
                          train_subset=TRAIN_IMAGES, test_subset=1, seed=0, augment=False)
    x_train, y_train = stack_dataset(splits.train)
    x_held, y_held = stack_dataset(splits.val)
    assert len(y_train) == TRAIN_IMAGES and len(y_held) == HELDOUT_IMAGES
    assert torch.bincount(y_held, minlength=10).tolist() == [HELDOUT_IMAGES // 10] * 10
    data_s = time.perf_counter() - start

    with torch.random.fork_rng():  # weight init only; the global RNG is left as it was
        torch.manual_seed(0)
        model = build_model("vgg5", splits.num_classes, TIMESTEPS, "dlif", width=WIDTH,
                            classifier_width=CLASSIFIER_WIDTH)
    cfg = ObjectiveConfig(mode="at", rho=1.0)
    optimizer = build_optimizer(model, lr=LR, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = TRAIN_IMAGES // BATCH
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS * steps_per_epoch)
    generator = torch.Generator().manual_seed(0)  # shuffling and the RFGSM start
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(TRAIN_IMAGES, generator=generator)
        correct = seen = 0
        for step in range(steps_per_epoch):
            idx = order[step * BATCH:(step + 1) * BATCH]
            stats = train_step(model, optimizer, x_train[idx], y_train[idx], cfg, generator=generator)
            assert stats.finite and stats.stability is not None
            schedule.step()
            correct, seen = correct + stats.correct_clean, seen + stats.batch
        logger.info("epoch %d: train accuracy %.3f, last MS-MPPD %.4f", epoch + 1, correct / seen, stats.stability)

    acc = accuracy(model, x_held, y_held)
    total_s = time.perf_counter() - start
    record_property("heldout_accuracy", acc)
    print(f"\nlearning check: held-out accuracy {acc:.3f} on {HELDOUT_IMAGES} images "
          f"(data {data_s:.0f} s, total {total_s:.0f} s)")
    assert acc >= MIN_ACCURACY, f"held-out accuracy {acc:.3f} < {MIN_ACCURACY} (chance 0.1)"
    gains = model.dlif_gains()
    assert not torch.equal(gains, torch.ones_like(gains))  # the DLIF gains a[t] were trained


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["leak", "input"])
def test_wrn16_dlif_gains_stay_positive_under_the_papers_sgd_with_mppd(form):
    """WRN16 (width 0.125, T=4) trained 20 RFGSM steps (batch 8) with the paper's SGD (lr 0.1, momentum
    0.9) and rho = 1: every DLIF gain stays positive.  With the MPPD's gradient reaching the last
    layer's gains (their former dynamics), they turned negative within three steps in both forms."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(20 * 8, 3, 32, 32, generator=g), torch.randint(0, 10, (20 * 8,), generator=g)
    model = build_model("wrn16", 10, 4, "dlif", width=0.125, gain_form=form, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    cfg = ObjectiveConfig(mode="at", rho=1.0)
    lowest = []
    for step in range(20):
        x, y = images[step * 8:(step + 1) * 8], labels[step * 8:(step + 1) * 8]
        stats = train_step(model, optimizer, x, y, cfg, generator=torch.Generator().manual_seed(step))
        assert stats.finite and stats.stability > 0
        lowest.append(float(torch.stack([m.gain.detach() for m in model.spiking_layers()]).min()))
    assert min(lowest) > 0, lowest
