"""Layout detection and the errors for missing data or bad arguments."""

import pytest

from stable_snn.data import DatasetNotFoundError, load_arrays
from stable_snn.data import parquet as parquet_module
from stable_snn.data.formats import resolve_format


def test_auto_detects_parquet(make_parquet_root):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    assert resolve_format("cifar10", root, "train") == "parquet"
    assert resolve_format("cifar10", root, "test", download=True) == "parquet"


def test_auto_detects_torchvision(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-100-python").mkdir()
    assert resolve_format("cifar10", tmp_path, "train") == "torchvision"
    assert resolve_format("cifar100", tmp_path, "test") == "torchvision"


def test_auto_with_download_chooses_torchvision(tmp_path):
    assert resolve_format("cifar10", tmp_path / "not-yet", "train", download=True) == "torchvision"


@pytest.mark.parametrize("make_root", ["missing", "empty", "file"])
def test_no_data_raises_dataset_not_found(tmp_path, make_root):
    root = tmp_path / "data"
    if make_root == "empty":
        root.mkdir()
        (root / "readme.txt").write_text("nothing here")
    elif make_root == "file":
        root.write_text("not a folder")
    with pytest.raises(DatasetNotFoundError) as info:
        load_arrays("cifar10", root, "train")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(root) in message
    assert "train.parquet" in message and "cifar-10-batches-py" in message  # the layouts looked for
    assert "To get CIFAR-10" in message and "data.download=true" in message and "data.root" in message


def test_explicit_format_with_missing_files(tmp_path, make_parquet_root):
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load_arrays("cifar100", tmp_path, "train", format="torchvision")
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    (root / "test.parquet").unlink()
    with pytest.raises(DatasetNotFoundError, match="test.parquet"):
        load_arrays("cifar10", root, "test", format="parquet")


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="mnist"), "cifar10, cifar100"),
    (dict(split="val"), "train, test"),
    (dict(format="hdf5"), "auto, parquet, torchvision"),
    (dict(format="parquet", download=True), "download=True only applies"),
])
def test_bad_arguments_raise_value_error_before_reading(tmp_path, monkeypatch, make_parquet_root, kwargs, message):
    root, _, _ = make_parquet_root(n_train=4, n_test=2)
    monkeypatch.setattr(parquet_module, "_decode_cached", lambda *a: pytest.fail("decoded despite a bad argument"))
    arguments = dict(dataset="cifar10", root=root, split="train") | kwargs
    with pytest.raises(ValueError, match=message):
        load_arrays(arguments.pop("dataset"), arguments.pop("root"), arguments.pop("split"), **arguments)


def test_unknown_dataset_checked_before_root(tmp_path):
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        load_arrays("imagenet", tmp_path / "missing", "train")
