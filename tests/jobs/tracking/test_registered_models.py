"""jobs.tracking.models: a logged model's artifacts are checked and rebuilt through the library."""
from __future__ import annotations

import pytest
import torch

from jobs.checksums import CHECKSUM_FILE
from jobs.config import job_config_from_dict
from jobs.errors import CheckpointError
from jobs.tracking.models import CONFIG, WEIGHTS, build_from_artifacts, write_model_artifacts
from stable_snn.config import build_network

TINY = {"model": {"arch": "vgg5", "timesteps": 2, "width": 0.25, "classifier_width": 32}}


@pytest.fixture
def artifacts(tmp_path):
    cfg = job_config_from_dict(TINY | {"run": {"validation_cpus": 0.5}})
    torch.manual_seed(0)
    model = build_network(cfg)
    write_model_artifacts(tmp_path, model, cfg)
    return tmp_path, model, cfg


def test_artifacts_rebuild_the_same_network(artifacts):
    folder, model, cfg = artifacts
    loaded, loaded_cfg = build_from_artifacts(folder / WEIGHTS, folder / CONFIG)
    assert loaded_cfg == cfg and not loaded.training
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("damage", ["weights tampered", "config edited", "checksums removed"])
def test_damaged_artifacts_are_refused_naming_the_file(artifacts, damage):
    folder, _, _ = artifacts
    if damage == "weights tampered":
        data = bytearray((folder / WEIGHTS).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / WEIGHTS).write_bytes(bytes(data))
    elif damage == "config edited":
        (folder / CONFIG).write_text((folder / CONFIG).read_text().replace("timesteps: 2", "timesteps: 3"))
    else:
        (folder / CHECKSUM_FILE).unlink()
    with pytest.raises(CheckpointError) as e:
        build_from_artifacts(folder / WEIGHTS, folder / CONFIG)
    assert f"model artifacts {folder}" in str(e.value)
    if damage != "checksums removed":
        name = WEIGHTS if damage == "weights tampered" else CONFIG
        assert f"file {name} does not match its recorded SHA-256" in str(e.value)
