"""One driver per run: a relaunch waits for the previous driver's Ray Train actors, then takes over.

A driver that dies (killed, node lost) takes its Ray Train controller and workers with it (they
are owned by the driver's job), but Ray stops them asynchronously.  A relaunch on the same Ray
cluster waits until the previous job's controller and workers are gone, so two controllers never
train (and checkpoint, and log) the same run; it refuses with :class:`~jobs.errors.RunInUseError`
if they are still alive after ``STABLE_SNN_PREVIOUS_DRIVER_WAIT_S`` seconds.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

import ray
from ray.util.state import list_actors

from ..config import JobConfig
from ..errors import RunInUseError
from .checkpoints import DRIVER_FILE, read_run_file, write_run_file

log = logging.getLogger("stable_snn.train")

# How long a relaunched driver waits for the Ray actors of the run's previous driver to go.
PREVIOUS_DRIVER_WAIT_S = float(os.environ.get("STABLE_SNN_PREVIOUS_DRIVER_WAIT_S", "120"))
TRAIN_ACTORS = ("TrainController", "RayTrainWorker")


def claim_run(cfg: JobConfig) -> None:
    """Make sure no earlier driver of this run still trains it, then record this driver."""
    storage, name = cfg.run.resolved_storage(), cfg.run.name
    ctx = ray.get_runtime_context()
    me = {"session": ctx.get_session_name(), "job_id": ctx.get_job_id(), "pid": os.getpid(),
          "host": socket.gethostname(), "started": time.time()}
    text = read_run_file(storage, name, DRIVER_FILE)
    previous = json.loads(text) if text else None
    if previous and previous.get("session") == me["session"] and previous.get("job_id") != me["job_id"]:
        _wait_for_previous_driver(cfg, previous)
    elif previous and previous.get("session") != me["session"]:
        log.info("the previous driver of %s ran on another Ray cluster session (%s): nothing of it runs on this one",
                 name, previous.get("session"))
    write_run_file(storage, name, DRIVER_FILE, json.dumps(me, indent=1))


def _wait_for_previous_driver(cfg: JobConfig, previous: dict) -> None:
    job = previous["job_id"]
    address = ray.get_runtime_context().gcs_address  # explicit: with several Ray instances on a host, none is implied
    deadline = time.monotonic() + PREVIOUS_DRIVER_WAIT_S
    t0 = time.monotonic()
    while True:
        try:
            actors = list_actors(address=address, filters=[("job_id", "=", job), ("state", "!=", "DEAD")], limit=10_000,
                                 raise_on_missing_output=False)
        except Exception as e:  # no dashboard / state API: cannot check, say so
            log.warning("cannot list the Ray actors of the previous driver of %s (job %s): %s", cfg.run.name, job, e)
            return
        alive = [a for a in actors if a.class_name in TRAIN_ACTORS]
        if not alive:
            if time.monotonic() - t0 > 1:
                log.info("the previous driver's Ray Train actors of %s are gone after %.1f s", cfg.run.name, time.monotonic() - t0)
            return
        if time.monotonic() > deadline:
            raise RunInUseError(
                f"run.name={cfg.run.name!r} is still being trained by Ray job {job} (driver pid {previous.get('pid')} "
                f"on {previous.get('host')}): {len(alive)} of its Ray Train actors "
                f"({', '.join(sorted({a.class_name for a in alive}))}) are alive after {PREVIOUS_DRIVER_WAIT_S:.0f} s; "
                "stop that job first (ray job stop, or end its driver) or choose another run.name"
            )
        log.info("waiting for the previous driver's Ray Train actors of %s (job %s) to stop: %d alive",
                 cfg.run.name, job, len(alive))
        time.sleep(2)
