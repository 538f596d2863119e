"""Sanity flags: each one raised by results that should raise it and quiet on results that should not,
with the thresholds the named protocols use; zero-gradient detection; the flags on real networks."""
from __future__ import annotations

from functools import partial

import pytest
import torch

from stable_snn.attacks import (
    FGSM, PGD, OnlyFooledBy, Protocol, Row, RowResult, WeakerThan, ZeroGradients, beats_reference, chain,
    evaluate_protocol, get_protocol, noise_margin, zero_gradient_mask,
)
from stable_snn.neurons import Triangle, spiking_layers


def row(name, correct, indices=None):
    correct = torch.tensor(correct, dtype=torch.bool)
    idx = torch.arange(len(correct)) if indices is None else torch.tensor(indices)
    return RowResult(name, idx, correct, torch.zeros(len(correct), dtype=torch.long))


def strict_check(name):
    return next(c for c in get_protocol("strict").checks if c.name == name)


def test_noise_margin():
    assert noise_margin(100, 0.5) == pytest.approx(0.05)
    assert noise_margin(10**6, 0.5) == 0.005  # the floor
    assert noise_margin(100, 0.0) == 0.005
    with pytest.raises(ValueError):
        noise_margin(0, 0.5)


# -- each flag: raised and not raised ----------------------------------------------------------

PAPER = ("fgsm", "pgd-7", "pgd-10", "pgd-20", "pgd-40", "apgd-ce", "apgd-dlr")


def paper(accuracies: dict[str, int], n: int = 400) -> dict[str, RowResult]:
    """Rows of paper-table1 with the given numbers of correct samples out of ``n``."""
    return {name: row(name, [True] * accuracies.get(name, 100) + [False] * (n - accuracies.get(name, 100)))
            for name in PAPER}


@pytest.mark.parametrize("protocol", ["paper-table1", "strict"])
def test_iterative_weaker_than_single_step(protocol):
    check = next(c for c in get_protocol(protocol).checks if c.name == "iterative-weaker-than-single-step")
    assert not check(paper({"fgsm": 160, "pgd-40": 100})).raised  # PGD below FGSM: as it should be
    assert not check(paper({"fgsm": 100, "pgd-20": 105})).raised  # 1.25 points above: within noise (2.2)
    flag = check(paper({"fgsm": 100, "pgd-20": 140}))  # 10 points above FGSM
    assert flag.raised and flag.value == pytest.approx(0.10) and flag.message.startswith("pgd-20 35.00% vs fgsm 25.00%")


def test_quick_compares_pgd10_with_fgsm():
    check = get_protocol("quick").checks[0]
    assert check.needs == ("pgd-10", "fgsm")
    assert check(paper({"fgsm": 50, "pgd-10": 100})).raised
    assert not check(paper({"fgsm": 100, "pgd-10": 50})).raised


@pytest.mark.parametrize("protocol", ["autoattack", "strict"])
def test_black_box_beats_white_box(protocol):
    check = next(c for c in get_protocol(protocol).checks if c.name == "black-box-beats-white-box")
    assert isinstance(check, OnlyFooledBy) and check.row == "aa-square" and check.tolerance == 0.002
    n = 1000
    white = {o: row(o, [True] * 300 + [False] * 700) for o in check.others}
    # Square (chained after them) fools nothing more: its cumulative row equals theirs
    assert not check({**white, "aa-square": row("aa-square", [True] * 300 + [False] * 700)}).raised
    # two samples of 1000 (0.2 %) is AutoAttack's tolerance; three is over it
    assert not check({**white, "aa-square": row("aa-square", [True] * 298 + [False] * 702)}).raised
    flag = check({**white, "aa-square": row("aa-square", [True] * 297 + [False] * 703)})
    assert flag.raised and flag.value == pytest.approx(3 / n)
    # a sample one white-box row fooled does not count for Square
    white[check.others[0]] = row(check.others[0], [True] * 297 + [False] * 703)
    assert not check({**white, "aa-square": row("aa-square", [True] * 297 + [False] * 703)}).raised


def test_black_box_beating_pgd_on_a_subset_is_flagged_on_shared_samples():
    check = next(c for c in get_protocol("obfuscation-checks").checks if c.name == "black-box-beats-white-box")
    pgd = row("pgd-10", [True] * 60 + [False] * 40)  # 60 %
    # Square ran on the first 50 samples only: PGD-10 has 100 % there, Square 40 %
    flag = check({"pgd-10": pgd, "square": row("square", [True] * 20 + [False] * 30, indices=list(range(50)))})
    assert flag.raised and flag.value == pytest.approx(0.6)
    assert not check({"pgd-10": pgd, "square": row("square", [True] * 50, indices=list(range(50)))}).raised


