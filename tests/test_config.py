"""Typed configuration: every validator names the field, the value and what is allowed."""
from __future__ import annotations

import re

import pytest
import yaml

from stable_snn.config import (
    ConfigError, DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig, ValidationConfig,
    apply_overrides, config_from_dict, dump_config, load_config,
)

# (section, field, bad value, a fragment of the allowed range as the message states it)
BAD_VALUES = [
    ("objective", "rho", -1.0, ">= 0"),
    ("objective", "rho", -0.5, ">= 0"),
    ("objective", "beta", -1e-3, ">= 0"),
    ("objective", "chi", -0.1, "[0.0, 1.0]"),
    ("objective", "chi", 1.5, "[0.0, 1.0]"),
    ("objective", "gaussian_sigma", 0.0, "(0.0, 1.0]"),
    ("objective", "gaussian_sigma", 1.5, "(0.0, 1.0]"),
    ("objective", "rfgsm_step", 0.0, "(0.0, 1.0]"),
    ("objective", "rfgsm_step", 2.0, "(0.0, 1.0]"),
    ("objective", "reg_row_fraction", 0.0, "(0.0, 1.0]"),
    ("objective", "reg_row_fraction", 1.2, "(0.0, 1.0]"),
    ("validation", "eps", 0.0, "(0.0, 1.0]"),
    ("validation", "eps", 1.1, "(0.0, 1.0]"),
    ("validation", "pgd_step_size", -0.01, "(0.0, 1.0]"),
    ("model", "timesteps", 0, ">= 1"),
    ("model", "timesteps", -3, ">= 1"),
    ("model", "timesteps", 2.5, "an integer"),
    ("model", "timesteps", True, "an integer"),
    ("model", "leak", 1.5, "[0.0, 1.0]"),
    ("model", "threshold", 0.0, "> 0"),
    ("model", "arch", "resnet50", "vgg11, vgg5, wrn16"),
    ("model", "neuron", "izhikevich", "lif, dlif"),
    ("model", "gain_form", "output", "leak, input"),
    ("data", "dataset", "mnist", "cifar10, cifar100"),
    ("data", "format", "hdf5", "auto, parquet, torchvision"),
    ("objective", "mode", "trades", "natural, gaussian, at, at_reg"),
    ("objective", "regularizer", "kl", "ms_mppd, mppd_tv_l1, tasad, std"),
    ("objective", "mppd_leak", "paper", "lambda, dlif"),
    ("model", "init", "xavier", "authors, pytorch"),
    ("optim", "lr_scaling", "sqrt", "linear, none"),
    ("objective", "reduction", "max", "mean, sum"),
    ("optim", "precision", "fp8", "fp32, bf16, fp16"),
    ("optim", "attack_precision", "fp16", "fp32, bf16"),
    ("optim", "lr", 0.0, "> 0"),
    ("optim", "momentum", 1.0, "[0.0, 1.0)"),
    ("optim", "batch_size", 0, ">= 1"),
]
SECTIONS = {"model": ModelConfig, "data": DataConfig, "objective": ObjectiveConfig, "optim": OptimConfig,
            "validation": ValidationConfig}


def _check_message(err: ConfigError, field: str, value, allowed: str) -> None:
    msg = str(err)
    assert field in msg
    assert repr(value) in msg
    assert allowed in msg


@pytest.mark.parametrize("section,name,value,allowed", BAD_VALUES)
def test_validators_name_field_value_and_range(section, name, value, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {name: value}})
    _check_message(err.value, f"{section}.{name}", value, allowed)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("section,name,value,allowed", [b for b in BAD_VALUES if b[0] in SECTIONS][:12])
def test_dataclasses_validate_on_construction(section, name, value, allowed):
    with pytest.raises(ConfigError) as err:
        SECTIONS[section](**{name: value})
    _check_message(err.value, f"{section}.{name}", value, allowed)


@pytest.mark.parametrize("section,name,value,allowed", BAD_VALUES[:6] + BAD_VALUES[14:16])
def test_overrides_are_validated(section, name, value, allowed):
    with pytest.raises(ConfigError) as err:
        apply_overrides(TrainConfig(), [f"{section}.{name}={value}"])
    _check_message(err.value, f"{section}.{name}", value, allowed)


