"""Session-wide services for the slow tests: an MLflow tracking server and a Ray head.

Import into a conftest with ``from tests.fixtures_services import *`` (or list the module in
``pytest_plugins``). Each service starts on free ports under one temporary root the first time a
test asks for it (10-30 s on a 2-core machine) and is stopped, with its whole process tree, at the
end of the session. Only the processes started here are stopped: other Ray instances on the host
are left alone.

- ``mlflow_server`` -> ``infra.local.stack.Service``: ``.address`` is the tracking URI
  (``http://127.0.0.1:<port>``, sqlite store and local artifacts), ``.log`` the server log.
- ``ray_head`` -> ``Service``: ``.address`` is the dashboard / job API
  (``JobSubmissionClient(address)``, ``ray job submit --address``), ``.gcs_address`` the
  ``ip:port`` for ``ray.init(address=...)`` / ``RAY_ADDRESS``, ``.log`` its start-up log.
  It runs with ``RAY_AUTH_MODE=disabled`` (clients should set it too), all the machine's CPUs, and
  this interpreter first on PATH, so ``python`` in a job entrypoint is the test environment's.
  Job drivers submitted without a working dir run in the repository. It gets no MLflow settings:
  give jobs ``MLFLOW_TRACKING_URI`` in their runtime env / environment.
- ``s3_server`` -> :class:`S3Server`: moto's standalone S3 server on 127.0.0.1 with one bucket;
  ``.env`` holds the ``AWS_*`` variables that point pyarrow (hence Ray Train and the jobs' storage
  code) at it, ``.uri(prefix)`` an ``s3://`` location in the bucket.
- ``services_root`` -> ``Path``: the temporary root holding the services' stores and logs.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local.stack import Service, free_port, port_open, ray_temp_dir, start_mlflow_server, start_ray_head, stop

__all__ = ["services_root", "mlflow_server", "ray_head", "S3Server", "s3_server"]


@pytest.fixture(scope="session")
def services_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mlflow_server(services_root: Path) -> Iterator[Service]:
    service = start_mlflow_server(services_root, free_port())
    try:
        yield service
    finally:
        stop(service)


@pytest.fixture(scope="session")
def ray_head(services_root: Path) -> Iterator[Service]:
    port = free_port()
    # RAY_ADDRESS pins Ray's own helper processes (e.g. Ray Train's placement-group cleaner) to this
    # cluster when other Ray instances run on the host.
    service = start_ray_head(services_root, port, free_port(), env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    try:
        yield service
    finally:
        stop(service)
        temp_dir = ray_temp_dir(services_root)
        if not temp_dir.is_relative_to(services_root.resolve()):
            # Too long a root for Unix sockets: Ray's session went to a short folder in the system
            # temp dir, which pytest's own clean-up would never reach.
            shutil.rmtree(temp_dir, ignore_errors=True)


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
