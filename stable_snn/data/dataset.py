"""``CIFARArrayDataset``: a subset of in-memory CIFAR images served as float tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from stable_snn.data.arrays import IMAGE_SHAPE, ImageArrays, check_rows
from stable_snn.data.transforms import augment, sample_generator, to_float_chw

CROP_PADDING = 4
"""Zero padding of the random crop (paper: crop 32 with padding 4)."""


class CIFARArrayDataset(Dataset):
    """The images ``arrays.images[indices]`` as ``(float32 [3, 32, 32] in [0, 1], int label)`` pairs.

    ``arrays`` may hold only part of a split (as :func:`~stable_snn.data.build_splits` gives for
    Parquet data with small subsets, to decode only the images used): ``rows`` then names the
    position in the whole split of each image ``arrays`` holds, and ``indices`` (and the
    augmentation key below) are positions in the whole split, as if ``arrays`` held all of it.

    With ``augment=True`` each sample gets the paper's training augmentation (random crop with
    4-pixel zero padding, horizontal flip, Cutout of ``cutout`` pixels, 0 = no Cutout), drawn from
    a generator seeded by (``seed``, epoch, index into the split): reproducible, independent of
    DataLoader workers and of sample order. Call :meth:`set_epoch` before iterating an epoch to
    get its draws. The epoch lives in a shared-memory tensor, so it reaches DataLoader workers
    too, persistent ones included (they read it when they load a sample).

    Args:
        arrays: the split to draw from (all of it, or the images at ``rows`` of it).
        indices: int ``[M]`` positions in the split (None = all that ``arrays`` holds, in order).
        augment: apply the training augmentation.
        cutout: side of the Cutout hole in pixels, in ``[0, 32]``.
        seed: non-negative int seeding the augmentation.
        rows: None (``arrays`` is the whole split), or int ``[len(arrays)]``, strictly increasing:
            ``arrays`` item ``j`` is item ``rows[j]`` of the split. Every index must be in ``rows``.
    """

    def __init__(self, arrays: ImageArrays, indices: np.ndarray | None = None, *, augment: bool = False,
                 cutout: int = 16, seed: int = 0, rows: np.ndarray | None = None) -> None:
        if not isinstance(arrays, ImageArrays):
            raise ValueError(f"arrays must be ImageArrays, got {type(arrays).__name__}")
        if rows is not None:
            rows = check_rows(rows).copy()  # a private copy: it is made read-only below
            if len(rows) != len(arrays):
                raise ValueError(f"rows must name one position per image of arrays ({len(arrays)}), got {len(rows)}")
        if indices is None:
            indices = np.arange(len(arrays), dtype=np.int64) if rows is None else rows
        indices = np.asarray(indices)
        if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
            raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {list(indices.shape)}")
        indices = indices.astype(np.int64)
        if rows is None:
            if indices.size and (indices.min() < 0 or indices.max() >= len(arrays)):
                raise ValueError(f"indices must lie in [0, {len(arrays)}), "
                                 f"got range [{indices.min()}, {indices.max()}]")
            positions = indices
        else:
            positions = np.searchsorted(rows, indices)
            found = positions < len(rows)
            found[found] = rows[positions[found]] == indices[found]
            if not found.all():
                missing = indices[~found]
                raise ValueError(f"indices must be among the rows arrays holds; {missing.size} are not "
                                 f"(first: {int(missing[0])})")
            positions.flags.writeable = False
            rows.flags.writeable = False
        if not isinstance(augment, bool):
            raise ValueError(f"augment must be a bool, got {augment!r}")
        if isinstance(cutout, bool) or not isinstance(cutout, int) or not 0 <= cutout <= IMAGE_SHAPE[0]:
            raise ValueError(f"cutout must be an int in [0, {IMAGE_SHAPE[0]}], got {cutout!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.arrays = arrays
        self.rows = rows
        self.indices = indices
        self.indices.flags.writeable = False
        self._positions = positions  # into arrays; the same array as indices when rows is None
        self.augment = augment
        self.cutout = cutout
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation draws are served (set with :meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (a non-negative int), in this process and its workers."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch.fill_(int(epoch))

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of the underlying split."""
        return self.arrays.classes

    @property
    def labels(self) -> np.ndarray:
        """int64 ``[M]``, the labels of this subset in order."""
        return self.arrays.labels[self._positions]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        """Sample ``position``: image float32 ``[3, 32, 32]`` in [0, 1] and its label."""
        index, stored = int(self.indices[position]), int(self._positions[position])
        image = to_float_chw(self.arrays.images[stored])
        if self.augment:
            generator = sample_generator(self.seed, self.epoch, index)
            image = augment(image, generator, padding=CROP_PADDING, cutout_size=self.cutout)
        return image, int(self.arrays.labels[stored])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={len(self)}, augment={self.augment}, cutout={self.cutout}, "
                f"seed={self.seed}, epoch={self.epoch})")


def stack_dataset(dataset: CIFARArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of ``dataset`` at its current epoch as one batch, without a DataLoader.

    Returns:
        images float32 ``[M, 3, 32, 32]`` in [0, 1], labels int64 ``[M]``.
    """
    if len(dataset) == 0:
        return torch.empty((0, 3, *IMAGE_SHAPE[:2])), torch.empty((0,), dtype=torch.int64)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
