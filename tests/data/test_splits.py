"""build_splits: a validation split held out of train, seeded subsets, argument checks."""

import numpy as np
import pytest
import torch

from stable_snn.data import CIFARArrayDataset, DatasetNotFoundError, build_splits, load_arrays, stack_dataset
from stable_snn.data import parquet as parquet_module
from stable_snn.data.splits import balanced_order, split_indices, subset_indices


def _forbid_parquet_reads(monkeypatch, why: str) -> None:
    """Make every cached Parquet reader (whole split, labels, row subset) fail the test."""
    for name in ("_decode_cached", "_labels_cached", "_rows_cached"):
        monkeypatch.setattr(parquet_module, name, lambda *a, name=name: pytest.fail(f"{name}: {why}"))


def _same_samples(dataset: CIFARArrayDataset, reference: CIFARArrayDataset, epoch: int = 0) -> None:
    """``dataset`` serves exactly ``reference``'s images, labels and augmentation draws at ``epoch``."""
    np.testing.assert_array_equal(dataset.indices, reference.indices)
    np.testing.assert_array_equal(dataset.labels, reference.labels)
    assert dataset.classes == reference.classes
    dataset.set_epoch(epoch)
    reference.set_epoch(epoch)
    images, labels = stack_dataset(dataset)
    expected_images, expected_labels = stack_dataset(reference)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_sizes_and_disjointness(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=40, n_test=20)
    splits = build_splits("cifar10", root, val_size=10, train_subset=20, test_subset=5, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 5)
    assert not set(splits.train.indices) & set(splits.val.indices)
    assert splits.train.augment and not splits.val.augment and not splits.test.augment
    assert splits.num_classes == 10 and len(splits.classes) == 10
    everything = build_splits("cifar10", root, val_size=10)
    assert len(everything.train) == 30 and len(everything.test) == 20
    assert sorted([*everything.train.indices, *everything.val.indices]) == list(range(40))


def test_deterministic_under_a_seed(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=40, n_test=20)
    kwargs = dict(val_size=10, train_subset=20, test_subset=5)
    a, b = build_splits("cifar10", root, seed=1, **kwargs), build_splits("cifar10", root, seed=1, **kwargs)
    c = build_splits("cifar10", root, seed=2, **kwargs)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name).indices, getattr(b, name).indices)
    assert not np.array_equal(a.val.indices, c.val.indices)
    assert not np.array_equal(a.train.indices, c.train.indices)
    assert a.train.seed == 1


def test_validation_split_is_class_balanced():
    labels = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    train, val = split_indices(labels, val_size=100, train_subset=None, rng=rng)
    np.testing.assert_array_equal(np.bincount(labels[val]), np.full(10, 10))
    np.testing.assert_array_equal(np.bincount(labels[train]), np.full(10, 40))


def test_balanced_order_prefixes_follow_class_shares():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    order = balanced_order(labels, np.random.default_rng(0))
    assert sorted(order) == list(range(100))
    for m in (1, 7, 10, 33, 50, 99):
        counts = np.bincount(labels[order[:m]], minlength=3)
        assert np.all(np.abs(counts - m * np.array([0.6, 0.3, 0.1])) <= 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="svhn"), "cifar10, cifar100"),
    (dict(format="zip"), "auto, parquet, torchvision"),
    (dict(val_size=-1), "val_size"),
    (dict(train_subset=0), "train_subset"),
    (dict(test_subset=2.5), "test_subset"),
    (dict(seed=-3), "seed"),
    (dict(cutout=40), "cutout"),
    (dict(augment="yes"), "augment"),
])
def test_invalid_arguments_checked_before_decoding(make_parquet_root, monkeypatch, kwargs, message):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    _forbid_parquet_reads(monkeypatch, "read despite a bad argument")
    arguments = dict(dataset="cifar10") | kwargs
    with pytest.raises(ValueError, match=message):
        build_splits(arguments.pop("dataset"), root, **arguments)


