"""On-disk layouts a data root can hold, and how one is chosen for a root.

Two layouts are understood:

* ``parquet``: ``root/train.parquet`` and ``root/test.parquet`` (see :mod:`stable_snn.data.parquet`);
* ``torchvision``: the folder torchvision's CIFAR classes read and download,
  ``root/cifar-10-batches-py`` or ``root/cifar-100-python``.
"""

from __future__ import annotations

import os
from pathlib import Path

from stable_snn.data.arrays import check_dataset, check_split

FORMATS: tuple[str, ...] = ("auto", "parquet", "torchvision")
"""Values accepted for ``format``; ``auto`` picks one of the other two from the root's contents."""

TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
"""The folder torchvision's ``CIFAR10`` / ``CIFAR100`` keep under the root."""


class DatasetNotFoundError(FileNotFoundError):
    """No data in a known layout under the given root (or the layout there is incomplete)."""


def check_format(format: str) -> str:
    """Return ``format`` if it is one of :data:`FORMATS`, else raise ``ValueError``."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; allowed values: {', '.join(FORMATS)}")
    return format


def parquet_file(root: Path, split: str) -> Path:
    """Path of one split in the Parquet layout, ``root/<split>.parquet``."""
    return root / f"{split}.parquet"


def _how_to_get(dataset: str, root: Path) -> str:
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[dataset]
    return (f"To get {name}, set download=True (on the command line: --set data.download=true) to let "
            f"torchvision download it into {root}, or point data.root at a folder holding "
            f"train.parquet and test.parquet.")


def not_found(dataset: str, root: Path, problem: str) -> DatasetNotFoundError:
    """A :class:`DatasetNotFoundError` naming the root, the layouts looked for, and how to get the data."""
    looked_for = (f"looked for the Parquet layout ({parquet_file(root, 'train')}, {parquet_file(root, 'test')}) "
                  f"and the torchvision layout ({root / TORCHVISION_FOLDERS[dataset]})")
    return DatasetNotFoundError(f"No {dataset} data under '{root}': {problem}; {looked_for}. "
                                f"{_how_to_get(dataset, root)}")


def resolve_format(dataset: str, root: str | os.PathLike, split: str, *, format: str = "auto",
                   download: bool = False) -> str:
    """Choose the layout to read ``split`` of ``dataset`` from ``root``.

    ``auto`` picks ``parquet`` if ``root/train.parquet`` exists, ``torchvision`` if the torchvision
    folder exists or ``download`` is true. Raises :class:`DatasetNotFoundError` when the chosen
    layout's files are absent (unless torchvision may download them), ``ValueError`` for an unknown
    dataset, split or format, or for ``download=True`` with ``format="parquet"``.

    Returns:
        ``"parquet"`` or ``"torchvision"``.
    """
    check_dataset(dataset)
    check_split(split)
    check_format(format)
    if not isinstance(download, bool):
        raise ValueError(f"download must be a bool, got {download!r}")
    root = Path(root)
    if format == "parquet" and download:
        raise ValueError("download=True only applies to format='torchvision' (or 'auto'); "
                         "the Parquet layout is never downloaded")

    has_parquet = parquet_file(root, "train").is_file()
    has_torchvision = (root / TORCHVISION_FOLDERS[dataset]).is_dir()
    if format == "auto":
        if has_parquet:
            format = "parquet"
        elif has_torchvision or download:
            format = "torchvision"
        elif not root.exists():
            raise not_found(dataset, root, "the folder does not exist")
        elif not root.is_dir():
            raise not_found(dataset, root, "it is not a folder")
        else:
            raise not_found(dataset, root, "the folder exists but holds no known layout")

    if format == "parquet" and not parquet_file(root, split).is_file():
        raise not_found(dataset, root, f"format='parquet' but {parquet_file(root, split)} is missing")
    if format == "torchvision" and not (has_torchvision or download):
        raise not_found(dataset, root, f"format='torchvision' but {root / TORCHVISION_FOLDERS[dataset]} "
                                       f"is missing and download is off")
    return format
