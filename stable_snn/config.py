"""Typed, validated configuration of the science of a training run, loadable from YAML.

Sections ``model``, ``data``, ``objective``, ``optim`` and ``validation``: what is trained, on
what, with which loss and how it is checked.  Where a run executes (Ray resources, storage,
tracking) is not here: the job layer adds it as a section of its own (``jobs.config``).

Every field is checked in ``__post_init__``; a bad value raises :class:`ConfigError` naming the
field, the value and what is allowed, before any data or model is built.  Names are checked
against the registries that own them: architectures (:func:`stable_snn.models.list_models`),
neurons and gain forms (:mod:`stable_snn.neurons`), datasets and data layouts
(:mod:`stable_snn.data`), MS-MPPD reductions (:mod:`stable_snn.perturbation`), initialisation
schemes (:mod:`stable_snn.models.init`) and MPPD forms (:mod:`stable_snn.neurons`).

YAML files may start from another one: ``extends: base.yaml`` (a path relative to the file)
takes that file's sections and overrides them field by field.  Overrides use dotted names:
``apply_overrides(cfg, ["objective.rho=0.5"])``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .data import DATASETS, FORMATS, num_classes_of
import torch

from .models import BACKENDS, INITS, SpikingNetwork, build_model, list_models
from .neurons import GAIN_FORMS, MPPD_FORMS, NEURONS
from .perturbation import REDUCTIONS

# The objective (stable_snn.objective) dispatches on these names; they are defined once, here.
MODES = ("natural", "gaussian", "at", "at_reg")  # Eqs. 16-17: no / Gaussian / RFGSM perturbation, + SNN-RAT
REGULARIZERS = ("ms_mppd", "mppd_tv_l1", "tasad", "std")  # Eq. 14, its l1 form (Lai et al. 2026), Eqs. 12, 13
MPPD_REGULARIZERS = ("ms_mppd", "mppd_tv_l1")  # computed from the last layer's input current (no spikes needed)
PRECISIONS = ("fp32", "bf16", "fp16")  # autocast precision of the training step (fp16 with loss scaling)
ATTACK_PRECISIONS = ("fp32", "bf16")  # the training RFGSM's input gradient (fp16 could underflow)
LR_SCALINGS = ("linear", "none")  # how optim.lr follows the number of data-parallel workers
EXTENDS = "extends"  # the YAML key naming the file a preset starts from

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


def invalid(field_name: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` naming the field, the value and what is allowed."""
    raise ConfigError(f"{field_name}={value!r} is invalid: allowed {allowed}")


def choice(name: str, value: Any, allowed) -> None:
    """Refuse ``value`` unless it is one of ``allowed`` (any iterable of names)."""
    allowed = tuple(allowed)
    if value not in allowed:
        invalid(name, value, "one of " + ", ".join(map(str, allowed)))


def number(name: str, value: Any, lo=None, hi=None, lo_open=False, hi_open=False, integer=False) -> None:
    """Refuse ``value`` unless it is a finite number (an integer with ``integer``) within the bounds."""
    kind = int if integer else (int, float)
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kind) or (not integer and not math.isfinite(value)):
        invalid(name, value, ("an integer" if integer else "a finite number") + _describe(lo, hi, lo_open, hi_open))
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    ):
        invalid(name, value, what + _describe(lo, hi, lo_open, hi_open))


