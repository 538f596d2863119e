"""What the jobs rely on of Ray's internals, checked so that a Ray release that changes them fails here
(checked on Ray 2.60.0): a worker's exception as the Train controller wraps it, and the layout of Ray
Train's record of a run's checkpoints that the tests write (the jobs read it through
``ray.train.Result.from_path`` only)."""
from __future__ import annotations

import json

import pytest

from jobs.errors import NonFiniteLossError
from jobs.training.checkpoints import latest_registered_checkpoint
from jobs.training.faults import fatal_error
from tests.jobs.ray_layout import SNAPSHOT, snapshot, write_snapshot


def test_a_workers_own_error_is_found_inside_rays_wrappers():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import ControllerError

    error = NonFiniteLossError("the loss became nan at epoch 2 step 5")
    wrapped = UserExceptionWithTraceback(error, "Traceback (most recent call last): ...")
    assert fatal_error(wrapped) is error
    assert fatal_error(ControllerError(wrapped)) is error
    assert fatal_error(ControllerError(RuntimeError("placement group timed out"))) is None


def test_the_latest_registered_checkpoint_of_a_run_folder(tmp_path):
    """Through ``ray.train.Result.from_path``: none for a new run or one without Ray's record; the latest
    reported one otherwise; an unreadable record is refused."""
    run = tmp_path / "run"
    assert latest_registered_checkpoint(str(tmp_path), "run") is None
    run.mkdir()
    assert latest_registered_checkpoint(str(tmp_path), "run") is None
    for name in ("checkpoint_epoch_0001", "checkpoint_epoch_0002"):
        (run / name).mkdir()
    write_snapshot(run, ["checkpoint_epoch_0001", "checkpoint_epoch_0002"])
    assert latest_registered_checkpoint(str(tmp_path), "run") == f"{tmp_path}/run/checkpoint_epoch_0002"
    (run / SNAPSHOT).write_text("{not json")
    with pytest.raises(Exception, match="record of the run's checkpoints cannot be read"):
        latest_registered_checkpoint(str(tmp_path), "run")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_record_the_tests_write_has_the_layout_of_a_real_runs(quick_run):
    """Ray Train's own record of the quick run: the keys of the record and of its checkpoint entries are
    the ones tests/jobs/ray_layout.py writes, and it names the run's latest checkpoint."""
    real = json.loads((quick_run.storage / quick_run.run_name / SNAPSHOT).read_text())
    written = snapshot(["checkpoint_epoch_0001"])
    assert real["ray_version"] == written["ray_version"]
    assert set(real) == set(written)
    assert set(real["latest_checkpoint_result"]) == set(written["latest_checkpoint_result"])
    latest = latest_registered_checkpoint(str(quick_run.storage), quick_run.run_name)
    assert latest == str(quick_run.checkpoints[-1])
