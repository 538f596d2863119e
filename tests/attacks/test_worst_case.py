"""Per-sample worst case over attacks."""
from __future__ import annotations

import pytest
import torch

from stable_snn.attacks import worst_case


def test_robust_only_if_every_attack_fails():
    correct = {
        "clean": torch.tensor([True, True, True, False]),
        "fgsm": torch.tensor([True, False, True, True]),
        "pgd": torch.tensor([True, True, False, True]),
    }
    assert worst_case(correct).tolist() == [True, False, False, False]
    assert correct["clean"].tolist() == [True, True, True, False]  # inputs untouched


def test_worst_case_is_at_most_each_attack():
    g = torch.Generator().manual_seed(0)
    correct = {f"a{i}": torch.rand(100, generator=g) < 0.6 for i in range(5)}
    w = worst_case(correct)
    for c in correct.values():
        assert not (w & ~c).any()


@pytest.mark.parametrize("correct, match", [
    ({}, "at least one"),
    ({"a": torch.tensor([1, 0])}, "BoolTensor"),
    ({"a": torch.tensor([True]), "b": torch.tensor([True, False])}, "shape"),
    ({"a": torch.ones(2, 2, dtype=torch.bool)}, "BoolTensor"),
])
def test_bad_input_raises(correct, match):
    with pytest.raises(ValueError, match=match):
        worst_case(correct)
