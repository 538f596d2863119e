"""Logging set-up for job processes (drivers, Ray workers and tasks)."""
from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """One stream handler on stdout with timestamps; idempotent."""
    root = logging.getLogger()
    root.setLevel(level)
    for noisy in ("urllib3", "alembic", "mlflow.store", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if root.handlers:  # Ray workers and pytest already route the root logger
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