@pytest.mark.parametrize("data,unknown", [
    ({"modle": {"arch": "vgg5"}}, "modle"),
    ({"model": {"archh": "vgg5"}}, "model.archh"),
    ({"objective": {"rho": 1.0, "lambda": 0.5}}, "objective.lambda"),
])
def test_unknown_keys_rejected(data, unknown, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape(unknown)) as err:
        load_config(path)
    assert "allowed" in str(err.value)


def test_load_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"arch": "vgg5", "neuron": "dlif", "timesteps": 4, "width": 0.25, "classifier_width": 64},
        "objective": {"mode": "at", "rho": 1},  # an int for a float field is accepted
        "data": {"train_subset": 2000},
    }))
    cfg = load_config(path)
    assert cfg.model.arch == "vgg5" and cfg.model.timesteps == 4
    assert cfg.objective.rho == 1.0 and isinstance(cfg.objective.rho, float)
    assert cfg.data.train_subset == 2000
    assert cfg.optim.lr == 0.1  # untouched defaults stay the paper's
    cfg2 = load_config(path, ["objective.rho=0.5", "model.neuron=lif", "data.train_subset=null", "optim.epochs=3"])
    assert cfg2.objective.rho == 0.5 and cfg2.model.neuron == "lif"
    assert cfg2.data.train_subset is None and cfg2.optim.epochs == 3
    assert cfg2.model.width == 0.25  # the rest of the preset is kept
    assert cfg.model.build_kwargs()["classifier_width"] == 64


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["objective.rho", "rho=1", "a.b.c=1"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError, match="section.field"):
        apply_overrides(TrainConfig(), [override])


def test_type_errors_in_yaml():
    with pytest.raises(ConfigError, match=r"data\.augment"):
        config_from_dict({"data": {"augment": "yes"}})
    with pytest.raises(ConfigError, match=r"model\.arch"):
        config_from_dict({"model": {"arch": 11}})
    with pytest.raises(ConfigError, match=r"model\.timesteps=None"):
        config_from_dict({"model": {"timesteps": None}})


