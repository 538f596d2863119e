"""What Ray Train's controller unpickles of a run: the workers' loop and the validation function, as
references to this module, which imports none of the training code itself.  The controller process
of every run and restart then loads neither MLflow nor the training code (about 0.7 s of CPU, and the
memory they take); the workers and the validation task import them when they call in."""
from __future__ import annotations


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker: :func:`jobs.training.worker.train_loop_per_worker`."""
    from .worker import train_loop_per_worker as loop

    loop(loop_config)


def validate_checkpoint(checkpoint, **kwargs) -> dict:
    """Ray Train's validation function: :func:`jobs.training.validation.validate_checkpoint`."""
    from .validation import validate_checkpoint as validate

    return validate(checkpoint, **kwargs)
