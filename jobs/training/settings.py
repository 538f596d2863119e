"""How a training worker runs the step, read from the job config in one place.

The training job (:mod:`jobs.training.worker`, :mod:`jobs.training.steps`) and the benchmark's
defaults (``python -m jobs.tools.benchmark --config PRESET``) both take these settings from
:func:`step_settings`, so the benchmark's headline is the step the job runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import JobConfig
from ..threads import threads_for


@dataclass(frozen=True)
class StepSettings:
    """precision: autocast precision of the step (``optim.precision``);
    attack_precision: the training RFGSM's input-gradient precision (``optim.attack_precision``);
    backend: how the network computes (``model.backend``);
    threads: torch threads of one worker, the CPUs it reserves (``run.cpus_per_worker``)."""

    precision: str
    attack_precision: str
    backend: str
    threads: int


def step_settings(cfg: JobConfig) -> StepSettings:
    """The settings a worker of ``cfg``'s training run trains with."""
    return StepSettings(cfg.optim.precision, cfg.optim.attack_precision, cfg.model.backend,
                        threads_for(cfg.run.cpus_per_worker))
