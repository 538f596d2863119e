"""jobs.config: the run section beside the library's sections, and configs written by older versions."""
from __future__ import annotations

import pytest

from jobs.config import JobConfig, RunConfig, job_config_from_dict, load_job_config, read_stored_config
from stable_snn.config import ConfigError, TrainConfig, apply_overrides, dump_config
from tests.jobs.helpers import QUICK


@pytest.mark.parametrize("name, value, allowed", [
    ("seed", -1, ">= 0"), ("num_workers", 0, ">= 1"), ("cpus_per_worker", 0.0, "> 0"),
    ("placement_strategy", "RANDOM", "one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"),
    ("validation_cpus", -0.5, ">= 0"), ("validation_gpus", -1.0, ">= 0"), ("keep_checkpoints", 0, ">= 1"),
    ("name", "a/b", "a non-empty string without '/'"),
])
def test_run_fields_are_validated(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        RunConfig(**{name: value})
    assert f"run.{name}={value!r} is invalid" in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("workers,subset", [(4, 255), (2, 127)])
def test_every_worker_needs_a_full_batch_of_training_images(workers, subset):
    """optim.batch_size is one worker's batch: W workers need batch_size x W training images per step."""
    with pytest.raises(ConfigError) as err:
        job_config_from_dict({"data": {"train_subset": subset}, "optim": {"batch_size": 64}, "run": {"num_workers": workers}})
    assert f"data.train_subset={subset} is invalid: allowed >= optim.batch_size x run.num_workers ({64 * workers})" in str(err.value)
    assert job_config_from_dict({"data": {"train_subset": 64 * workers}, "run": {"num_workers": workers}})


def test_derived_params_state_the_global_batch_and_the_scaled_lr():
    cfg = job_config_from_dict({"optim": {"batch_size": 64, "lr": 0.1}, "run": {"num_workers": 4}})
    assert cfg.derived_params() == {"derived.weight_decay": 5e-4, "derived.global_batch_size": 256,
                                    "derived.lr": pytest.approx(0.4)}
    unscaled = job_config_from_dict({"optim": {"lr_scaling": "none"}, "run": {"num_workers": 4}})
    assert unscaled.derived_params()["derived.lr"] == pytest.approx(0.1)


def test_a_job_config_is_the_library_config_plus_run():
    cfg = load_job_config(QUICK, ["run.name=x", "objective.rho=0.5"])
    assert isinstance(cfg, TrainConfig) and (cfg.run.name, cfg.objective.rho) == ("x", 0.5)
    assert list(cfg.to_dict()) == ["model", "data", "objective", "optim", "validation", "run"]
    assert apply_overrides(cfg, ["run.seed=4"]).run.seed == 4 and isinstance(apply_overrides(cfg, []), JobConfig)
    assert cfg.registered_model_name == "stable-snn-cifar10-vgg5"
    assert cfg.flat()["run.validation_cpus"] == 0.5 and "validation.cpus" not in cfg.flat()


def test_storage_path_comes_from_the_environment_when_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("STABLE_SNN_STORAGE_PATH", str(tmp_path / "store"))
    assert RunConfig().resolved_storage() == str(tmp_path / "store")
    assert RunConfig(storage_path="s3://bucket/runs").resolved_storage() == "s3://bucket/runs"


def test_a_stored_config_round_trips(tmp_path):
    cfg = load_job_config(QUICK)
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    assert read_stored_config(tmp_path / "config.yaml") == cfg
