"""The failures a job ends with on purpose: one line on stderr and an exit code (``jobs.cli``).

Library errors keep their own types (:class:`stable_snn.config.ConfigError`,
:class:`stable_snn.data.DatasetNotFoundError`); these are the job layer's.
"""
from __future__ import annotations


class RefusedError(Exception):
    """Bad input or state, found before the work it would spoil (exit 2)."""


class CheckpointError(RefusedError):
    """A checkpoint is missing, truncated or does not match its recorded checksums."""


class RunInUseError(RefusedError):
    """Another live driver still trains this run."""


class ModelNotFoundError(RefusedError, LookupError):
    """The model URI names no registered model, version or alias."""


class NothingToRegisterError(RefusedError, LookupError):
    """The run has no MLflow run or no valid checkpoint to register."""


class EvaluationInputError(RefusedError, ValueError):
    """Bad command-line input or a missing model / dataset for an evaluation."""


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server does not answer (exit 3)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the epoch and step (exit 4)."""
