"""OpenMP's wait policy for every job process: passive, unless the user chose one.

Torch's OpenMP threads spin while they wait for work (the default "active" policy). On a node
where anything else runs (the raylet, another worker, a validation task, a data loader) a spinning
thread holds the core its sibling needs: on a 2-core machine a two-thread training step measured
8x slower with ``OMP_WAIT_POLICY=ACTIVE`` than passive next to busy processes
(``jobs.tools.benchmark --busy 1``, README "Performance"). The policy is read once, when torch loads
OpenMP, so it must be in the environment before ``import torch``:

- ``jobs/__init__`` sets it for every ``python -m jobs.<job>`` process (and what it starts);
- :func:`openmp_env` is handed to the Ray job's workers (``ray.init(runtime_env=...)``);
- ``infra/local/stack.py`` and the image (``infra/Dockerfile``) start Ray with it, which covers
  workers of jobs submitted with ``ray job submit``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"
DEFAULT_POLICY = "PASSIVE"


def openmp_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The wait policy to give a child process: the user's, else passive."""
    return {WAIT_POLICY: environ.get(WAIT_POLICY) or DEFAULT_POLICY}


def use_passive_openmp(environ: MutableMapping[str, str] = os.environ) -> None:
    """Make the passive policy this process's default (before torch is imported: it is read once)."""
    environ.update(openmp_env(environ))
