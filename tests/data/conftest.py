"""Fixtures of the data tests: small CIFAR folders written on the fly, and the shared Parquet copy."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torchvision
from PIL import Image

from stable_snn.data import ImageArrays

def random_arrays(n: int, num_classes: int, seed: int) -> ImageArrays:
    """``n`` random uint8 images ``[n, 32, 32, 3]`` with labels cycling through the classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(n) % num_classes).astype(np.int64)
    return ImageArrays(images, labels, tuple(f"class{k}" for k in range(num_classes)))


@pytest.fixture
def make_arrays():
    """Factory: ``make_arrays(n, num_classes=10, seed=0) -> ImageArrays`` of random images."""
    def make(n: int, num_classes: int = 10, seed: int = 0) -> ImageArrays:
        return random_arrays(n, num_classes, seed)
    return make


def _write_parquet(path: Path, arrays: ImageArrays, classes_value: bytes | None) -> None:
    encoded = []
    for image in arrays.images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")  # lossless, so pixels compare exactly
        encoded.append(buffer.getvalue())
    table = pa.table({
        "image": pa.array(encoded, type=pa.binary()),
        "label": pa.array(arrays.labels.astype(np.int8), type=pa.int8()),
        "source": pa.array([f"{arrays.classes[y]}/{i}.png" for i, y in enumerate(arrays.labels)]),
    })
    if classes_value is not None:
        table = table.replace_schema_metadata({b"classes": classes_value})
    pq.write_table(table, path)


@pytest.fixture
def make_parquet_root(tmp_path):
    """Factory: write ``train.parquet``/``test.parquet`` of random images (PNG-encoded) into a new folder.

    ``make_parquet_root(n_train=40, n_test=20, num_classes=10, classes_value=None)`` returns
    ``(root, train_arrays, test_arrays)``; ``classes_value`` is the raw ``classes`` metadata value
    (None: the names comma-separated; ``b""``: leave the key out).
    """
    counter = iter(range(1_000_000))

    def make(n_train: int = 40, n_test: int = 20, num_classes: int = 10, classes_value=None):
        root = tmp_path / f"parquet{next(counter)}"
        root.mkdir()
        train, test = random_arrays(n_train, num_classes, 1), random_arrays(n_test, num_classes, 2)
        if classes_value is None:
            classes_value = ",".join(train.classes).encode()
        for name, arrays in (("train", train), ("test", test)):
            _write_parquet(root / f"{name}.parquet", arrays, classes_value or None)
        return root, train, test
    return make


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _as_rows(arrays: ImageArrays) -> np.ndarray:
    """uint8 [N, 32, 32, 3] -> the release's row layout, uint8 [N, 3072] (R plane, G plane, B plane)."""
    return np.ascontiguousarray(arrays.images.transpose(0, 3, 1, 2).reshape(len(arrays), 3072))


@pytest.fixture
def make_torchvision_root(tmp_path, monkeypatch):
    """Factory: write a small archive in the release layout torchvision reads.

    ``make_torchvision_root(dataset, official_md5=False)`` writes ``cifar-10-batches-py`` (five
    ``data_batch_*`` of 4 images, ``test_batch`` of 6, ``batches.meta``) or ``cifar-100-python``
    (``train`` of 12, ``test`` of 6, ``meta``) and returns ``(root, train_arrays, test_arrays)``.
    torchvision checks each file against the official MD5s; unless ``official_md5`` is true, the
    class's checksum lists are patched (for this test only) to the MD5s of the files written.
    """
    def make(dataset: str, official_md5: bool = False):
        root = tmp_path / f"tv-{dataset}"
        if dataset == "cifar10":
            cls, folder = torchvision.datasets.CIFAR10, root / "cifar-10-batches-py"
            folder.mkdir(parents=True)
            train, test = random_arrays(20, 10, 3), random_arrays(6, 10, 4)
            train_list = []
            for b in range(5):
                part = ImageArrays(train.images[4 * b:4 * b + 4], train.labels[4 * b:4 * b + 4], train.classes)
                name = f"data_batch_{b + 1}"
                _pickle(folder / name, {"data": _as_rows(part), "labels": part.labels.tolist()})
                train_list.append([name, _md5(folder / name)])
            _pickle(folder / "test_batch", {"data": _as_rows(test), "labels": test.labels.tolist()})
            test_list = [["test_batch", _md5(folder / "test_batch")]]
            meta = {"filename": "batches.meta", "key": "label_names"}
            _pickle(folder / "batches.meta", {"label_names": list(train.classes)})
        else:
            cls, folder = torchvision.datasets.CIFAR100, root / "cifar-100-python"
            folder.mkdir(parents=True)
            train, test = random_arrays(12, 100, 5), random_arrays(6, 100, 6)
            for name, arrays in (("train", train), ("test", test)):
                _pickle(folder / name, {"data": _as_rows(arrays), "fine_labels": arrays.labels.tolist(),
                                        "coarse_labels": (arrays.labels // 5).tolist()})
            train_list, test_list = [["train", _md5(folder / "train")]], [["test", _md5(folder / "test")]]
            meta = {"filename": "meta", "key": "fine_label_names"}
            _pickle(folder / "meta", {"fine_label_names": list(train.classes)})
        if not official_md5:
            monkeypatch.setattr(cls, "train_list", train_list)
            monkeypatch.setattr(cls, "test_list", test_list)
            monkeypatch.setattr(cls, "meta", {**meta, "md5": _md5(folder / meta["filename"])})
        return root, train, test
    return make


@pytest.fixture(scope="session")
def shared_cifar10_root() -> Path:
    """The offline CIFAR-10 Parquet copy: ``$STABLE_SNN_CIFAR10_PARQUET``, else ``../shared/data/cifar10``
    beside the repository. Skips the test when it is absent."""
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10"
    root = Path(os.environ.get("STABLE_SNN_CIFAR10_PARQUET", default))
    if not (root / "train.parquet").is_file() or not (root / "test.parquet").is_file():
        pytest.skip(f"offline CIFAR-10 Parquet copy not found at {root} "
                    f"(set STABLE_SNN_CIFAR10_PARQUET to a folder with train.parquet and test.parquet)")
    return root
