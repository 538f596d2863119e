"""Dataset names and the ImageArrays container."""

import numpy as np
import pytest

from stable_snn.data import DATASETS, ImageArrays, num_classes_of


def test_datasets_and_class_counts():
    assert DATASETS == ("cifar10", "cifar100")
    assert num_classes_of("cifar10") == 10
    assert num_classes_of("cifar100") == 100


def test_unknown_dataset_names_allowed_values():
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        num_classes_of("mnist")


def test_image_arrays_accepts_valid(make_arrays):
    arrays = make_arrays(5)
    assert len(arrays) == 5 and arrays.num_classes == 10


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 32, 32, 3), np.float32), np.zeros(2, np.int64), "uint8"),
    (np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, np.int64), r"\[N, 32, 32, 3\]"),
    (np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int32), "int64"),
    (np.zeros((2, 32, 32, 3), np.uint8), np.zeros(3, np.int64), r"\[N\]"),
    (np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 2], np.int64), r"\[0, 2\)"),
])
def test_image_arrays_rejects_invalid(images, labels, message):
    with pytest.raises(ValueError, match=message):
        ImageArrays(images, labels, ("a", "b"))
