"""A fresh virtual environment holding only what a logged model requires, built in the background.

Installing torch and MLflow into a new environment takes minutes, so the build starts early, when a
selected test asks for ``model_env``, and runs (niced) while the other tests do; the fixture hands it
over and ``ModelEnv.wait`` blocks until it is ready. It starts when the session is collected, or,
under pytest-xdist (where every worker collects every test), on the worker that runs those tests,
when the first test of their ``xdist_group`` starts (tests/conftest.py groups them).  The
requirements are what the jobs log with every model (:func:`jobs.dependencies.model_requirements`),
installed with pip alone; the environment is deleted at the end of the session.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobs.dependencies import model_requirements
from tests.fixtures_runs import shared_run

__all__ = ["ModelEnv", "model_env"]

_STASH = pytest.StashKey["ModelEnv"]()
_GROUPS = pytest.StashKey[set]()  # under pytest-xdist: the shared runs (groups) of the tests that use it


@dataclass
class ModelEnv:
    root: Path
    requirements: list[str]
    proc: subprocess.Popen = field(repr=False)
    started: float
    finished: float | None = None

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def log(self) -> Path:
        return self.root / "build.log"

    @classmethod
    def start(cls) -> ModelEnv:
        root = Path(tempfile.mkdtemp(prefix="stable-snn-model-env-"))
        requirements = model_requirements()
        (root / "requirements.txt").write_text("\n".join(requirements) + "\n")
        # --no-compile: one process runs in it and compiles only what it imports (measured on 2 cores: pip
        # 38 s of CPU instead of 72, that process 8 s instead of 3)
        script = (f"{sys.executable} -m venv {root / 'venv'} && {root / 'venv/bin/python'} -m pip install --quiet "
                  f"--disable-pip-version-check --no-compile -r {root / 'requirements.txt'}")
        with open(root / "build.log", "w") as log:
            proc = subprocess.Popen(["nice", "-n", "10", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=root)
        return cls(root, requirements, proc, time.monotonic())

    def wait(self, timeout: float) -> tuple[float, float]:
        """Block until the environment is built; returns (seconds waited here, seconds the build took)."""
        t0 = time.monotonic()
        rc = self.proc.wait(timeout=timeout)
        self.finished = self.finished or time.monotonic()
        assert rc == 0, f"building the model environment failed (rc {rc}):\n{self.log.read_text()[-4000:]}"
        return time.monotonic() - t0, self.finished - self.started

    def discard(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def pytest_collection_finish(session) -> None:
    if session.config.option.collectonly:
        return
    users = [item for item in session.items if "model_env" in getattr(item, "fixturenames", ())]
    if not users:
        return
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker
        session.config.stash[_GROUPS] = {shared_run(item) for item in users} - {None}
    else:
        session.config.stash[_STASH] = ModelEnv.start()


def pytest_runtest_setup(item) -> None:
    if _STASH not in item.config.stash and shared_run(item) in item.config.stash.get(_GROUPS, set()):
        item.config.stash[_STASH] = ModelEnv.start()


def pytest_sessionfinish(session) -> None:
    env = session.config.stash.get(_STASH, None)
    if env is not None:
        env.discard()


@pytest.fixture(scope="session")
def model_env(request) -> ModelEnv:
    env = request.config.stash.get(_STASH, None)
    if env is None:  # not seen at collection (e.g. requested dynamically): build it now
        env = request.config.stash[_STASH] = ModelEnv.start()
    return env
