"""Failures of a training run that retrying cannot cure, and the faults tests cause on purpose.

A non-finite loss (:class:`~jobs.errors.NonFiniteLossError`, naming epoch and step) or a corrupt
checkpoint to resume from (:class:`~jobs.errors.CheckpointError`) would recur on every retry:
:func:`stop_on_fatal_callback` stops the run at once although ``FailureConfig.max_failures``
allows retries, and the non-finite loss leaves a marker in the run's folder so that a relaunch
is refused before any compute.

:class:`FaultPlan` is for tests only and never a configuration field: a test puts it, as JSON,
into the environment variable ``STABLE_SNN_TEST_FAULT_PLAN`` of the driver it starts, e.g.
``{"crash_at_epoch": 2}`` (rank 0 dies once, with ``os._exit``, in the middle of epoch 2) or
``{"nan_at_epoch": 2}`` (from the middle of epoch 2 on the loss is NaN, on every rank and retry) or
``{"hold_at_epochs": [2]}`` (rank 0 writes its pid to ``.held-epoch2`` in the run's folder in the middle
of epoch 2 and waits there, once, so that a test acts at a known point: it kills the process, or lets it
train on by writing ``release`` into that file (:func:`release_hold`)).
The driver hands the variable on to its Ray job (:func:`fault_plan_env`), so the Train workers
of the run, and of every Tune trial, read the same plan.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import ray.train
import torch

from ..config import JobConfig
from ..errors import CheckpointError, NonFiniteLossError
from ..storage import read_text, write_text
from .checkpoints import NONFINITE_MARKER, write_run_file

log = logging.getLogger("stable_snn.train")

FAULT_PLAN_ENV = "STABLE_SNN_TEST_FAULT_PLAN"
CRASH_EXIT_STATUS = 17
HOLD_S = 600
"""How long a hold keeps rank 0 waiting (for the test to kill or release it) before it trains on."""
RELEASE = "release"
"""What a test writes into a hold's marker file to let the held process train on."""


@dataclass(frozen=True)
class FaultPlan:
    """Test-only faults, each in the middle of an epoch (1-based); None: no such fault."""

    crash_at_epoch: int | None = None
    nan_at_epoch: int | None = None
    hold_at_epochs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("crash_at_epoch", "nan_at_epoch"):
            value = getattr(self, name)
            if value is not None and not _is_epoch(value):
                raise ValueError(f"{FAULT_PLAN_ENV}: {name}={value!r} is invalid: allowed an integer >= 1")
        holds = self.hold_at_epochs
        if not isinstance(holds, (list, tuple)) or not all(map(_is_epoch, holds)):
            raise ValueError(f"{FAULT_PLAN_ENV}: hold_at_epochs={holds!r} is invalid: allowed a list of integers >= 1")
        object.__setattr__(self, "hold_at_epochs", tuple(holds))  # JSON gives a list

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FaultPlan:
        text = environ.get(FAULT_PLAN_ENV)
        if not text:
            return cls()
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{FAULT_PLAN_ENV}={text!r} is not a fault plan: {e}") from None

    def inject(self, *, epoch: int, step: int, steps: int, rank: int, model: torch.nn.Module, run_dir: str) -> None:
        """Cause the planned faults at ``step`` (0-based) of ``steps`` when it is the middle of their epoch."""
        if step != max(1, steps // 2):
            return
        if self.crash_at_epoch == epoch and rank == 0:
            marker = f"{run_dir}/.failure-injected-epoch{epoch}"  # once: the restarted worker trains on
            if read_text(marker) is None:
                write_text(marker, "1")
                log.warning("fault plan crash_at_epoch=%d: killing this worker in the middle of the epoch", epoch)
                os._exit(CRASH_EXIT_STATUS)
        if epoch in self.hold_at_epochs and rank == 0:
            marker = f"{run_dir}/.held-epoch{epoch}"  # once: the restarted worker trains on
            if read_text(marker) is None:
                write_text(marker, str(os.getpid()))
                log.warning("fault plan hold at epoch %d: pid %d waits here to be killed or released", epoch, os.getpid())
                deadline = time.monotonic() + HOLD_S
                while read_text(marker) != RELEASE and time.monotonic() < deadline:
                    time.sleep(0.2)
        if self.nan_at_epoch == epoch:
            log.warning("fault plan nan_at_epoch=%d: putting a NaN into the classifier", epoch)
            with torch.no_grad():
                list(model.parameters())[-1].view(-1)[0] = float("nan")


def _is_epoch(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def release_hold(run_dir: str | os.PathLike, epoch: int) -> None:
    """Let rank 0, held in ``epoch`` by the fault plan, train on."""
    write_text(f"{run_dir}/.held-epoch{epoch}", RELEASE)


def fault_plan_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The fault plan of a test, if any, as environment variables for the job's workers."""
    return {FAULT_PLAN_ENV: environ[FAULT_PLAN_ENV]} if environ.get(FAULT_PLAN_ENV) else {}


def nonfinite_message(run_name: str, loss: float, epoch: int, step: int, storage: str) -> str:
    where = f"{storage.rstrip('/')}/{run_name}"
    kept = (f"The last good checkpoint (epoch {epoch - 1}) is kept in {where} and can still be registered: "
            f"python -m jobs.register --config <preset> --set run.name={run_name}") if epoch > 1 else "No checkpoint was written yet."
    return (f"run {run_name!r}: the loss became {loss} at epoch {epoch} step {step}; training stopped (a non-finite "
            f"loss recurs on every retry, so it is not retried). {kept}")


def stop_on_nonfinite(cfg: JobConfig, loss: float, epoch: int, step: int, rank: int) -> NonFiniteLossError:
    """The error to raise for a non-finite loss; rank 0 records the marker that makes a relaunch
    of this run fail at once instead of recomputing the NaN."""
    message = nonfinite_message(cfg.run.name, loss, epoch, step, cfg.run.resolved_storage())
    log.error(message)
    if rank == 0:
        try:
            write_run_file(cfg.run.resolved_storage(), cfg.run.name, NONFINITE_MARKER,
                           json.dumps({"epoch": epoch, "step": step, "loss": str(loss), "message": message}, indent=1))
        except OSError as e:
            log.warning("could not record the non-finite loss in the run's storage folder: %s", e)
    return NonFiniteLossError(message)


def fatal_error(error: BaseException) -> BaseException | None:
    """The deterministic failure behind ``error``, if any: retrying would only repeat it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (NonFiniteLossError, CheckpointError)):
            return error
        # ControllerError.controller_failure is public; a worker's own exception reaches the controller
        # wrapped in an internal class whose _base_exc holds it (checked on Ray 2.60.0; no public accessor;
        # tests/jobs/training/test_ray_layout.py fails when that changes).
        error = getattr(error, "controller_failure", None) or getattr(error, "_base_exc", None) or error.__cause__
    return None


class StopOnFatalError(ray.train.UserCallback):
    """Runs in the Train controller: a worker's non-finite loss or corrupt checkpoint becomes a
    non-retryable controller error (``FailureConfig.max_failures`` retries every worker error)."""

    def after_exception(self, run_context, worker_exceptions):
        for rank in sorted(worker_exceptions):
            fatal = fatal_error(worker_exceptions[rank])
            if fatal is not None:
                raise type(fatal)(f"{fatal} (worker rank {rank})")
