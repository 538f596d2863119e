"""``load_arrays``: one split of a dataset, from whichever layout its root holds.

Also :func:`load_labels` and :func:`load_rows`, which read a split's labels and a subset of its
images; for the Parquet layout they decode no image, resp. only the subset's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stable_snn.data.arrays import ImageArrays, check_class_count, check_classes, check_rows, read_only
from stable_snn.data.formats import parquet_file, resolve_format
from stable_snn.data.parquet import read_parquet_labels, read_parquet_rows, read_parquet_split
from stable_snn.data.torchvision_cifar import read_torchvision_split


def load_arrays(dataset: str, root: str | os.PathLike, split: str, *, format: str = "auto",
                download: bool = False) -> ImageArrays:
    """Load ``split`` (``"train"`` or ``"test"``) of ``dataset`` (``"cifar10"``/``"cifar100"``) into memory.

    Args:
        dataset: one of :data:`~stable_snn.data.DATASETS`.
        root: the data root: a folder with ``train.parquet``/``test.parquet``, or the folder torchvision
            keeps ``cifar-10-batches-py`` / ``cifar-100-python`` in.
        split: ``"train"`` or ``"test"``.
        format: ``"auto"`` (detect from the root), ``"parquet"`` or ``"torchvision"``.
        download: let torchvision download the data if it is absent (torchvision layout only).

    Returns:
        :class:`ImageArrays`: uint8 images ``[N, 32, 32, 3]``, int64 labels ``[N]``, class names.
        The arrays are read-only (they may be shared through a cache).

    Raises:
        ValueError: unknown dataset, split or format (checked before anything is read), or data
            whose class count does not match ``dataset``.
        DatasetNotFoundError: no data in a known layout under ``root``.
    """
    chosen = resolve_format(dataset, root, split, format=format, download=download)
    if chosen == "parquet":
        path = parquet_file(Path(root), split)
        return check_class_count(read_parquet_split(path), dataset, str(path))
    arrays = read_torchvision_split(dataset, root, split, download=download)
    return check_class_count(arrays, dataset, f"torchvision folder under {root}")


def load_labels(dataset: str, root: str | os.PathLike, split: str, *, format: str = "auto",
                download: bool = False) -> tuple[np.ndarray, tuple[str, ...]]:
    """The labels and class names of ``split`` of ``dataset``; arguments and errors as for :func:`load_arrays`.

    Parquet layout: only the ``label`` column is read, no image is decoded (cached per process).
    Torchvision layout: the split is read with :func:`load_arrays`.

    Returns:
        int64 ``[N]`` labels (read-only), equal to ``load_arrays(...).labels``; the class names.
    """
    chosen = resolve_format(dataset, root, split, format=format, download=download)
    if chosen == "parquet":
        path = parquet_file(Path(root), split)
        labels, classes = read_parquet_labels(path)
        return labels, check_classes(classes, dataset, str(path))
    arrays = load_arrays(dataset, root, split, format=chosen, download=download)
    return arrays.labels, arrays.classes


def load_rows(dataset: str, root: str | os.PathLike, split: str, rows: np.ndarray | Sequence[int], *,
              format: str = "auto", download: bool = False) -> ImageArrays:
    """The images and labels at positions ``rows`` (int ``[M]``, strictly increasing) of ``split``.

    Arguments and errors otherwise as for :func:`load_arrays`. Parquet layout: only those rows are
    decoded (cached per process, see :func:`~stable_snn.data.parquet.read_parquet_rows`).
    Torchvision layout: the split is read with :func:`load_arrays` and sliced.

    Returns:
        :class:`ImageArrays` of length ``M`` (read-only) whose item ``j`` is item ``rows[j]`` of
        ``load_arrays(dataset, root, split, ...)``.
    """
    chosen = resolve_format(dataset, root, split, format=format, download=download)
    if chosen == "parquet":
        path = parquet_file(Path(root), split)
        return check_class_count(read_parquet_rows(path, rows), dataset, str(path))
    arrays = load_arrays(dataset, root, split, format=chosen, download=download)
    rows = check_rows(rows, len(arrays))
    return ImageArrays(read_only(arrays.images[rows]), read_only(arrays.labels[rows]), arrays.classes)
