"""Typed, validated configuration of a training run, loadable from YAML.

Every field is checked in ``__post_init__``; a bad value raises :class:`ConfigError`
naming the field, the value and what is allowed, before any data or model is built.
Overrides use dotted names: ``apply_overrides(cfg, ["objective.rho=0.5"])``.
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
from typing import Any

import yaml

ARCHS = ("vgg5", "vgg11", "wrn16")
NEURONS = ("lif", "dlif")
GAIN_FORMS = ("leak", "input")
DATASETS = ("cifar10", "cifar100")
DATA_FORMATS = ("auto", "parquet", "torchvision")
MODES = ("natural", "gaussian", "at", "at_reg")
REGULARIZERS = ("ms_mppd", "tasad", "std")
REDUCTIONS = ("mean", "sum")
PRECISIONS = ("fp32", "bf16", "fp16")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field_name}={value!r} is invalid: allowed {allowed}")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        _fail(name, value, "one of " + ", ".join(map(str, allowed)))


def _range(name: str, value: Any, lo=None, hi=None, lo_open=False, hi_open=False, integer=False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (not integer and not math.isfinite(value)):
        _fail(name, value, ("an integer" if integer else "a finite number") + _describe(lo, hi, lo_open, hi_open))
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        _fail(name, value, ("an integer" if integer else "a number") + _describe(lo, hi, lo_open, hi_open))


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

    def __post_init__(self) -> None:
        _choice("model.arch", self.arch, ARCHS)
        _choice("model.neuron", self.neuron, NEURONS)
        _choice("model.gain_form", self.gain_form, GAIN_FORMS)
        _range("model.timesteps", self.timesteps, lo=1, integer=True)
        _range("model.leak", self.leak, 0.0, 1.0)
        _range("model.threshold", self.threshold, lo=0.0, lo_open=True)
        _range("model.surrogate_width", self.surrogate_width, lo=0.0, lo_open=True)
        _range("model.width", self.width, lo=0.0, lo_open=True)
        _range("model.classifier_width", self.classifier_width, lo=1, integer=True)

    def build_kwargs(self) -> dict:
        """Keyword arguments of :func:`stable_snn.models.build_model` (without num_classes)."""
        kw = dict(
            timesteps=self.timesteps, neuron=self.neuron, width=self.width, leak=self.leak,
            threshold=self.threshold, surrogate_width=self.surrogate_width, gain_form=self.gain_form,
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
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.format", self.format, DATA_FORMATS)
        _range("data.val_size", self.val_size, lo=1, integer=True)
        if self.train_subset is not None:
            _range("data.train_subset", self.train_subset, lo=1, integer=True)
        if self.test_subset is not None:
            _range("data.test_subset", self.test_subset, lo=1, integer=True)
        _range("data.cutout", self.cutout, 0, 32, integer=True)
        _range("data.loader_workers", self.loader_workers, lo=0, integer=True)

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
    beta: float = 5e-4  # SNN-RAT strength, used in mode at_reg
    gaussian_sigma: float = 8 / 255
    rfgsm_step: float = 4 / 255
    rfgsm_init_std: float = 0.001
    reg_row_fraction: float = 0.3  # rows of large Linear layers retracted per step
    reg_row_min_outputs: int = 200

    def __post_init__(self) -> None:
        _choice("objective.mode", self.mode, MODES)
        _range("objective.rho", self.rho, lo=0.0)
        _range("objective.chi", self.chi, 0.0, 1.0)
        _choice("objective.regularizer", self.regularizer, REGULARIZERS)
        _choice("objective.reduction", self.reduction, REDUCTIONS)
        _range("objective.beta", self.beta, lo=0.0)
        _range("objective.gaussian_sigma", self.gaussian_sigma, 0.0, 1.0, lo_open=True)
        _range("objective.rfgsm_step", self.rfgsm_step, 0.0, 1.0, lo_open=True)
        _range("objective.rfgsm_init_std", self.rfgsm_init_std, lo=0.0)
        _range("objective.reg_row_fraction", self.reg_row_fraction, 0.0, 1.0, lo_open=True)
        _range("objective.reg_row_min_outputs", self.reg_row_min_outputs, lo=1, integer=True)


@dataclass
class OptimConfig:
    """SGD with cosine decay (PROTOCOL.md). ``weight_decay`` None means 5e-4, or 0 in at_reg."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _range("optim.epochs", self.epochs, lo=1, integer=True)
        _range("optim.batch_size", self.batch_size, lo=1, integer=True)
        _range("optim.lr", self.lr, lo=0.0, lo_open=True)
        _range("optim.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        if self.weight_decay is not None:
            _range("optim.weight_decay", self.weight_decay, lo=0.0)
        _choice("optim.precision", self.precision, PRECISIONS)


@dataclass
class ValidationConfig:
    """Per-epoch validation: clean accuracy and PGD robust accuracy on a fixed subset."""

    subset: int = 1000
    eps: float = 8 / 255
    pgd_steps: int = 10
    pgd_step_size: float = 2 / 255
    batch_size: int = 128
    cpus: float = 1.0  # resources of the validation task
    gpus: float = 0.0

    def __post_init__(self) -> None:
        _range("validation.cpus", self.cpus, lo=0.0)
        _range("validation.gpus", self.gpus, lo=0.0)
        _range("validation.subset", self.subset, lo=1, integer=True)
        _range("validation.eps", self.eps, 0.0, 1.0, lo_open=True)
        _range("validation.pgd_steps", self.pgd_steps, lo=1, integer=True)
        _range("validation.pgd_step_size", self.pgd_step_size, 0.0, 1.0, lo_open=True)
        _range("validation.batch_size", self.batch_size, lo=1, integer=True)


@dataclass
class RunConfig:
    """Where and how the job runs. Locations default to the environment, never to a machine."""

    name: str = "run"
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # Ray placement of the workers: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    storage_path: str | None = None  # $STABLE_SNN_STORAGE_PATH or ~/stable-snn/runs
    max_failures: int = 0
    keep_checkpoints: int = 2
    tracking_uri: str | None = None  # $MLFLOW_TRACKING_URI wins when set
    experiment: str = "stable-snn"
    registered_model: str | None = None  # default stable-snn-<dataset>-<arch>
    fail_at_epoch: int | None = None  # test-only: a worker crashes once after this epoch
    nan_at_epoch: int | None = None  # test-only: the loss becomes NaN in the middle of this epoch

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            _fail("run.name", self.name, "a non-empty string without '/'")
        _range("run.seed", self.seed, lo=0, integer=True)
        _range("run.num_workers", self.num_workers, lo=1, integer=True)
        _range("run.cpus_per_worker", self.cpus_per_worker, lo=0.0, lo_open=True)
        _choice("run.placement_strategy", self.placement_strategy, PLACEMENTS)
        _range("run.max_failures", self.max_failures, lo=-1, integer=True)
        _range("run.keep_checkpoints", self.keep_checkpoints, lo=1, integer=True)
        if self.fail_at_epoch is not None:
            _range("run.fail_at_epoch", self.fail_at_epoch, lo=1, integer=True)
        if self.nan_at_epoch is not None:
            _range("run.nan_at_epoch", self.nan_at_epoch, lo=1, integer=True)

    def resolved_storage(self) -> str:
        path = self.storage_path or os.environ.get("STABLE_SNN_STORAGE_PATH") or "~/stable-snn/runs"
        if "://" in path:
            return path
        return str(Path(path).expanduser().resolve())

    def resolved_tracking_uri(self) -> str | None:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.optim.batch_size < self.run.num_workers:
            _fail("optim.batch_size", self.optim.batch_size, f">= run.num_workers ({self.run.num_workers})")

    @property
    def weight_decay(self) -> float:
        if self.optim.weight_decay is not None:
            return self.optim.weight_decay
        return 0.0 if self.objective.mode == "at_reg" else 5e-4

    @property
    def registered_model_name(self) -> str:
        return self.run.registered_model or f"stable-snn-{self.data.dataset}-{self.model.arch}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model.arch": ..., ...}``: the resolved config as MLflow params."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


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
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{prefix}.{name}" if prefix else name)
        else:
            kwargs[name] = _coerce(hint, value, f"{prefix}.{name}" if prefix else name)
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


def config_from_dict(data: dict) -> TrainConfig:
    return _from_dict(TrainConfig, data, "")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML preset and apply ``section.field=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    return config_from_dict(merge_overrides(data, overrides or []))


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must look like section.field (e.g. objective.rho)")
        section, name = parts
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section} must be a mapping")
        data[section][name] = yaml.safe_load(raw) if raw.strip() else None
    return data


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    return config_from_dict(merge_overrides(cfg.to_dict(), overrides))


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
