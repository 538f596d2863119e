"""The checkpoint selection rule that jobs.train, every jobs.tune trial and jobs.register apply, and the
standard errors the validation logs for it."""
from __future__ import annotations

import math

import pytest
import torch

from jobs.config import job_config_from_dict
from jobs.training.selection import (
    MARGIN_SE, RULE, Selection, select_checkpoint, standard_error, validation_size, with_standard_errors,
)
from jobs.training.validation import evaluate_model
from stable_snn.config import build_network


def se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def test_standard_error_of_an_accuracy():
    assert standard_error(0.5, 2500) == pytest.approx(0.01)  # the default validation subset: SE <= 1 point
    assert standard_error(0.2, 256) == pytest.approx(0.025)
    assert standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="at least one image"):
        standard_error(0.5, 0)
    assert with_standard_errors({"val_clean_acc": 0.5, "val_robust_acc": 0.2, "sops": 3.0}, 256) == {
        "val_clean_acc": 0.5, "val_robust_acc": 0.2, "sops": 3.0,
        "val_clean_acc_se": pytest.approx(se(0.5, 256)), "val_robust_acc_se": pytest.approx(0.025)}


def test_noise_on_a_small_validation_subset_does_not_displace_the_latest_checkpoint():
    """The swings seen with 256 validation images (PGD-10 11.3, 16.0, 10.6, 14.5, 15.2 % over epochs 1-5):
    the best-scoring epoch 2 leads epoch 5 by 0.8 points, far less than two standard errors (~6 points)."""
    scores = {e: {"val_robust_acc": acc} for e, acc in zip(range(1, 6), (0.113, 0.160, 0.106, 0.145, 0.152))}
    sel = select_checkpoint(scores, n_images=256)
    assert (sel.epoch, sel.latest_epoch, sel.earlier_epoch) == (5, 5, 2)
    assert sel.gap == pytest.approx(0.008)
    assert sel.margin == pytest.approx(MARGIN_SE * math.hypot(se(0.160, 256), se(0.152, 256)))


def test_an_earlier_checkpoint_better_by_more_than_two_standard_errors_is_selected():
    """Collapse at the end (robust accuracy 30 % -> 20 % on 2,500 images, SE ~0.9 points) is real."""
    scores = {1: {"val_robust_acc": 0.25}, 2: {"val_robust_acc": 0.30}, 3: {"val_robust_acc": 0.20}}
    sel = select_checkpoint(scores, n_images=2500)
    assert (sel.epoch, sel.earlier_epoch) == (2, 2) and sel.gap == pytest.approx(0.10)
    # just inside the margin the latest stays
    margin = MARGIN_SE * math.hypot(se(0.30, 2500), se(0.29, 2500))
    close = {1: {"val_robust_acc": 0.30}, 2: {"val_robust_acc": 0.30 - 0.9 * margin}}
    assert select_checkpoint(close, n_images=2500).epoch == 2


def test_logged_standard_errors_win_over_the_validation_size_and_unvalidated_epochs_are_no_candidates():
    scores = {1: {"val_robust_acc": 0.40, "val_robust_acc_se": 0.001}, 2: {"val_robust_acc": 0.38, "val_robust_acc_se": 0.001},
              3: {"val_clean_acc": 0.9}}  # epoch 3's validation never arrived
    sel = select_checkpoint(scores, n_images=10)  # with n = 10 the 2-point gap would be noise
    assert (sel.epoch, sel.latest_epoch) == (1, 2)
    ties = {1: {"val_robust_acc": 0.5}, 2: {"val_robust_acc": 0.5}, 3: {"val_robust_acc": 0.1}}
    assert select_checkpoint(ties, n_images=10_000).epoch == 2  # among equal earlier ones, the later
    assert select_checkpoint({4: {"val_robust_acc": 0.3}}).epoch == 4  # one checkpoint: no SE needed
    with pytest.raises(ValueError, match="no checkpoint has a validation val_robust_acc"):
        select_checkpoint({1: {}})
    with pytest.raises(ValueError, match="no val_robust_acc_se logged and no validation size"):
        select_checkpoint({1: {"val_robust_acc": 0.3}, 2: {"val_robust_acc": 0.2}})


def test_the_selection_is_recorded_with_its_rule_and_margin():
    tags = Selection(epoch=2, latest_epoch=5, earlier_epoch=2, gap=0.1, margin=0.05).tags()
    assert tags == {"selection.rule": RULE, "selection.epoch": "2", "selection.latest_epoch": "5",
                    "selection.earlier_epoch": "2", "selection.gap": "0.100000", "selection.margin": "0.050000"}
    assert "2 standard errors" in RULE


def test_validation_metrics_carry_their_standard_errors():
    cfg = job_config_from_dict({"model": {"arch": "vgg5", "timesteps": 2, "width": 0.125, "classifier_width": 16},
                                "validation": {"subset": 12, "pgd_steps": 1, "batch_size": 6}, "data": {"val_size": 50}})
    assert validation_size(cfg) == 12
    model = build_network(cfg, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    metrics = evaluate_model(model, cfg, images, labels)
    for key in ("val_clean_acc", "val_robust_acc"):
        assert metrics[f"{key}_se"] == pytest.approx(se(metrics[key], 12))
