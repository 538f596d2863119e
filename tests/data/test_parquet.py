"""The Parquet layout: small files written here, and the shared offline CIFAR-10 copy."""

import io
import os

import numpy as np
import pytest
from PIL import Image

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stable_snn.data import CIFARArrayDataset, build_splits, load_arrays, stack_dataset
from stable_snn.data import parquet as parquet_module
from stable_snn.data.loading import load_labels, load_rows
from stable_snn.data.parquet import decode_images, parse_classes, read_parquet_labels, read_parquet_rows
from stable_snn.data.splits import split_indices, subset_indices

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)


def test_round_trip(make_parquet_root):
    root, train, test = make_parquet_root()
    for split, expected in (("train", train), ("test", test)):
        arrays = load_arrays("cifar10", root, split, format="parquet")
        np.testing.assert_array_equal(arrays.images, expected.images)
        np.testing.assert_array_equal(arrays.labels, expected.labels)
        assert arrays.labels.dtype == np.int64 and arrays.classes == expected.classes


def test_decoded_once_per_process_and_read_only(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    first = load_arrays("cifar10", root, "train")
    assert load_arrays("cifar10", root, "train") is first
    assert not first.images.flags.writeable and not first.labels.flags.writeable


def test_changed_file_is_decoded_again(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    first = load_arrays("cifar10", root, "train")
    other, _, _ = make_parquet_root(n_train=6, n_test=2)
    (other / "train.parquet").replace(root / "train.parquet")
    second = load_arrays("cifar10", root, "train")
    assert len(first) == 4 and len(second) == 6


def test_classes_metadata_formats():
    assert parse_classes(b"airplane,automobile") == ("airplane", "automobile")
    assert parse_classes(b'["a", "b, c"]') == ("a", "b, c")


def test_missing_classes_metadata(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=4, n_test=2, classes_value=b"")
    with pytest.raises(ValueError, match="'classes'"):
        load_arrays("cifar10", root, "train")


def test_class_count_must_match_dataset(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=4, n_test=2, num_classes=100)
    with pytest.raises(ValueError, match="100 classes, but cifar10 has 10"):
        load_arrays("cifar10", root, "train")
    assert load_arrays("cifar100", root, "train").num_classes == 100


@pytest.fixture(scope="module")
def shared_train(shared_cifar10_root):
    return load_arrays("cifar10", shared_cifar10_root, "train")


@pytest.mark.parametrize("split, size", [("train", 50_000), ("test", 10_000)])
def test_shared_copy(shared_cifar10_root, split, size):
    arrays = load_arrays("cifar10", os.fspath(shared_cifar10_root), split)
    assert arrays.images.shape == (size, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert arrays.labels.shape == (size,) and arrays.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(arrays.labels, minlength=10), np.full(10, size // 10))
    assert arrays.classes == CIFAR10_CLASSES
    subset = arrays.images[::10].astype(np.float64) / 255.0
    np.testing.assert_allclose(subset.mean(axis=(0, 1, 2)), CIFAR10_MEAN, atol=5e-3)


def test_shared_copy_splits(shared_cifar10_root, shared_train):
    splits = build_splits("cifar10", shared_cifar10_root, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45_000, 5_000, 10_000)
    assert splits.train.arrays is shared_train  # decoded once, shared by train and val
    np.testing.assert_array_equal(np.bincount(splits.val.labels), np.full(10, 500))
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10


def test_shared_copy_small_splits_decode_only_their_images(shared_cifar10_root, shared_train, monkeypatch):
    """build_splits with small subsets serves exactly what the whole-split path served, decoding 513 images."""
    parquet_module._rows_cached.cache_clear()  # count this call's decoding, not an earlier test's
    decoded = []
    real_decode = parquet_module.decode_image
    monkeypatch.setattr(parquet_module, "decode_image", lambda data: decoded.append(1) or real_decode(data))
    splits = build_splits("cifar10", shared_cifar10_root, val_size=256, train_subset=256, test_subset=1, seed=3)
    assert len(decoded) == 256 + 256 + 1
    monkeypatch.undo()

    # the whole-split path, as build_splits took it before: decode everything, index into it
    shared_test = load_arrays("cifar10", shared_cifar10_root, "test")
    split_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(3).spawn(2))
    train_idx, val_idx = split_indices(shared_train.labels, val_size=256, train_subset=256, rng=split_rng)
    test_idx = subset_indices(shared_test.labels, 1, test_rng)
    references = (CIFARArrayDataset(shared_train, train_idx, augment=True, seed=3),
                  CIFARArrayDataset(shared_train, val_idx, seed=3),
                  CIFARArrayDataset(shared_test, test_idx, seed=3))
    for dataset, reference in zip((splits.train, splits.val, splits.test), references):
        np.testing.assert_array_equal(dataset.indices, reference.indices)
        np.testing.assert_array_equal(dataset.labels, reference.labels)
        held = np.searchsorted(dataset.rows, dataset.indices)
        np.testing.assert_array_equal(dataset.arrays.images[held], reference.arrays.images[reference.indices])
        for epoch in (0, 4):  # same augmentation draws too
            dataset.set_epoch(epoch)
            reference.set_epoch(epoch)
            images, labels = stack_dataset(dataset)
            expected_images, expected_labels = stack_dataset(reference)
            assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert set(np.bincount(splits.val.labels, minlength=10)) <= {25, 26}  # class-balanced
    assert splits.classes == CIFAR10_CLASSES and splits.num_classes == 10


def test_labels_without_decoding(make_parquet_root, monkeypatch):
    root, train, _ = make_parquet_root(n_train=12, n_test=4)
    monkeypatch.setattr(parquet_module, "decode_image", lambda data: pytest.fail("decoded an image"))
    labels, classes = read_parquet_labels(root / "train.parquet")
    np.testing.assert_array_equal(labels, train.labels)
    assert labels.dtype == np.int64 and not labels.flags.writeable and classes == train.classes
    assert load_labels("cifar10", root, "train")[0] is labels  # cached
    with pytest.raises(ValueError, match="100 classes, but cifar10 has 10"):
        load_labels("cifar10", make_parquet_root(n_train=4, n_test=2, num_classes=100)[0], "train")


def test_rows_decode_exactly_those_rows(make_parquet_root):
    root, train, _ = make_parquet_root(n_train=12, n_test=4)
    rows = np.array([0, 3, 4, 11])
    part = read_parquet_rows(root / "train.parquet", rows)
    np.testing.assert_array_equal(part.images, train.images[rows])
    np.testing.assert_array_equal(part.labels, train.labels[rows])
    assert part.classes == train.classes and not part.images.flags.writeable
    assert read_parquet_rows(root / "train.parquet", rows.tolist()) is part  # cached by row set
    assert len(read_parquet_rows(root / "train.parquet", np.array([], np.int64))) == 0
    assert load_rows("cifar10", root, "train", rows) is part


@pytest.mark.parametrize("rows, message", [([3, 1], "strictly increasing"), ([2, 2], "strictly increasing"),
                                           ([0, 12], "below 12"), ([-1], "non-negative"),
                                           ([[0, 1]], "1-D")])
def test_bad_rows(make_parquet_root, rows, message):
    root, _, _ = make_parquet_root(n_train=12, n_test=4)
    with pytest.raises(ValueError, match=message):
        read_parquet_rows(root / "train.parquet", rows)


def test_rows_of_a_changed_file_are_read_again(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    first = read_parquet_rows(root / "train.parquet", [1])
    other, train, _ = make_parquet_root(n_train=6, n_test=2)
    (other / "train.parquet").replace(root / "train.parquet")
    second = read_parquet_rows(root / "train.parquet", [5])
    np.testing.assert_array_equal(second.images[0], train.images[5])
    assert len(read_parquet_labels(root / "train.parquet")[0]) == 6 and len(first) == 1


def test_subset_errors_name_the_row_in_the_file(tmp_path, make_arrays):
    good = _encode(make_arrays(1).images[0], "PNG")
    table = pa.table({"image": pa.array([good, good, b"\xff\xd8not a jpeg", good], type=pa.binary()),
                      "label": pa.array([0, 1, 2, 3], type=pa.int8())})
    pq.write_table(table.replace_schema_metadata({b"classes": b"a,b,c,d"}), tmp_path / "x.parquet")
    assert len(read_parquet_rows(tmp_path / "x.parquet", [0, 3])) == 2  # the bad row is never decoded
    with pytest.raises(ValueError, match="row 2 could not be decoded"):
        read_parquet_rows(tmp_path / "x.parquet", [1, 2])


def test_labels_out_of_range(tmp_path):
    table = pa.table({"image": pa.array([b"", b""], type=pa.binary()), "label": pa.array([0, 2], type=pa.int8())})
    pq.write_table(table.replace_schema_metadata({b"classes": b"a,b"}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        read_parquet_labels(tmp_path / "x.parquet")


def _encode(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_decoding_mixed_formats():
    ramp = np.linspace(0, 255, 32).astype(np.uint8)
    smooth = np.stack([np.broadcast_to(ramp[:, None], (32, 32)), np.broadcast_to(ramp, (32, 32)),
                       np.full((32, 32), 128, np.uint8)], axis=-1)
    images = np.stack([np.roll(smooth, 3 * k, axis=k % 2) for k in range(6)])
    encoded = [_encode(images[0], "PNG"), *(_encode(x, "JPEG", quality=90) for x in images[1:5]),
               _encode(images[5][:, :, 0], "JPEG")]  # greyscale JPEG -> RGB
    decoded = decode_images(encoded)
    assert decoded.shape == (6, 32, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[0], images[0])
    for i in range(1, 5):  # JPEG is lossy: close to the original
        assert np.abs(decoded[i].astype(int) - images[i]).mean() < 8
    np.testing.assert_array_equal(decoded[5][..., 0], decoded[5][..., 2])  # grey replicated to RGB


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_bad_images_raise(fmt):
    with pytest.raises(ValueError, match="32x32"):
        decode_images([_encode(np.zeros((16, 32, 3), np.uint8), fmt)])


def test_corrupt_bytes_raise(make_arrays):
    good = _encode(make_arrays(1).images[0], "PNG")
    with pytest.raises(ValueError, match="row 1 could not be decoded"):
        decode_images([good, b"\xff\xd8not a jpeg"])