def test_difference_within_noise_is_not_flagged_and_the_strongest_is_reported():
    check = beats_reference("sw", "pgd-10", ("a", "b"))
    pgd = row("pgd-10", [True] * 50 + [False] * 50)
    flag = check({"pgd-10": pgd, "a": row("a", [True] * 47 + [False] * 53), "b": pgd})  # 3 points, margin 5
    assert not flag.raised and flag.value == pytest.approx(0.03) and flag.threshold == pytest.approx(0.05)
    flag = check({"pgd-10": pgd, "a": row("a", [True] * 49 + [False] * 51), "b": row("b", [True] * 20 + [False] * 80)})
    assert flag.raised and flag.message.startswith("pgd-10 50.00% vs b 20.00%")


@pytest.mark.parametrize("name, row_name, limit", [
    ("not-falling-to-zero", "pgd-10_eps64", 0.05), ("unbounded-not-reaching-zero", "pgd-20_unbounded", 0.0),
])
def test_falls_to_zero(name, row_name, limit):
    check = strict_check(name)
    assert (check.row, check.max_accuracy) == (row_name, limit)
    at_limit = round(100 * limit)
    assert not check({row_name: row(row_name, [True] * at_limit + [False] * (100 - at_limit))}).raised
    assert check({row_name: row(row_name, [True] * (at_limit + 1) + [False] * (99 - at_limit))}).raised


def test_pgd100_more_than_three_points_below_pgd10():
    check = strict_check("pgd-100-beats-pgd-10")
    assert isinstance(check, WeakerThan) and check.margin == 0.03
    pgd10 = row("pgd-10", [True] * 40 + [False] * 60)
    assert not check({"pgd-10": pgd10, "pgd-100": row("pgd-100", [True] * 37 + [False] * 63)}).raised  # 3 points
    flag = check({"pgd-10": pgd10, "pgd-100": row("pgd-100", [True] * 36 + [False] * 64)})  # 4 points
    assert flag.raised and flag.value == pytest.approx(0.04)


def test_zero_gradients_flag():
    check = strict_check("zero-gradients")
    assert not check({}, torch.zeros(10, dtype=torch.bool)).raised
    flag = check({}, torch.tensor([True] + [False] * 9))
    assert flag.raised and flag.value == pytest.approx(0.1)
    with pytest.raises(ValueError, match="zero-gradient"):
        ZeroGradients()({}, None)


def test_strict_runs_every_sanity_flag():
    assert [c.name for c in get_protocol("strict").checks] == [
        "iterative-weaker-than-single-step", "black-box-beats-white-box", "not-falling-to-zero",
        "unbounded-not-reaching-zero", "pgd-100-beats-pgd-10", "zero-gradients"]


# -- zero gradients on real networks ------------------------------------------------------------

def test_zero_gradient_mask(tiny_model, batch):
    x, y = batch
    mask = zero_gradient_mask(tiny_model, x, y)
    assert mask.dtype == torch.bool and mask.shape == (8,)
    assert all(p.grad is None for p in tiny_model.parameters())
    with torch.no_grad():
        tiny_model.head.weight.zero_()  # logits no longer depend on the input
    assert zero_gradient_mask(tiny_model, x, y).all()


def sanity_protocol() -> Protocol:
    """The sanity rows of ``strict`` with their checks, cheap enough for a test."""
    eps = 8 / 255
    rows = (Row("clean"), Row("fgsm", partial(FGSM, eps=eps), eps=eps),
            Row("pgd-10", partial(PGD, eps=eps, alpha=2 / 255, steps=10), eps=eps),
            *chain((Row("pgd-10_eps64", partial(PGD, eps=64 / 255, alpha=16 / 255, steps=10), eps=64 / 255,
                        in_worst_case=False),)),
            *chain((Row("pgd-20_unbounded", partial(PGD, eps=1.0, alpha=0.1, steps=20, random_start=False), eps=1.0,
                        in_worst_case=False),)))
    names = ("not-falling-to-zero", "unbounded-not-reaching-zero", "zero-gradients")
    return Protocol("sanity", rows, measure_zero_gradients=True, checks=tuple(strict_check(n) for n in names))


@pytest.mark.slow  # trains a model (once per session)
@pytest.mark.timeout(60)
def test_flags_on_a_trained_network_and_on_its_hard_threshold_twin(trained):
    """The trained network raises none of these flags; declared with a surrogate of width 1e-6 (a hard
    threshold: the same function, zero input gradients) it raises all three."""
    model, x, y = trained.model, trained.images[:48].contiguous(), trained.labels[:48]
    good = evaluate_protocol(model, x, y, sanity_protocol(), batch_size=48, generator_seed=0)
    assert good.raised_flags == [] and good.zero_gradient_fraction == 0
    surrogates = [m.surrogate for _, m in spiking_layers(model)]
    try:
        for _, m in spiking_layers(model):
            m.surrogate = Triangle(1e-6)
        hard = evaluate_protocol(model, x, y, sanity_protocol(), batch_size=48, generator_seed=0)
    finally:
        for (_, m), s in zip(spiking_layers(model), surrogates):
            m.surrogate = s
    assert hard.raised_flags == ["not-falling-to-zero", "unbounded-not-reaching-zero", "zero-gradients"]
    assert hard.accuracies["pgd-20_unbounded"] == pytest.approx(hard.accuracies["clean"])  # nothing moved