def test_sizes_that_do_not_fit(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=10, n_test=4)
    with pytest.raises(ValueError, match="do not fit"):
        build_splits("cifar10", root, val_size=8, train_subset=5)
    with pytest.raises(ValueError, match="do not fit"):
        build_splits("cifar10", root, val_size=10)
    with pytest.raises(ValueError, match="holds 4"):
        build_splits("cifar10", root, val_size=2, test_subset=5)


def test_missing_test_file_found_before_decoding(make_parquet_root, monkeypatch):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    (root / "test.parquet").unlink()
    _forbid_parquet_reads(monkeypatch, "read train before failing")
    with pytest.raises(DatasetNotFoundError, match="test.parquet"):
        build_splits("cifar10", root, val_size=1)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="To get CIFAR-10"):
        build_splits("cifar10", tmp_path / "nowhere")


def _reference_splits(root, *, val_size, train_subset, test_subset, seed, augment=True, cutout=16):
    """The splits as build_splits made them before it decoded subsets only: whole splits + indices."""
    train, test = load_arrays("cifar10", root, "train"), load_arrays("cifar10", root, "test")
    split_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    train_idx, val_idx = split_indices(train.labels, val_size=val_size, train_subset=train_subset, rng=split_rng)
    test_idx = subset_indices(test.labels, test_subset, test_rng)
    return (CIFARArrayDataset(train, train_idx, augment=augment, cutout=cutout, seed=seed),
            CIFARArrayDataset(train, val_idx, augment=False, cutout=cutout, seed=seed),
            CIFARArrayDataset(test, test_idx, augment=False, cutout=cutout, seed=seed))


@pytest.mark.parametrize("sizes", [dict(val_size=6, train_subset=10, test_subset=3),
                                   dict(val_size=0, train_subset=1, test_subset=1),
                                   dict(val_size=10, train_subset=None, test_subset=None)])
def test_subset_decoding_serves_the_same_samples(make_parquet_root, sizes):
    root, _, _ = make_parquet_root(n_train=40, n_test=20)
    splits = build_splits("cifar10", root, seed=5, **sizes)
    for dataset, reference in zip((splits.train, splits.val, splits.test), _reference_splits(root, seed=5, **sizes)):
        for epoch in (0, 2):
            _same_samples(dataset, reference, epoch)


def test_only_the_used_images_are_decoded(make_parquet_root, monkeypatch):
    root, _, _ = make_parquet_root(n_train=40, n_test=20)
    decoded = []
    real_decode = parquet_module.decode_image
    monkeypatch.setattr(parquet_module, "decode_image", lambda data: decoded.append(data) or real_decode(data))
    splits = build_splits("cifar10", root, val_size=6, train_subset=10, test_subset=3, seed=0)
    assert len(decoded) == 6 + 10 + 3
    assert splits.train.arrays is splits.val.arrays and len(splits.train.arrays) == 16
    np.testing.assert_array_equal(splits.train.rows, np.union1d(splits.train.indices, splits.val.indices))
    assert len(splits.test.arrays) == 3 and splits.test.rows.tolist() == splits.test.indices.tolist()
    again = build_splits("cifar10", root, val_size=6, train_subset=10, test_subset=3, seed=0)
    assert len(decoded) == 19 and again.train.arrays is splits.train.arrays  # served from the cache


def test_more_than_half_a_split_decodes_it_whole(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=40, n_test=20)
    splits = build_splits("cifar10", root, val_size=10, train_subset=11, test_subset=10)
    assert splits.train.rows is None and splits.train.arrays is load_arrays("cifar10", root, "train")
    assert splits.test.rows is not None and len(splits.test.arrays) == 10  # exactly half: a subset


def test_torchvision_layout_keeps_whole_arrays(make_torchvision_root):
    root, _, _ = make_torchvision_root("cifar10")
    splits = build_splits("cifar10", root, val_size=4, train_subset=4, test_subset=2, seed=1)
    assert splits.train.rows is None and len(splits.train.arrays) == 20
    references = _reference_splits(root, val_size=4, train_subset=4, test_subset=2, seed=1)
    for dataset, reference in zip((splits.train, splits.val, splits.test), references):
        _same_samples(dataset, reference, epoch=1)
