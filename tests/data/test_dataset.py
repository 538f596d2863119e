"""CIFARArrayDataset: conversion, seeded augmentation per (seed, epoch, index), DataLoader workers."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stable_snn.data import CIFARArrayDataset, ImageArrays, stack_dataset


def test_plain_samples(make_arrays):
    arrays = make_arrays(8)
    dataset = CIFARArrayDataset(arrays, np.array([5, 2]))
    assert len(dataset) == 2
    image, label = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert isinstance(label, int) and label == int(arrays.labels[5])
    torch.testing.assert_close(image, torch.from_numpy(arrays.images[5]).permute(2, 0, 1).float() / 255)
    dataset.set_epoch(3)
    assert torch.equal(dataset[0][0], image)  # no augmentation, no epoch dependence


def test_augmented_samples_keep_shape_and_range(make_arrays):
    dataset = CIFARArrayDataset(make_arrays(8), augment=True)
    for i in range(len(dataset)):
        image, _ = dataset[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1


def test_augmentation_is_a_function_of_seed_epoch_index(make_arrays):
    arrays = make_arrays(8)
    a = CIFARArrayDataset(arrays, augment=True, seed=3)
    b = CIFARArrayDataset(arrays, augment=True, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(8))
    assert torch.equal(a[5][0], a[5][0])
    a_subset = CIFARArrayDataset(arrays, np.array([5]), augment=True, seed=3)
    assert torch.equal(a_subset[0][0], a[5][0])  # keyed by the index into the arrays, not the position
    first = stack_dataset(a)[0]
    a.set_epoch(1)
    assert not torch.equal(stack_dataset(a)[0], first)
    a.set_epoch(0)
    assert torch.equal(stack_dataset(a)[0], first)
    other_seed = CIFARArrayDataset(arrays, augment=True, seed=4)
    assert not torch.equal(stack_dataset(other_seed)[0], first)


def test_cutout_on_all_ones_image():
    arrays = ImageArrays(np.full((4, 32, 32, 3), 255, np.uint8), np.zeros(4, np.int64), ("a",))
    dataset = CIFARArrayDataset(arrays, augment=True, cutout=16)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            image, _ = dataset[i]
            assert (image == 0).any()
    no_cutout = CIFARArrayDataset(arrays, augment=True, cutout=0)
    counts = [int((no_cutout[i][0] == 0).sum()) for i in range(4)]
    assert all(c % 3 == 0 for c in counts)  # only crop padding, same in every channel


def test_workers_draw_the_same_augmentation(make_arrays):
    dataset = CIFARArrayDataset(make_arrays(16), augment=True, seed=7)
    dataset.set_epoch(2)
    expected, labels = stack_dataset(dataset)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    images = torch.cat([batch for batch, _ in loader])
    assert torch.equal(images, expected)
    assert torch.equal(torch.cat([y for _, y in loader]), labels)


def test_set_epoch_reaches_persistent_workers(make_arrays):
    dataset = CIFARArrayDataset(make_arrays(8), augment=True, seed=7)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True,
                        multiprocessing_context="fork")  # spawn works too, but costs seconds to start
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        assert torch.equal(torch.cat([batch for batch, _ in loader]), stack_dataset(dataset)[0])


def test_stack_dataset(make_arrays):
    images, labels = stack_dataset(CIFARArrayDataset(make_arrays(6), np.array([1, 4])))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 4]
    empty_images, empty_labels = stack_dataset(CIFARArrayDataset(make_arrays(3), np.array([], np.int64)))
    assert empty_images.shape == (0, 3, 32, 32) and empty_labels.shape == (0,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(indices=np.array([0, 9])), r"\[0, 8\)"),
    (dict(indices=np.zeros((2, 2), np.int64)), "1-D"),
    (dict(cutout=33), "cutout"),
    (dict(cutout=-1), "cutout"),
    (dict(seed=-1), "seed"),
    (dict(augment=1), "augment"),
])
def test_invalid_arguments(make_arrays, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFARArrayDataset(make_arrays(8), **kwargs)


def test_invalid_epoch(make_arrays):
    with pytest.raises(ValueError, match="epoch"):
        CIFARArrayDataset(make_arrays(2)).set_epoch(-1)


def test_partial_arrays_with_rows(make_arrays):
    whole = make_arrays(12)
    rows = np.array([1, 4, 5, 9])
    part = ImageArrays(whole.images[rows], whole.labels[rows], whole.classes)
    indices = np.array([9, 1, 5])
    dataset = CIFARArrayDataset(part, indices, augment=True, seed=2, rows=rows)
    reference = CIFARArrayDataset(whole, indices, augment=True, seed=2)
    assert dataset.indices.tolist() == [9, 1, 5] and dataset.rows.tolist() == rows.tolist()
    np.testing.assert_array_equal(dataset.labels, whole.labels[indices])
    for epoch in (0, 3):  # same images and the same draws: augmentation is keyed by the row in the split
        dataset.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert torch.equal(stack_dataset(dataset)[0], stack_dataset(reference)[0])
        assert torch.equal(stack_dataset(dataset)[1], stack_dataset(reference)[1])
    assert CIFARArrayDataset(part, rows=rows).indices.tolist() == rows.tolist()  # None = all rows held
    assert rows.flags.writeable  # the caller's array is left alone


@pytest.mark.parametrize("indices, rows, message", [
    (np.array([1, 2]), np.array([1, 4, 5, 9]), "among the rows"),
    (np.array([10]), np.array([1, 4, 5, 9]), "among the rows"),
    (None, np.array([1, 4, 5]), "one position per image"),
    (None, np.array([1, 5, 4, 9]), "strictly increasing"),
    (None, np.array([-1, 4, 5, 9]), "non-negative"),
    (None, np.array([1.0, 4, 5, 9]), "integer"),
])
def test_invalid_rows(make_arrays, indices, rows, message):
    with pytest.raises(ValueError, match=message):
        CIFARArrayDataset(make_arrays(4), indices, rows=rows)
