"""The data a training run reads, as MLflow dataset inputs: name, split, size, seed and a digest of the
images it draws (from the labels alone: the same indices the training workers' splits hold)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from jobs.config import job_config_from_dict
from jobs.tracking.datasets import dataset_inputs
from stable_snn.data import build_splits
from stable_snn.data.formats import TORCHVISION_FOLDERS
from stable_snn.data.splits import train_val_indices


def config(cifar10, seed: int = 3, train_subset: int = 64):
    return job_config_from_dict({
        "data": {"root": str(cifar10.root), "download": cifar10.download, "train_subset": train_subset, "val_size": 32},
        "validation": {"subset": 16}, "run": {"seed": seed},
    })


def source_files(cifar10):
    parquet = cifar10.root / "train.parquet"
    if parquet.is_file():
        return [parquet]
    return sorted(p for p in (cifar10.root / TORCHVISION_FOLDERS["cifar10"]).rglob("*") if p.is_file())


def test_the_indices_from_the_labels_are_the_ones_build_splits_draws(cifar10):
    splits = build_splits("cifar10", cifar10.root, download=cifar10.download, val_size=32, train_subset=64,
                          test_subset=1, seed=3)
    train, val = train_val_indices("cifar10", cifar10.root, download=cifar10.download, val_size=32, train_subset=64,
                                   seed=3)
    assert np.array_equal(train, splits.train.indices) and np.array_equal(val, splits.val.indices)


def test_training_and_validation_splits_are_logged_with_profile_and_digest(cifar10):
    inputs = dataset_inputs(config(cifar10))
    splits = build_splits("cifar10", cifar10.root, download=cifar10.download, val_size=32, train_subset=64,
                          test_subset=1, seed=3)
    files = "".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in source_files(cifar10))
    source = hashlib.sha256(files.encode()).hexdigest()
    expected = {"training": ("cifar10-train", splits.train.indices), "validation": ("cifar10-val", splits.val.indices)}
    assert sorted(i.tags[0].value for i in inputs) == ["training", "validation"]
    for item in inputs:
        assert item.tags[0].key == "mlflow.data.context"
        name, indices = expected[item.tags[0].value]
        ds = item.dataset
        assert ds.name == name and ds.source_type == "local"
        parquet = cifar10.root / "train.parquet"
        expected_file = parquet if parquet.is_file() else cifar10.root / TORCHVISION_FOLDERS["cifar10"]
        assert Path(json.loads(ds.source)["uri"]).resolve() == expected_file.resolve()  # the data folder may be a link
        assert ds.digest == hashlib.sha256(source.encode() + indices.astype(np.int64).tobytes()).hexdigest()[:16]
        profile = json.loads(ds.profile)
        assert profile["images"] == len(indices) and profile["seed"] == 3 and profile["val_size"] == 32
        assert profile["train_subset"] == 64 and profile["split"] == name.split("-")[1]
    assert json.loads(inputs[1].dataset.profile)["validation_subset"] == 16


def test_digests_follow_the_draw(cifar10):
    """Same config, same digests; another seed or size draws other images, hence other digests."""
    digests = lambda cfg: [i.dataset.digest for i in dataset_inputs(cfg)]  # noqa: E731
    assert digests(config(cifar10)) == digests(config(cifar10))
    assert set(digests(config(cifar10))).isdisjoint(digests(config(cifar10, seed=4)))
    assert digests(config(cifar10))[0] != digests(config(cifar10, train_subset=65))[0]
