"""Helpers for the job tests: run a job as a subprocess against the test services."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "jobs" / "configs" / "quick.yaml"

# A quick run cut down for tests: 512 training images, 64 validation images.
TINY = [
    "--set", "data.train_subset=512", "--set", "data.val_size=256", "--set", "validation.subset=64",
    "--set", "validation.batch_size=64",
]


def job_env(mlflow_uri: str, storage: Path, data_root: Path, ray_address: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "STABLE_SNN_STORAGE_PATH": str(storage),
        "STABLE_SNN_DATA_ROOT": str(data_root),
        "RAY_AUTH_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    })
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def run_job(module: str, args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, which must start with the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
