"""SHA-256 checksums of the files of a folder: written last, verified before anything is loaded.

Checkpoint folders and the artifacts of a logged model both carry a ``checksums.json``; a file that
is missing, truncated or tampered with is refused with a message naming it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import CheckpointError

CHECKSUM_FILE = "checksums.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> Path:
    """Record the SHA-256 of every file in ``folder`` (written last: its presence marks the folder complete)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUM_FILE)
    path = folder / CHECKSUM_FILE
    path.write_text(json.dumps({p.name: sha256(p) for p in files}, indent=1))
    return path


def verify_checksums(folder: Path, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` (``"<what> <folder>: ..."``) unless every recorded file matches."""
    folder = Path(folder)
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        raise CheckpointError(f"{what} {folder} has no {CHECKSUM_FILE}: it is incomplete or not a stable-snn {what}")
    try:
        expected = json.loads(listing.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what} {folder}: {CHECKSUM_FILE} is corrupt ({e})") from e
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{what} {folder}: file {name} is missing")
        if sha256(path) != digest:
            raise CheckpointError(f"{what} {folder}: file {name} does not match its recorded SHA-256 (truncated or tampered)")
