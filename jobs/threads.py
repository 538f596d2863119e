"""Torch threads of a job process: as many as the CPUs it reserved from Ray, at least one.

A Ray Train worker (``run.cpus_per_worker``), a validation task (``run.validation_cpus``) and an
evaluation actor (``jobs.evaluate --cpus-per-worker``) each reserve CPUs of their node, but torch
would run as many intra-op threads as the node has cores, or as an inherited ``OMP_NUM_THREADS``
says: Ray sets it only when unset, and not at all under a fractional reservation.  Two workers of
a 2-core node then spin against each other's OpenMP threads (about 0.4 of a core each, half of it
system time).  Every such process calls :func:`use_reserved_cpus` first.
"""
from __future__ import annotations

import logging
import math
import os

import torch

from .openmp import DEFAULT_POLICY, WAIT_POLICY

log = logging.getLogger("stable_snn.threads")


def threads_for(cpus: float) -> int:
    """Torch intra-op threads for a reservation of ``cpus`` CPUs: its whole CPUs, at least one."""
    if not (isinstance(cpus, (int, float)) and math.isfinite(cpus) and cpus >= 0):
        raise ValueError(f"a CPU reservation must be a finite number >= 0, got {cpus!r}")
    return max(1, math.floor(cpus + 1e-9))  # 1.9999999 reserved CPUs (float sums) are 2


def use_reserved_cpus(cpus: float) -> int:
    """Set this process's torch threads to :func:`threads_for` ``(cpus)``; returns the count."""
    threads = threads_for(cpus)
    torch.set_num_threads(threads)
    if threads > 1 and os.environ.get(WAIT_POLICY, "").upper() != DEFAULT_POLICY:
        log.warning("%d torch threads with %s=%s: spinning OpenMP threads slow a shared node many times over; "
                    "start Ray with %s=%s (jobs/openmp.py)", threads, WAIT_POLICY, os.environ.get(WAIT_POLICY, "unset"),
                    WAIT_POLICY, DEFAULT_POLICY)
    return threads
