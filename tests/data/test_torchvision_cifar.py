"""The torchvision layout, on small archives written in the release format."""

import numpy as np
import pytest

from stable_snn.data import DatasetNotFoundError, build_splits, load_arrays


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_reads_release_layout(make_torchvision_root, dataset):
    root, train, test = make_torchvision_root(dataset)
    for split, expected in (("train", train), ("test", test)):
        arrays = load_arrays(dataset, root, split)
        assert arrays.images.dtype == np.uint8 and arrays.images.shape == (len(expected), 32, 32, 3)
        assert arrays.labels.dtype == np.int64
        np.testing.assert_array_equal(arrays.images, expected.images)
        np.testing.assert_array_equal(arrays.labels, expected.labels)
        assert arrays.classes == expected.classes


def test_explicit_torchvision_format_and_splits(make_torchvision_root):
    root, train, _ = make_torchvision_root("cifar10")
    splits = build_splits("cifar10", root, format="torchvision", val_size=5, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 6)
    assert splits.num_classes == 10 and splits.classes == train.classes


def test_integrity_check_failure_is_reported(make_torchvision_root):
    root, _, _ = make_torchvision_root("cifar10", official_md5=True)  # our files do not match the real MD5s
    with pytest.raises(DatasetNotFoundError, match="torchvision could not read it") as info:
        load_arrays("cifar10", root, "train")
    assert str(root) in str(info.value)



def test_the_job_processes_load_torchvision_only_to_read_its_layout():
    """torchvision's package import loads its models and ops and, through them, torch's compiler stack
    (about 2.5 s of CPU): the training worker, the validation actor, the drivers and the evaluation
    job read the Parquet copy without it."""
    import subprocess
    import sys

    from tests.jobs.helpers import REPO

    probe = ("import sys, jobs.training.worker, jobs.training.validation, jobs.train.__main__, jobs.tune.__main__, "
             "jobs.evaluate.__main__; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
