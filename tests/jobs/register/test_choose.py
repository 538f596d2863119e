"""jobs.register: which checkpoints of a run can be registered (checksums verified, damaged ones skipped
or, when named, refused)."""
from __future__ import annotations

import pytest
import torch

from jobs.config import load_job_config
from jobs.errors import CheckpointError, NothingToRegisterError
from jobs.register.choose import valid_checkpoints
from jobs.training.checkpoints import STATE_FILE, save_checkpoint
from tests.jobs.helpers import QUICK


@pytest.fixture
def run(tmp_path):
    """A run named ``r`` with the checkpoints of epochs 1-3 in its storage folder, epoch 2's tampered with."""
    cfg = load_job_config(QUICK, [f"run.storage_path={tmp_path}", "run.name=r"])
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path / "r" / f"checkpoint_epoch_{epoch:04d}", {"model": {"w": torch.ones(3) * epoch},
                                                                            "epoch": epoch}, cfg)
    state = tmp_path / "r" / "checkpoint_epoch_0002" / STATE_FILE
    state.write_bytes(state.read_bytes()[:-8])
    return cfg


def test_damaged_checkpoints_are_skipped(run, tmp_path, caplog):
    assert valid_checkpoints(run, None) == {e: str(tmp_path / "r" / f"checkpoint_epoch_{e:04d}") for e in (1, 3)}
    assert "skipping epoch 2" in caplog.text and "does not match its recorded SHA-256" in caplog.text


def test_a_named_epoch_is_refused_when_damaged_or_absent(run):
    assert list(valid_checkpoints(run, 3)) == [3]
    with pytest.raises(CheckpointError, match=f"file {STATE_FILE} does not match"):
        valid_checkpoints(run, 2)
    with pytest.raises(NothingToRegisterError, match="run 'r' has no checkpoint of epoch 7; it has epochs 1, 2, 3"):
        valid_checkpoints(run, 7)


def test_a_run_without_checkpoints_has_nothing_to_register(tmp_path):
    cfg = load_job_config(QUICK, [f"run.storage_path={tmp_path}", "run.name=empty"])
    with pytest.raises(NothingToRegisterError, match=f"run 'empty' has no checkpoint_epoch_\\* folder in {tmp_path}"):
        valid_checkpoints(cfg, None)
