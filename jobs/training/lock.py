"""The Ray actor that is a run's lock (:mod:`jobs.training.guard` claims it), in a module of its own:
the actor's process imports only this, not torch and the config the guard needs."""
from __future__ import annotations

import ray

LOCK_NAMESPACE = "stable-snn"


@ray.remote(num_cpus=0)
class RunLock:
    """The lock of one run: alive while its driver trains the run; knows who that driver is."""

    def __init__(self, holder: dict) -> None:
        self._holder = holder

    def holder(self) -> dict:
        return self._holder
