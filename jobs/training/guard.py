"""One driver per run: a named Ray actor is the run's lock, held by the driver that trains it.

The lock is an actor named after the run's folder (``<storage>/<run.name>``) in the namespace
``stable-snn``, created by the driver and owned by it: it lives until the driver releases it or
dies (killed, node lost), when Ray destroys it with the driver's other actors.  A driver that
finds the name taken waits for the holder to go; it refuses with
:class:`~jobs.errors.RunInUseError`, naming the holder's Ray job, pid and host, if the lock is
still held after ``STABLE_SNN_PREVIOUS_DRIVER_WAIT_S`` seconds.  Ray stops a dead driver's actors
asynchronously, so once it holds the lock a driver also waits for the previous driver's other
actors (its Ray Train controller and workers) to be gone, through Ray's state API.
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
from .checkpoints import DRIVER_FILE, read_run_file, run_path, write_run_file
from .lock import LOCK_NAMESPACE, RunLock

log = logging.getLogger("stable_snn.train")

# How long a relaunched driver waits for the run's previous driver to go.
PREVIOUS_DRIVER_WAIT_S = float(os.environ.get("STABLE_SNN_PREVIOUS_DRIVER_WAIT_S", "120"))


def lock_name(cfg: JobConfig) -> str:
    return f"run-lock:{run_path(cfg.run.resolved_storage(), cfg.run.name)}"


def claim_run(cfg: JobConfig):
    """Take the run's lock (waiting for a previous holder to go), record this driver in the run's
    folder, and return the lock: the run is this driver's until :func:`release_run` or its death."""
    ctx = ray.get_runtime_context()
    me = {"job_id": ctx.get_job_id(), "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
          "session": ctx.get_session_name()}
    lock = _acquire(cfg, me)
    storage, name = cfg.run.resolved_storage(), cfg.run.name
    text = read_run_file(storage, name, DRIVER_FILE)
    previous = json.loads(text) if text else None
    if previous and previous.get("session") == me["session"] and previous.get("job_id") != me["job_id"]:
        _wait_for_actors_of(cfg, previous["job_id"])
    write_run_file(storage, name, DRIVER_FILE, json.dumps(me, indent=1))
    return lock


def release_run(lock) -> None:
    """Give the run's lock back (the driver keeps running, the run is free)."""
    ray.kill(lock)


def _acquire(cfg: JobConfig, me: dict):
    name, t0 = lock_name(cfg), time.monotonic()
    while True:
        try:
            lock = RunLock.options(name=name, namespace=LOCK_NAMESPACE).remote(me)
            ray.get(lock.holder.remote())  # created and named: the lock is ours
            if time.monotonic() - t0 > 1:
                log.info("took over %s after %.1f s", cfg.run.name, time.monotonic() - t0)
            return lock
        except ValueError:  # the name is taken: another driver holds the run
            holder = _holder(name)
        if holder is not None and time.monotonic() - t0 > PREVIOUS_DRIVER_WAIT_S:
            raise RunInUseError(
                f"run.name={cfg.run.name!r} is still being trained by Ray job {holder.get('job_id')} (driver pid "
                f"{holder.get('pid')} on {holder.get('host')}): it still holds the run's lock after "
                f"{PREVIOUS_DRIVER_WAIT_S:.0f} s; stop that job first (ray job stop, or end its driver) or choose "
                "another run.name"
            )
        if holder is not None:
            log.info("waiting for the driver of %s (Ray job %s, pid %s on %s) to finish or stop", cfg.run.name,
                     holder.get("job_id"), holder.get("pid"), holder.get("host"))
        time.sleep(2)


def _holder(name: str) -> dict | None:
    """Who holds the lock named ``name``; None when it went in the meantime."""
    try:
        return ray.get(ray.get_actor(name, namespace=LOCK_NAMESPACE).holder.remote())
    except (ValueError, ray.exceptions.RayActorError):
        return None


def _wait_for_actors_of(cfg: JobConfig, job_id: str) -> None:
    """Wait until no actor that dies with the previous driver's Ray job (none detached) is alive."""
    address = ray.get_runtime_context().gcs_address  # explicit: with several Ray instances on a host, none is implied
    deadline, t0 = time.monotonic() + PREVIOUS_DRIVER_WAIT_S, time.monotonic()
    while True:
        try:
            actors = list_actors(address=address, filters=[("job_id", "=", job_id), ("state", "!=", "DEAD")],
                                 limit=10_000, detail=True, raise_on_missing_output=False)
        except Exception as e:  # no dashboard / state API: cannot check, say so
            log.warning("cannot list the Ray actors of the previous driver of %s (job %s): %s", cfg.run.name, job_id, e)
            return
        # Detached actors outlive their job by design (Ray Train keeps a few of its own): not the driver's
        alive = [a for a in actors if not a.is_detached]
        if not alive:
            if time.monotonic() - t0 > 1:
                log.info("the previous driver's actors of %s are gone after %.1f s", cfg.run.name, time.monotonic() - t0)
            return
        if time.monotonic() > deadline:
            raise RunInUseError(
                f"run.name={cfg.run.name!r}: {len(alive)} actor(s) of its previous driver's Ray job {job_id} are "
                f"still alive after {PREVIOUS_DRIVER_WAIT_S:.0f} s; stop that job first (ray job stop) or choose "
                "another run.name"
            )
        log.info("waiting for the %d actor(s) of the previous driver of %s (job %s) to stop", len(alive),
                 cfg.run.name, job_id)
        time.sleep(1)
