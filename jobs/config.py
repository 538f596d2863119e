"""A job's configuration: the library's science (:class:`stable_snn.config.TrainConfig`) plus ``run``.

``run`` says where and how a training run executes: its name, seed, Ray resources, storage and
MLflow tracking.  Locations default to the environment, never to a machine.  Presets keep one
YAML file with every section (``jobs/configs/``), so ``--set run.name=...`` and
``--set objective.rho=...`` work alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stable_snn.config import TrainConfig, choice, config_from_dict, invalid, load_config, number

# Ray's placement-group strategies (ray.util.placement_group names them in its docs only).
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class RunConfig:
    """Where and how the job runs."""

    name: str = "run"
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # Ray placement of the workers
    validation_cpus: float = 1.0  # resources of the per-epoch validation task
    validation_gpus: float = 0.0
    storage_path: str | None = None  # $STABLE_SNN_STORAGE_PATH or ~/stable-snn/runs
    max_failures: int = 0
    keep_checkpoints: int = 2
    tracking_uri: str | None = None  # $MLFLOW_TRACKING_URI wins when set
    experiment: str = "stable-snn"
    registered_model: str | None = None  # default stable-snn-<dataset>-<arch>

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            invalid("run.name", self.name, "a non-empty string without '/'")
        number("run.seed", self.seed, lo=0, integer=True)
        number("run.num_workers", self.num_workers, lo=1, integer=True)
        number("run.cpus_per_worker", self.cpus_per_worker, lo=0.0, lo_open=True)
        choice("run.placement_strategy", self.placement_strategy, PLACEMENTS)
        number("run.validation_cpus", self.validation_cpus, lo=0.0)
        number("run.validation_gpus", self.validation_gpus, lo=0.0)
        number("run.max_failures", self.max_failures, lo=-1, integer=True)
        number("run.keep_checkpoints", self.keep_checkpoints, lo=1, integer=True)

    def resolved_storage(self) -> str:
        path = self.storage_path or os.environ.get("STABLE_SNN_STORAGE_PATH") or "~/stable-snn/runs"
        if "://" in path:
            return path
        return str(Path(path).expanduser().resolve())


@dataclass
class JobConfig(TrainConfig):
    """The library's sections and ``run``: what a training job, a Tune trial and a checkpoint hold."""

    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        global_batch = self.optim.batch_size * self.run.num_workers
        if self.data.train_subset is not None and self.data.train_subset < global_batch:
            invalid("data.train_subset", self.data.train_subset,
                    f">= optim.batch_size x run.num_workers ({global_batch}): every worker needs a full batch")

    @property
    def registered_model_name(self) -> str:
        return self.run.registered_model or f"stable-snn-{self.data.dataset}-{self.model.arch}"

    def derived_params(self) -> dict:
        """What the run uses that no single field states: the weight decay, the global batch (one
        ``optim.batch_size`` per worker, the BatchNorm batch) and the learning rate scaled to it."""
        return {
            "derived.weight_decay": self.weight_decay,
            "derived.global_batch_size": self.optim.batch_size * self.run.num_workers,
            "derived.lr": self.optim.scaled_lr(self.run.num_workers),
        }


def load_job_config(path: str | os.PathLike, overrides: list[str] | None = None) -> JobConfig:
    """A preset (its ``extends:`` chain resolved) with ``section.field=value`` overrides."""
    return load_config(path, overrides, JobConfig)


def job_config_from_dict(data: dict) -> JobConfig:
    return config_from_dict(data, JobConfig)


def read_stored_config(path: Path) -> JobConfig:
    """The resolved config a checkpoint or a logged model was written with (``config.yaml``)."""
    return job_config_from_dict(yaml.safe_load(Path(path).read_text()) or {})
