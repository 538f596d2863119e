"""Checkpoint folders with checksums, loadable with ``torch.load(weights_only=True)``, and the files
of a run's storage folder.

A checkpoint folder holds ``state.pt`` (model, optimiser, scheduler, epoch, RNG states,
history), ``config.yaml`` (the resolved :class:`~jobs.config.JobConfig`) and
``checksums.json`` (SHA-256 of each file, written last).  Loading verifies every
checksum first: a truncated or tampered checkpoint is refused with a message naming
the file, and nothing is unpickled beyond tensors and plain containers.  The run's folder
(``<storage>/<run.name>``, a local path or a pyarrow URI) holds the checkpoints and a few
small files (Ray Train's own records, the driver record, the non-finite-loss marker).
"""
from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from stable_snn.config import build_network, dump_config
from stable_snn.models import SpikingNetwork

from ..checksums import verify_checksums, write_checksums
from ..config import JobConfig, read_stored_config
from ..errors import CheckpointError
# read_run_file, run_path and write_run_file are also used from here by the other training modules
from ..storage import filesystem, is_folder, read_run_file, run_path, write_run_file  # noqa: F401

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
DRIVER_FILE = "driver.json"  # the Ray session and job of the run's latest driver
NONFINITE_MARKER = "nonfinite-loss.json"  # why and where the run stopped on a non-finite loss
CHECKPOINT_DIR = re.compile(r"checkpoint_epoch_(\d+)$")


def save_checkpoint(folder: Path, state: dict[str, Any], cfg: JobConfig) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(dump_config(cfg))
    write_checksums(folder)
    return folder


def load_checkpoint(folder: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], JobConfig]:
    """Verify and load ``(state, config)``; never unpickles code."""
    folder = Path(folder)
    verify_checksums(folder)
    try:
        state = torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:  # checksums matched, yet torch refuses it: not a weights-only file
        raise CheckpointError(f"checkpoint {folder}: {STATE_FILE} cannot be loaded with weights_only=True ({e})") from e
    return state, read_stored_config(folder / CONFIG_FILE)


def load_ray_checkpoint(checkpoint, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], JobConfig]:
    """:func:`load_checkpoint` of a ``ray.train.Checkpoint`` (local or in remote storage)."""
    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder), map_location)


def network_of(state: dict[str, Any], cfg: JobConfig) -> SpikingNetwork:
    """The network of a checkpoint: built from its config, with its weights."""
    model = build_network(cfg)
    model.load_state_dict(state["model"])
    return model


# -- the checkpoints of a run in its storage folder (a local path or a pyarrow URI) ------------


def list_checkpoints(storage: str, run_name: str) -> dict[int, str]:
    """``{epoch: path}`` of the ``checkpoint_epoch_NNNN`` folders in the run's storage folder."""
    base = run_path(storage, run_name)
    fs, path = filesystem(base)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return {}
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.Directory and (m := CHECKPOINT_DIR.match(info.base_name)):
            found[int(m.group(1))] = f"{base}/{info.base_name}"
    return dict(sorted(found.items()))


def latest_registered_checkpoint(storage: str, run_name: str) -> str | None:
    """The location of the checkpoint a relaunch of the run resumes from: the latest checkpoint Ray
    Train registered for it (``ray.train.Result.from_path``), None for a run without one."""
    # Imported here: a job checks its input (this included) before Ray loads.
    import ray.train

    path = run_path(storage, run_name)
    if not is_folder(path):
        return None
    try:
        result = ray.train.Result.from_path(path)
    except RuntimeError:  # no record there: Ray Train has not registered a checkpoint yet (Ray 2.60.0)
        return None
    except Exception as e:  # its record is unreadable (Ray raises an error type of its internals)
        raise CheckpointError(f"{path}: Ray Train's record of the run's checkpoints cannot be read ({e})") from e
    return None if result.checkpoint is None else checkpoint_location(storage, run_name, result.checkpoint)


def checkpoint_location(storage: str, run_name: str, checkpoint) -> str:
    """Where a ``ray.train.Checkpoint`` of the run lies, as a local path or a URI (``s3://...``) that
    the functions here take; its own ``path`` is a path inside its filesystem, without the scheme."""
    return f"{run_path(storage, run_name)}/{checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}"


@contextlib.contextmanager
def local_folder(path: str) -> Iterator[Path]:
    """A checkpoint folder given as a local path or a storage URI, as a local folder (a copy for a URI)."""
    if "://" not in path:
        if not Path(path).is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        yield Path(path)
        return
    fs, remote = filesystem(path)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pafs.copy_files(remote, tmp, source_filesystem=fs)
        except OSError as e:
            raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from e
        yield Path(tmp)


def verify_checkpoint_at(path: str) -> None:
    """Verify the checksums of a checkpoint folder given as a local path or a storage URI."""
    with local_folder(path) as folder:
        try:
            verify_checksums(folder)
        except CheckpointError as e:
            raise CheckpointError(str(e).replace(str(folder), path)) from None


def intact_checkpoints(found: dict[int, str]) -> tuple[dict[int, str], dict[int, CheckpointError]]:
    """``({epoch: path} whose checksums hold, {epoch: the error} of the others)`` of ``{epoch: path}``."""
    intact, damaged = {}, {}
    for epoch, path in found.items():
        try:
            verify_checkpoint_at(path)
            intact[epoch] = path
        except CheckpointError as err:
            damaged[epoch] = err
    return intact, damaged


def load_checkpoint_at(path: str, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], JobConfig]:
    """:func:`load_checkpoint` of a folder given as a local path or a storage URI."""
    with local_folder(path) as folder:
        return load_checkpoint(folder, map_location)


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
