"""What a driver checks before any compute: the dataset is where the config says, and the run,
if it exists, can be resumed.  Imports neither Ray nor MLflow."""
from __future__ import annotations

import json
import logging

from stable_snn.config import ConfigError, apply_overrides
from stable_snn.data.formats import resolve_format

from ..config import JobConfig
from ..errors import NonFiniteLossError
from .checkpoints import NONFINITE_MARKER, latest_registered_checkpoint, read_run_file, run_path, verify_checkpoint_at

log = logging.getLogger("stable_snn.train")


def preflight(cfg: JobConfig) -> JobConfig:
    """The config with its locations resolved by the driver (data root, storage path), so every worker
    on every node reads the same ones and the logged config says where they were; refuses a data
    root that holds no dataset in a known layout."""
    root = cfg.data.resolved_root()
    try:
        resolve_format(cfg.data.dataset, root, "train", format=cfg.data.format, download=cfg.data.download)
    except ValueError as e:  # data.format=parquet with data.download=true; a missing dataset is DatasetNotFoundError
        raise ConfigError(f"data.format={cfg.data.format!r} with data.download={cfg.data.download}: {e}") from None
    return apply_overrides(cfg, [f"data.root={root}", f"run.storage_path={cfg.run.resolved_storage()}"])


def check_resumable(cfg: JobConfig) -> None:
    """Refuse, before any compute, a relaunch that could only fail again: the run stopped on a
    non-finite loss, or the checkpoint it would resume from is truncated or tampered with."""
    storage, name = cfg.run.resolved_storage(), cfg.run.name
    marker = read_run_file(storage, name, NONFINITE_MARKER)
    if marker is not None:
        try:
            message = json.loads(marker)["message"]
        except (ValueError, KeyError):
            message = f"run {name!r} stopped on a non-finite loss"
        raise NonFiniteLossError(
            f"{message}. Relaunching it would repeat that: choose a new run.name (or delete "
            f"{run_path(storage, name)}/{NONFINITE_MARKER} to try again)"
        )
    latest = latest_registered_checkpoint(storage, name)
    if latest is not None:
        verify_checkpoint_at(latest)
        log.info("run %s resumes from %s (checksums verified)", name, latest)
