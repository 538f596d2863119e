"""Dataset names and the in-memory image container every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
"""Names accepted wherever a dataset is chosen."""

SPLITS: tuple[str, ...] = ("train", "test")
"""The two splits a CIFAR release ships with."""

IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
"""Height, width, channels of one stored image."""

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def check_dataset(dataset: str) -> str:
    """Return ``dataset`` if it is one of :data:`DATASETS`, else raise ``ValueError``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed values: {', '.join(DATASETS)}")
    return dataset


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise ``ValueError``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed values: {', '.join(SPLITS)}")
    return split


def num_classes_of(dataset: str) -> int:
    """Number of classes of ``dataset`` (10 for ``cifar10``, 100 for ``cifar100``)."""
    return _NUM_CLASSES[check_dataset(dataset)]


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """One split of a dataset held in memory.

    Attributes:
        images: uint8 ``[N, 32, 32, 3]``, channels last, as stored.
        labels: int64 ``[N]``, class indices in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` names label ``k``.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 numpy array, got {type(self.images).__name__} "
                             f"of dtype {getattr(self.images, 'dtype', None)}")
        if self.images.ndim != 4 or self.images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"images must have shape [N, 32, 32, 3], got {list(self.images.shape)}")
        if not isinstance(self.labels, np.ndarray) or self.labels.dtype != np.int64:
            raise ValueError(f"labels must be an int64 numpy array, got {type(self.labels).__name__} "
                             f"of dtype {getattr(self.labels, 'dtype', None)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape [N] = [{len(self.images)}], got {list(self.labels.shape)}")
        if not isinstance(self.classes, tuple) or not all(isinstance(c, str) for c in self.classes):
            raise ValueError("classes must be a tuple of str")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got range "
                             f"[{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)


def check_classes(classes: tuple[str, ...], dataset: str, source: str) -> tuple[str, ...]:
    """Raise ``ValueError`` if ``classes`` (the class names of ``source``) number other than ``dataset``'s."""
    expected = num_classes_of(dataset)
    if len(classes) != expected:
        raise ValueError(f"{source} holds {len(classes)} classes, but {dataset} has {expected}; "
                         f"is the data root pointing at the right dataset?")
    return classes


def check_class_count(arrays: ImageArrays, dataset: str, source: str) -> ImageArrays:
    """Raise ``ValueError`` if ``arrays`` has a class count other than ``dataset``'s."""
    check_classes(arrays.classes, dataset, source)
    return arrays


def read_only(array: np.ndarray) -> np.ndarray:
    """Mark ``array`` read-only (arrays shared through a cache must not be mutated) and return it."""
    array.flags.writeable = False
    return array


def check_rows(rows: object, size: int | None = None) -> np.ndarray:
    """``rows`` as a contiguous int64 ``[M]`` array of positions in a split of ``size`` images.

    Raises ``ValueError`` unless ``rows`` is a 1-D integer array (or sequence), strictly increasing,
    non-negative and, when ``size`` is given, below ``size``.
    """
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
        raise ValueError(f"rows must be a 1-D integer array, got {rows.dtype} {list(rows.shape)}")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size > 1 and not np.all(np.diff(rows) > 0):
        raise ValueError("rows must be strictly increasing")
    if rows.size and (rows[0] < 0 or (size is not None and rows[-1] >= size)):
        bound = "" if size is None else f", below {size}"
        raise ValueError(f"rows must be non-negative{bound}; got range [{rows[0]}, {rows[-1]}]")
    return rows
