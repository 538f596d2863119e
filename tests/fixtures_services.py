"""Session-wide services for the slow tests: an MLflow tracking server and a Ray head.

Import into a conftest with ``from tests.fixtures_services import *`` (or list the module in
``pytest_plugins``). Each service starts on free ports under a temporary root the first time a
test asks for it (10-30 s on a 2-core machine) and is stopped, with its whole process tree, at the
end of the session. Under pytest-xdist the workers share the MLflow server and the Ray head: tests
name their runs, models and storage folders so that they never meet. Only the processes started
here are stopped: other Ray instances on the host are left alone.

- ``mlflow_server`` -> ``infra.local.stack.Service``: ``.address`` is the tracking URI
  (``http://127.0.0.1:<port>``, sqlite store and local artifacts), ``.log`` the server log.
- ``ray_head`` -> ``Service``: ``.address`` is the dashboard / job API
  (``JobSubmissionClient(address)``, ``ray job submit --address``), ``.gcs_address`` the
  ``ip:port`` for ``ray.init(address=...)`` / ``RAY_ADDRESS``, ``.log`` its start-up log.
  It runs with ``RAY_AUTH_MODE=disabled`` (clients should set it too), the machine's CPUs (times the number of
  pytest-xdist workers that share it), and
  this interpreter first on PATH, so ``python`` in a job entrypoint is the test environment's.
  Job drivers submitted without a working dir run in the repository. It gets no MLflow settings:
  give jobs ``MLFLOW_TRACKING_URI`` in their runtime env / environment.
- ``s3_server`` -> :class:`S3Server`: moto's standalone S3 server on 127.0.0.1 with one bucket;
  ``.env`` holds the ``AWS_*`` variables that point pyarrow (hence Ray Train and the jobs' storage
  code) at it, ``.uri(prefix)`` an ``s3://`` location in the bucket.
- ``services_root`` -> ``Path``: the temporary root of this process's own services (the S3 server):
  their stores and logs.

And a context manager, ``two_node_cluster(root)`` -> :class:`TwoNodeCluster`: the local stand-in for a
cluster, a Ray head and a worker node started with ``ray start`` as separate processes, one CPU and
one custom resource (``node_head`` / ``node_worker``) each. The session's quick run trains on it
(tests/fixtures_runs.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local.stack import (
    Service, free_port, port_open, ray_temp_dir, start_mlflow_server, start_ray_head, start_ray_worker, stop, stop_all,
    wait_ready, worker_temp_dir,
)

__all__ = ["services_root", "mlflow_server", "ray_head", "S3Server", "s3_server"]


@pytest.fixture(scope="session")
def services_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[Service]:
    yield from _shared(tmp_path_factory, "mlflow", lambda root: start_mlflow_server(root, free_port()))


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> Iterator[Service]:
    def start(root: Path) -> Service:
        port = free_port()
        # RAY_ADDRESS pins Ray's own helper processes (e.g. Ray Train's placement-group cleaner) to this
        # cluster when other Ray instances run on the host. Shared by the pytest-xdist workers, it gets
        # the machine's CPUs for each of them: each worker's tests see the capacity a head of their own had.
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        return start_ray_head(root, port, free_port(), num_cpus=(os.cpu_count() or 1) * workers,
                              env={"RAY_ADDRESS": f"127.0.0.1:{port}"})

    yield from _shared(tmp_path_factory, "ray-head", start, clean=remove_ray_temp_dirs)


def _shared(tmp_path_factory, name: str, start: Callable[[Path], Service],
            clean: Callable[[Path], None] = lambda root: None) -> Iterator[Service]:
    """One service ``name`` for the whole session, shared by its pytest-xdist workers: the first worker
    that asks starts it, the last one done with it stops it (each worker starting its own cost a
    Ray head's or an MLflow server's start-up and idle CPU once more). Its record (the service and how
    many workers use it) is a JSON file beside the workers' temporary roots, read and written under a
    file lock. Without pytest-xdist the session starts and stops its own."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = tmp_path_factory.mktemp(name)
        service = start(root)
        try:
            yield service
        finally:
            stop(service)
            clean(root)
        return
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the session's root; each worker's basetemp is a folder in it
    lock, record = FileLock(str(shared / f"{name}.lock")), shared / f"{name}.json"
    with lock:
        state = json.loads(record.read_text()) if record.is_file() else {"users": 0, "starts": 0}
        if state["users"] == 0:  # none yet, or the one started earlier was stopped by its last user
            root = shared / f"{name}-{state['starts'] + 1}"
            root.mkdir()
            service = start(root)
            state.update(service=service.to_json(), root=str(root), starts=state["starts"] + 1)
        else:
            service, root = Service.from_json(state["service"]), Path(state["root"])
        state["users"] += 1
        record.write_text(json.dumps(state))
    try:
        yield service
    finally:
        with lock:
            state = json.loads(record.read_text())
            state["users"] -= 1
            if state["users"] == 0:
                stop(service)
                clean(root)
            record.write_text(json.dumps(state))


