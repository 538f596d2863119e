"""Checkpoint folders with checksums, loadable with ``torch.load(weights_only=True)``.

A checkpoint folder holds ``state.pt`` (model, optimiser, scheduler, epoch, RNG states,
history), ``config.yaml`` (the resolved :class:`~stable_snn.config.TrainConfig`) and
``checksums.json`` (SHA-256 of each file, written last).  Loading verifies every
checksum first: a truncated or tampered checkpoint is refused with a message naming
the file, and nothing is unpickled beyond tensors and plain containers.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from stable_snn.config import TrainConfig, config_from_dict, dump_config

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
CHECKSUM_FILE = "checksums.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or does not match its recorded checksums."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUM_FILE)
    (folder / CHECKSUM_FILE).write_text(json.dumps({p.name: sha256(p) for p in files}, indent=1))


def verify_checksums(folder: Path) -> None:
    folder = Path(folder)
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {CHECKSUM_FILE}: it is incomplete or not a stable-snn checkpoint")
    try:
        expected = json.loads(listing.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {folder}: {CHECKSUM_FILE} is corrupt ({e})") from e
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: file {name} is missing")
        if sha256(path) != digest:
            raise CheckpointError(f"checkpoint {folder}: file {name} does not match its recorded SHA-256 (truncated or tampered)")


def save_checkpoint(folder: Path, state: dict[str, Any], cfg: TrainConfig) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(dump_config(cfg))
    write_checksums(folder)
    return folder


def load_checkpoint(folder: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], TrainConfig]:
    """Verify and load ``(state, config)``; never unpickles code."""
    folder = Path(folder)
    verify_checksums(folder)
    state = torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
    cfg = config_from_dict(yaml.safe_load((folder / CONFIG_FILE).read_text()))
    return state, cfg


def rng_state() -> dict[str, Any]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