def _describe(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


@dataclass
class ModelConfig:
    """The spiking network (PROTOCOL.md: lam = 0.99, theta = 1, omega = 1, T = 8)."""

    arch: str = "vgg11"
    neuron: str = "dlif"
    gain_form: str = "leak"  # "leak": paper's text; "input": authors' code
    timesteps: int = 8
    leak: float = 0.99
    threshold: float = 1.0
    surrogate_width: float = 1.0
    width: float = 1.0  # multiplier of every conv width
    classifier_width: int = 4096  # VGG hidden size
    backend: str = "eager"  # how the network runs: reference, eager or compiled (stable_snn.models.BACKENDS)
    init: str = "authors"  # weight initialisation: the authors' (Kaiming fan_out, biased VGG convs) or PyTorch's

    def __post_init__(self) -> None:
        choice("model.arch", self.arch, list_models())
        choice("model.backend", self.backend, BACKENDS)
        choice("model.init", self.init, INITS)
        choice("model.neuron", self.neuron, NEURONS)
        choice("model.gain_form", self.gain_form, GAIN_FORMS)
        number("model.timesteps", self.timesteps, lo=1, integer=True)
        number("model.leak", self.leak, 0.0, 1.0)
        number("model.threshold", self.threshold, lo=0.0, lo_open=True)
        number("model.surrogate_width", self.surrogate_width, lo=0.0, lo_open=True)
        number("model.width", self.width, lo=0.0, lo_open=True)
        number("model.classifier_width", self.classifier_width, lo=1, integer=True)

    def build_kwargs(self) -> dict:
        """Keyword arguments of :func:`stable_snn.models.build_model` (without num_classes)."""
        kw = dict(
            timesteps=self.timesteps, neuron=self.neuron, width=self.width, leak=self.leak,
            threshold=self.threshold, surrogate_width=self.surrogate_width, gain_form=self.gain_form,
            backend=self.backend, init=self.init,
        )
        if self.arch != "wrn16":
            kw["classifier_width"] = self.classifier_width
        return kw


@dataclass
class DataConfig:
    """Dataset, its location and the splits. ``root`` defaults to $STABLE_SNN_DATA_ROOT or ./data."""

    dataset: str = "cifar10"
    root: str | None = None
    format: str = "auto"
    download: bool = False
    val_size: int = 5000
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = True
    cutout: int = 16
    loader_workers: int = 2

    def __post_init__(self) -> None:
        choice("data.dataset", self.dataset, DATASETS)
        choice("data.format", self.format, FORMATS)
        number("data.val_size", self.val_size, lo=1, integer=True)
        if self.train_subset is not None:
            number("data.train_subset", self.train_subset, lo=1, integer=True)
        if self.test_subset is not None:
            number("data.test_subset", self.test_subset, lo=1, integer=True)
        number("data.cutout", self.cutout, 0, 32, integer=True)
        number("data.loader_workers", self.loader_workers, lo=0, integer=True)

    def resolved_root(self) -> Path:
        root = self.root or os.environ.get("STABLE_SNN_DATA_ROOT") or "data"
        return Path(root).expanduser().resolve()


@dataclass
class ObjectiveConfig:
    """Eqs. 14, 16, 17 and the perturbation (PROTOCOL.md)."""

    mode: str = "at"
    rho: float = 1.0
    chi: float = 0.5
    regularizer: str = "ms_mppd"
    reduction: str = "mean"
    mppd_leak: str = "lambda"  # "lambda": the authors' MPPD (lam, pre-gain current); "dlif": the DLIF dynamics, gains detached
    beta: float = 5e-4  # SNN-RAT strength, used in mode at_reg
    gaussian_sigma: float = 8 / 255
    rfgsm_step: float = 4 / 255
    rfgsm_init_std: float = 0.001
    reg_row_fraction: float = 0.3  # rows of large Linear layers retracted per step
    reg_row_min_outputs: int = 200

    def __post_init__(self) -> None:
        choice("objective.mode", self.mode, MODES)
        number("objective.rho", self.rho, lo=0.0)
        number("objective.chi", self.chi, 0.0, 1.0)
        choice("objective.regularizer", self.regularizer, REGULARIZERS)
        choice("objective.reduction", self.reduction, REDUCTIONS)
        choice("objective.mppd_leak", self.mppd_leak, MPPD_FORMS)
        number("objective.beta", self.beta, lo=0.0)
        number("objective.gaussian_sigma", self.gaussian_sigma, 0.0, 1.0, lo_open=True)
        number("objective.rfgsm_step", self.rfgsm_step, 0.0, 1.0, lo_open=True)
        number("objective.rfgsm_init_std", self.rfgsm_init_std, lo=0.0)
        number("objective.reg_row_fraction", self.reg_row_fraction, 0.0, 1.0, lo_open=True)
        number("objective.reg_row_min_outputs", self.reg_row_min_outputs, lo=1, integer=True)


@dataclass
class OptimConfig:
    """SGD with cosine decay (PROTOCOL.md). ``weight_decay`` None means 5e-4, or 0 in at_reg.

    ``batch_size`` is the batch of one worker, i.e. of one BatchNorm pass (the paper's 64 on one
    GPU), whatever the number of data-parallel workers W; the global batch is ``batch_size * W``.
    ``lr`` is the learning rate of one worker; with ``lr_scaling: linear`` the run uses ``lr * W``
    (the linear scaling rule for a W-times larger global batch), with ``none`` it uses ``lr``.
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None
    precision: str = "fp32"
    lr_scaling: str = "linear"
    attack_precision: str = "fp32"  # the training RFGSM's input gradient: the attack contract's fp32

    def __post_init__(self) -> None:
        number("optim.epochs", self.epochs, lo=1, integer=True)
        number("optim.batch_size", self.batch_size, lo=1, integer=True)
        number("optim.lr", self.lr, lo=0.0, lo_open=True)
        number("optim.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        if self.weight_decay is not None:
            number("optim.weight_decay", self.weight_decay, lo=0.0)
        choice("optim.precision", self.precision, PRECISIONS)
        choice("optim.lr_scaling", self.lr_scaling, LR_SCALINGS)
        choice("optim.attack_precision", self.attack_precision, ATTACK_PRECISIONS)

    def scaled_lr(self, workers: int) -> float:
        """The learning rate of a run on ``workers`` data-parallel workers (see the class docstring)."""
        return self.lr * workers if self.lr_scaling == "linear" else self.lr


@dataclass
class ValidationConfig:
    """Per-epoch validation: clean accuracy and PGD robust accuracy on a fixed subset.

    The default subset of 2,500 images keeps the standard error of an accuracy at or below one
    point (sqrt(p (1 - p) / n) <= 0.5 / sqrt(2500) = 0.01); smaller subsets are allowed (CPU
    presets) and checkpoint selection accounts for their larger error.
    """

    subset: int = 2500
    eps: float = 8 / 255
    pgd_steps: int = 10
    pgd_step_size: float = 2 / 255
    batch_size: int = 128

    def __post_init__(self) -> None:
        number("validation.subset", self.subset, lo=1, integer=True)
        number("validation.eps", self.eps, 0.0, 1.0, lo_open=True)
        number("validation.pgd_steps", self.pgd_steps, lo=1, integer=True)
        number("validation.pgd_step_size", self.pgd_step_size, 0.0, 1.0, lo_open=True)
        number("validation.batch_size", self.batch_size, lo=1, integer=True)


@dataclass
class TrainConfig:
    """The science of a training run: model, data, objective, optimiser, validation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    @property
    def weight_decay(self) -> float:
        if self.optim.weight_decay is not None:
            return self.optim.weight_decay
        return 0.0 if self.objective.mode == "at_reg" else 5e-4

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model.arch": ..., ...}``: the resolved config as MLflow params."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


def build_network(cfg: TrainConfig, generator: torch.Generator | None = None) -> SpikingNetwork:
    """The network a config describes, its weights (``model.init``) drawn from ``generator`` (None:
    torch's global generator)."""
    return build_model(cfg.model.arch, num_classes=num_classes_of(cfg.data.dataset), generator=generator,
                       **cfg.model.build_kwargs())


# -- construction from dicts / YAML / overrides ----------------------------------------


def _from_dict(cls, data: Any, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(where + k for k in unknown)}; allowed: "
            + ", ".join(where + k for k in fields)
        )
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        hint, where = hints[name], f"{prefix}.{name}" if prefix else name
        kwargs[name] = _from_dict(hint, value, where) if dataclasses.is_dataclass(hint) else _coerce(hint, value, where)
    return cls(**kwargs)


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(hint, value, name: str):
    """Gentle YAML coercion: ints and exponent strings (4e-3) for float fields; the rest is checked by __post_init__."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}=None is invalid: a value is required")
    if float in args and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in args and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 4e-3 (no dot) as a string
    if bool in args and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is invalid: allowed true or false")
    if str in args and not isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is invalid: allowed a string")
    return value


def config_from_dict(data: dict, cls: type[C] = TrainConfig) -> C:
    """A ``cls`` (a config dataclass of sections) from nested dicts, validated field by field."""
    return _from_dict(cls, data, "")


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """The sections of a YAML config with its ``extends:`` chain resolved (the file's fields win)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"{EXTENDS}: {path} extends itself (through {', '.join(map(str, _seen))})")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    base = data.pop(EXTENDS, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{EXTENDS}={base!r} in {path} is invalid: allowed a path to a YAML file")
    return merge_sections(read_yaml(path.parent / base, (*_seen, path.resolve())), data)


def merge_sections(base: dict, top: dict) -> dict:
    """``base`` with ``top`` laid over it, section by section and field by field."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for section, fields in top.items():
        if isinstance(fields, dict) and isinstance(merged.get(section), dict):
            merged[section].update(fields)
        else:
            merged[section] = fields
    return merged


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, cls: type[C] = TrainConfig) -> C:
    """Load a YAML preset and apply ``section.field=value`` overrides (values parsed as YAML)."""
    return config_from_dict(merge_overrides(read_yaml(path), overrides or []), cls)


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    fields: dict[str, dict] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must look like section.field (e.g. objective.rho)")
        section, name = parts
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{section} must be a mapping")
        fields.setdefault(section, {})[name] = yaml.safe_load(raw) if raw.strip() else None
    return merge_sections(data, fields)


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    return config_from_dict(merge_overrides(cfg.to_dict(), overrides), type(cfg))


def dump_config(cfg) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
