"""Session-wide artifacts of real job runs, shared by the slow tests that need a trained model.

- ``quick_run`` -> :class:`QuickRun`: the quick preset submitted once per session with
  ``ray job submit`` (1 epoch of 16-image batches, 2 workers, the TINY data cut) against the session's Ray head and
  MLflow server; its MLflow run, checkpoints and the registered model ``test-quick@candidate``.
  Tests that read it must not change what others read: they may add aliases, tags or runs of
  their own names, never move ``candidate`` or delete anything.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.jobs.helpers import REPO, TINY, job_env

__all__ = ["QuickRun", "quick_run"]

QUICK_RUN_NAME = "quick-submit"
QUICK_MODEL = "test-quick"


@dataclass(frozen=True)
class QuickRun:
    """A finished ``jobs.train`` run of the quick preset, submitted with ``ray job submit``."""

    tracking_uri: str
    run_name: str
    registered_model: str  # registered as f"models:/{registered_model}@candidate"
    storage: Path  # STABLE_SNN_STORAGE_PATH of the run: checkpoints in storage / run_name
    env: dict  # the job environment it ran with
    output: subprocess.CompletedProcess

    @property
    def model_uri(self) -> str:
        return f"models:/{self.registered_model}@candidate"

    @property
    def checkpoints(self) -> list[Path]:
        return sorted((self.storage / self.run_name).glob("checkpoint_epoch_*"))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, mlflow_server, ray_head, cifar10) -> QuickRun:
    storage = tmp_path_factory.mktemp("quick-run") / "storage"
    env = job_env(mlflow_server.address, storage, cifar10.root)
    runtime_env = {"env_vars": {**{k: env[k] for k in
                                   ("MLFLOW_TRACKING_URI", "STABLE_SNN_STORAGE_PATH", "STABLE_SNN_DATA_ROOT", "RAY_AUTH_MODE")},
                                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}}  # a sample a second: the run is short
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_head.address,
        "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "-m", "jobs.train", "--config", "jobs/configs/quick.yaml", "--set", f"run.name={QUICK_RUN_NAME}",
        "--set", "optim.epochs=1", "--set", f"run.registered_model={QUICK_MODEL}", *TINY, *cifar10.overrides()[2:],
        # 16 steps a worker instead of 4: enough for predictions that depend on the image, so that an
        # attack on this model changes some of them (tests/jobs/evaluate/test_evaluate.py)
        "--set", "optim.batch_size=16",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return QuickRun(mlflow_server.address, QUICK_RUN_NAME, QUICK_MODEL, storage, env, out)