def test_dump_round_trip_and_flat(tmp_path):
    cfg = apply_overrides(TrainConfig(), ["model.arch=wrn16", "objective.mode=at_reg", "objective.beta=4e-3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    flat = cfg.flat()
    assert flat["model.arch"] == "wrn16" and flat["objective.beta"] == 4e-3
    assert "classifier_width" not in cfg.model.build_kwargs()


def test_weight_decay_default_depends_on_mode():
    assert TrainConfig().weight_decay == 5e-4
    assert config_from_dict({"objective": {"mode": "at_reg"}}).weight_decay == 0.0
    assert config_from_dict({"objective": {"mode": "at_reg"}, "optim": {"weight_decay": 1e-4}}).weight_decay == 1e-4


def test_defaults_are_the_paper_protocol():
    cfg = TrainConfig()
    assert (cfg.model.arch, cfg.model.neuron, cfg.model.timesteps, cfg.model.leak) == ("vgg11", "dlif", 8, 0.99)
    assert (cfg.objective.chi, cfg.objective.rho, cfg.objective.reduction) == (0.5, 1.0, "mean")
    assert cfg.objective.gaussian_sigma == pytest.approx(8 / 255)
    assert cfg.objective.rfgsm_step == pytest.approx(4 / 255)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.batch_size, cfg.optim.epochs) == (0.1, 0.9, 64, 100)
    # the authors' code where it changes what is learnt: their MPPD recursion and their initialisation
    assert (cfg.objective.mppd_leak, cfg.model.init) == ("lambda", "authors")
    assert cfg.validation.subset == 2500  # a standard error of at most one point (0.5 / sqrt(2500))


def test_lr_follows_the_number_of_workers_linearly_or_not_at_all():
    """optim.batch_size is one worker's (one BatchNorm pass's) batch: W workers see W times the images
    per step, and the linear rule scales the learning rate with them."""
    assert OptimConfig(lr=0.1).scaled_lr(4) == pytest.approx(0.4)
    assert OptimConfig(lr=0.1).scaled_lr(1) == pytest.approx(0.1)
    assert OptimConfig(lr=0.1, lr_scaling="none").scaled_lr(4) == pytest.approx(0.1)


@pytest.mark.parametrize("text,value", [("4e-3", 4e-3), ("5E-4", 5e-4), ("-1e0", -1.0), (".5e1", 5.0)])
def test_scientific_notation_without_dot(text, value, tmp_path):
    """YAML 1.1 reads ``4e-3`` as a string; float fields accept it (CLI overrides and presets)."""
    if value < 0:
        with pytest.raises(ConfigError, match=r"objective\.beta=-1\.0"):
            apply_overrides(TrainConfig(), [f"objective.beta={text}"])
        return
    assert apply_overrides(TrainConfig(), [f"objective.beta={text}"]).objective.beta == value
    path = tmp_path / "p.yaml"
    path.write_text(f"optim:\n  weight_decay: {text}\n")
    assert load_config(path).optim.weight_decay == value
    with pytest.raises(ConfigError, match=r"model\.arch"):
        config_from_dict({"model": {"arch": 5e-3}})
    with pytest.raises(ConfigError, match=r"objective\.rho='nan'"):
        apply_overrides(TrainConfig(), ["objective.rho=nan"])


# -- choices come from the registries that own them ---------------------------------------------


def test_arch_and_neuron_choices_follow_their_registries(monkeypatch):
    from stable_snn.models import list_models, registry
    from stable_snn.neurons import NEURONS, modules

    monkeypatch.setitem(registry._REGISTRY, "tiny-registered", registry._REGISTRY["vgg5"])
    monkeypatch.setitem(modules.NEURONS, "plif", NEURONS["lif"])
    assert ModelConfig(arch="tiny-registered", neuron="plif").arch == "tiny-registered"
    with pytest.raises(ConfigError) as err:
        ModelConfig(arch="resnet50")
    assert "allowed one of " + ", ".join(list_models()) in str(err.value) and "tiny-registered" in str(err.value)


def test_name_lists_are_the_owning_modules_own_not_copies():
    from stable_snn import config as config_module
    from stable_snn import data, models, neurons, perturbation

    assert config_module.DATASETS is data.DATASETS and config_module.FORMATS is data.FORMATS
    assert config_module.GAIN_FORMS is neurons.GAIN_FORMS and config_module.NEURONS is neurons.NEURONS
    assert config_module.REDUCTIONS is perturbation.REDUCTIONS
    assert config_module.MPPD_FORMS is neurons.MPPD_FORMS and config_module.INITS is models.INITS


def test_the_library_config_has_no_run_section():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) run; allowed: model, data, objective, optim, validation"):
        config_from_dict({"run": {"name": "x"}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) validation.cpus"):
        config_from_dict({"validation": {"cpus": 1.0}})


# -- presets that extend a base -----------------------------------------------------------------


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


def test_extends_overrides_the_base_field_by_field(tmp_path):
    _write(tmp_path / "base" / "root.yaml", {"model": {"arch": "vgg5", "timesteps": 4}, "optim": {"epochs": 7}})
    _write(tmp_path / "base" / "mid.yaml", {"extends": "root.yaml", "model": {"timesteps": 2}, "objective": {"rho": 0.5}})
    _write(tmp_path / "leaf.yaml", {"extends": "base/mid.yaml", "objective": {"mode": "gaussian"}})
    cfg = load_config(tmp_path / "leaf.yaml", ["optim.epochs=3"])
    assert (cfg.model.arch, cfg.model.timesteps) == ("vgg5", 2)  # from the root, then the middle file
    assert (cfg.objective.rho, cfg.objective.mode) == (0.5, "gaussian")
    assert cfg.optim.epochs == 3 and cfg.optim.lr == 0.1  # the override wins; untouched defaults stay
    assert "extends" not in dump_config(cfg)


@pytest.mark.parametrize("case, message", [
    ("missing", "config file '.*nope.yaml' does not exist"),
    ("cycle", "extends itself"),
    ("not a path", r"extends=3 in .* is invalid: allowed a path to a YAML file"),
])
def test_bad_extends_is_refused(case, message, tmp_path):
    target = {"missing": "nope.yaml", "cycle": "b.yaml", "not a path": 3}[case]
    _write(tmp_path / "a.yaml", {"extends": target})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.yaml")
