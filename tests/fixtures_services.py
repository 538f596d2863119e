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
- ``services_root`` -> ``Path``: the temporary root holding both services' stores and logs.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import Service, free_port, ray_temp_dir, start_mlflow_server, start_ray_head, stop

__all__ = ["services_root", "mlflow_server", "ray_head"]


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