def remove_ray_temp_dirs(root: Path, worker_names=()) -> None:
    """Remove the Ray temp dirs of the head and the named worker nodes started under ``root`` that went to a
    short folder in the system temp dir (too long a root for Unix sockets), which pytest's own clean-up
    would never reach."""
    for temp_dir in (ray_temp_dir(root), *(worker_temp_dir(root, name) for name in worker_names)):
        if not temp_dir.is_relative_to(Path(root).resolve()):
            shutil.rmtree(temp_dir, ignore_errors=True)


HEAD_RESOURCE, WORKER_RESOURCE = "node_head", "node_worker"


@dataclass(frozen=True)
class TwoNodeCluster:
    """A Ray head and a worker node on this machine; ``head.address`` is the job API, ``head.gcs_address``
    the cluster's address. The nodes are told apart by their custom resources."""

    head: Service
    worker: Service


@contextlib.contextmanager
def two_node_cluster(root: Path) -> Iterator[TwoNodeCluster]:
    """Start both nodes under ``root``, stop them on the way out. Start-up overlaps: the worker node is
    launched as soon as the head's GCS accepts connections (``ray start --address`` then waits for the
    head's raylet itself). Every Ray process gets ``RAY_ADDRESS`` of this cluster, so Ray's own
    state-API clients inside actors (Train's placement-group cleaner) find it beside the session's
    other Ray head."""
    store = 128 * 1024**2  # object store per node: the jobs pass checkpoints through storage, not the object store
    started: list[Service] = []
    try:
        gcs_port = free_port()
        gcs = f"127.0.0.1:{gcs_port}"  # Ray resolves loopback to the node's address
        head = start_ray_head(root, gcs_port, free_port(), num_cpus=1, resources={HEAD_RESOURCE: 1},
                              object_store_memory=store, env={"RAY_ADDRESS": gcs}, wait=False)
        started.append(head)
        deadline = time.monotonic() + 120
        while not port_open("127.0.0.1", gcs_port):
            if head._proc.poll() is not None or time.monotonic() > deadline:
                wait_ready(head, timeout=0)  # raises StackError with the tail of the head's log
            time.sleep(0.2)
        worker = start_ray_worker(root, gcs, num_cpus=1, resources={WORKER_RESOURCE: 1}, object_store_memory=store,
                                  env={"RAY_ADDRESS": gcs}, wait=False)
        started.append(worker)
        yield TwoNodeCluster(wait_ready(head), wait_ready(worker))
    finally:
        stop_all(started[::-1])
        remove_ray_temp_dirs(root, [s.name for s in started[1:]])


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server for storage tests (moto), with the bucket ``bucket``."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3_server(services_root: Path) -> Iterator[S3Server]:
    import pyarrow.fs as pafs

    port = free_port()
    log = open(services_root / "moto.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, (services_root / "moto.log").read_text()
            time.sleep(0.2)
        server = S3Server(f"http://127.0.0.1:{port}", "stable-snn-test")
        env = server.env
        pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                          region=env["AWS_DEFAULT_REGION"], endpoint_override=server.endpoint,
                          allow_bucket_creation=True).create_dir(server.bucket)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
