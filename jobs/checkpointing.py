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
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from stable_snn.config import TrainConfig, config_from_dict, dump_config

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
CHECKSUM_FILE = "checksums.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the registered checkpoints
CHECKPOINT_DIR = re.compile(r"checkpoint_epoch_(\d+)$")


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
    try:
        state = torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:  # checksums matched, yet torch refuses it: not a weights-only file
        raise CheckpointError(f"checkpoint {folder}: {STATE_FILE} cannot be loaded with weights_only=True ({e})") from e
    cfg = config_from_dict(yaml.safe_load((folder / CONFIG_FILE).read_text()))
    return state, cfg


# -- the checkpoints of a run in its storage folder (a local path or a pyarrow URI) ------------


def run_path(storage: str, run_name: str) -> str:
    """``<storage>/<run_name>``: Ray Train's experiment folder of the run."""
    return f"{storage.rstrip('/')}/{run_name}"


def _fs(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path)


def read_run_file(storage: str, run_name: str, filename: str) -> str | None:
    """The text of ``<storage>/<run_name>/<filename>``, or None when it does not exist."""
    import pyarrow.fs as pafs

    fs, path = _fs(run_path(storage, run_name) + "/" + filename)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_run_file(storage: str, run_name: str, filename: str, text: str) -> None:
    fs, path = _fs(run_path(storage, run_name) + "/" + filename)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def delete_run_file(storage: str, run_name: str, filename: str) -> None:
    import pyarrow.fs as pafs

    fs, path = _fs(run_path(storage, run_name) + "/" + filename)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def list_checkpoints(storage: str, run_name: str) -> dict[int, str]:
    """``{epoch: path}`` of the ``checkpoint_epoch_NNNN`` folders in the run's storage folder."""
    import pyarrow.fs as pafs

    base = run_path(storage, run_name)
    fs, path = _fs(base)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return {}
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.Directory and (m := CHECKPOINT_DIR.match(info.base_name)):
            found[int(m.group(1))] = f"{base}/{info.base_name}"
    return dict(sorted(found.items()))


def latest_registered_checkpoint(storage: str, run_name: str) -> str | None:
    """The path of the checkpoint a relaunch of the run resumes from: the latest one in Ray
    Train's snapshot of registered checkpoints (None for a new run)."""
    text = read_run_file(storage, run_name, RAY_SNAPSHOT)
    if text is None:
        return None
    try:
        latest = json.loads(text).get("latest_checkpoint_result")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{run_path(storage, run_name)}/{RAY_SNAPSHOT} is corrupt ({e})") from e
    return f"{run_path(storage, run_name)}/{latest['checkpoint_dir_name']}" if latest else None


def verify_checkpoint_at(path: str) -> None:
    """Verify the checksums of a checkpoint folder given as a local path or a storage URI."""
    if "://" not in path:
        if not Path(path).is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        verify_checksums(Path(path))
        return
    import tempfile

    import pyarrow.fs as pafs

    fs, remote = _fs(path)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pafs.copy_files(remote, tmp, source_filesystem=fs)
        except OSError as e:
            raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from e
        try:
            verify_checksums(Path(tmp))
        except CheckpointError as e:
            raise CheckpointError(str(e).replace(tmp, path)) from None


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
