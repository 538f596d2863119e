"""Train / validation / test datasets for one run.

The validation split is held out of the training set and is what checkpoints are selected on;
the test set is never used for model selection. Subsets are drawn with a class-balanced seeded
order (every prefix holds each class in proportion, to within one image), so a 5,000-image
validation split of CIFAR-10 has exactly 500 images per class.

The subsets are drawn from the labels alone, so for the Parquet layout only the images the three
datasets use are decoded (a 256/256/1 run decodes 513 images, not 60,000); when they are more
than half a split, the whole split is decoded instead (and shared with :func:`load_arrays`' cache).
Either way the datasets serve the same images, labels and augmentation draws.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stable_snn.data.arrays import ImageArrays, check_dataset
from stable_snn.data.dataset import CIFARArrayDataset
from stable_snn.data.formats import check_format, resolve_format
from stable_snn.data.loading import load_arrays, load_labels, load_rows


@dataclass(frozen=True, eq=False)
class Splits:
    """The three datasets of a run: augmented ``train``, plain ``val`` (held out of train) and ``test``."""

    train: CIFARArrayDataset
    val: CIFARArrayDataset
    test: CIFARArrayDataset
    num_classes: int
    classes: tuple[str, ...]


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded order of ``range(N)`` in which every prefix is class-balanced.

    Images are shuffled, then sorted by ``(rank within class + 1/2) / class size`` (stable), so a
    prefix of length m holds round(m * share) images of each class, to within one.

    Args:
        labels: int ``[N]`` class indices.
        rng: the source of the shuffle.

    Returns:
        int64 ``[N]``, a permutation of ``range(N)``.
    """
    n = len(labels)
    perm = rng.permutation(n)
    permuted = np.asarray(labels)[perm]
    counts = np.bincount(permuted)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    by_class = np.argsort(permuted, kind="stable")
    ranks = np.empty(n, dtype=np.int64)
    ranks[by_class] = np.arange(n) - np.repeat(starts, counts)
    keys = (ranks + 0.5) / counts[permuted]
    return perm[np.argsort(keys, kind="stable")].astype(np.int64)


def split_indices(labels: np.ndarray, *, val_size: int, train_subset: int | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted (train, val) index arrays into a training set with ``labels`` (int ``[N]``).

    ``val`` holds ``val_size`` images; ``train`` holds ``train_subset`` of the rest (None = all).
    """
    n = len(labels)
    wanted_train = n - val_size if train_subset is None else train_subset
    if val_size + wanted_train > n or wanted_train < 1:
        raise ValueError(f"val_size={val_size} and train_subset={train_subset} do not fit in the "
                         f"{n} training images (need val_size + train_subset <= {n} and at least one "
                         f"training image)")
    order = balanced_order(labels, rng)
    val, train = order[:val_size], order[val_size:val_size + wanted_train]
    return np.sort(train), np.sort(val)


def subset_indices(labels: np.ndarray, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-balanced subset of ``size`` images (None = all) of int ``[N]`` ``labels``."""
    n = len(labels)
    if size is None:
        return np.arange(n, dtype=np.int64)
    if size > n:
        raise ValueError(f"subset of {size} images asked for, but the split holds {n}")
    return np.sort(balanced_order(labels, rng)[:size])


def subset_generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The generators of ``seed``'s train/validation split and of its test subset."""
    split_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(split_seq), np.random.default_rng(test_seq)


def train_val_indices(dataset: str, root: str | os.PathLike, *, format: str = "auto", download: bool = False,
                      val_size: int = 5000, train_subset: int | None = None,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The (train, val) indices :func:`build_splits` draws with these arguments, from the labels alone
    (for the Parquet layout no image is decoded): sorted int64 ``[train_subset]`` and ``[val_size]``."""
    labels, _ = load_labels(dataset, root, "train", format=format, download=download)
    return split_indices(labels, val_size=val_size, train_subset=train_subset, rng=subset_generators(seed)[0])


def _check_count(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be an int >= {minimum}{none}, got {value!r}")


def _load_subsets(dataset: str, root: str | os.PathLike, split: str, *, format: str, download: bool,
                  choose: Callable[[np.ndarray], tuple[np.ndarray, ...]]
                  ) -> tuple[ImageArrays, np.ndarray | None, tuple[np.ndarray, ...]]:
    """Draw index sets from ``split``'s labels with ``choose`` and load the images they use.

    ``format`` is a resolved layout (``"parquet"`` or ``"torchvision"``). Returns ``(arrays, rows,
    chosen)``: ``chosen = choose(labels)``; ``arrays`` holds the whole split (``rows`` None) or, for
    Parquet when the chosen sets use at most half the split, only the images at ``rows`` (the
    sorted union of the chosen sets), the only ones decoded.
    """
    if format != "parquet":  # torchvision: the pickled arrays load fast, and whole
        arrays = load_arrays(dataset, root, split, format=format, download=download)
        return arrays, None, choose(arrays.labels)
    labels, _ = load_labels(dataset, root, split, format=format)
    chosen = choose(labels)
    rows = np.unique(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)
    if 2 * len(rows) > len(labels):
        return load_arrays(dataset, root, split, format=format), None, chosen
    return load_rows(dataset, root, split, rows, format=format), rows, chosen


def build_splits(dataset: str, root: str | os.PathLike, *, format: str = "auto", download: bool = False,
                 val_size: int = 5000, train_subset: int | None = None, test_subset: int | None = None,
                 seed: int = 0, augment: bool = True, cutout: int = 16) -> Splits:
    """Load ``dataset`` from ``root`` and cut it into train / val / test datasets.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        root, format, download: as for :func:`~stable_snn.data.load_arrays`.
        val_size: images held out of the training set for checkpoint selection (0 = none).
        train_subset: training images kept from the rest (None = all of the rest).
        test_subset: test images kept (None = all).
        seed: non-negative int; seeds the subsets and the augmentation. Same seed, same splits.
        augment: apply the paper's augmentation to ``train`` (``val`` and ``test`` never are).
        cutout: Cutout hole side in pixels (0 = no Cutout).

    Returns:
        :class:`Splits`; every dataset yields ``(float32 [3, 32, 32] in [0, 1], int label)``.

    Raises:
        ValueError: an invalid argument (all are checked before any image is decoded), or sizes
            that do not fit the data.
        DatasetNotFoundError: no data in a known layout under ``root``.
    """
    check_dataset(dataset)
    check_format(format)
    _check_count("val_size", val_size, minimum=0)
    _check_count("train_subset", train_subset, minimum=1, optional=True)
    _check_count("test_subset", test_subset, minimum=1, optional=True)
    _check_count("seed", seed, minimum=0)
    _check_count("cutout", cutout, minimum=0)
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be a bool, got {augment!r}")
    if cutout > 32:
        raise ValueError(f"cutout must be at most 32 (the image side), got {cutout}")
    # fail on missing files before decoding either split
    layouts = {split: resolve_format(dataset, root, split, format=format, download=download)
               for split in ("train", "test")}

    split_rng, test_rng = subset_generators(seed)
    train_arrays, train_rows, (train_idx, val_idx) = _load_subsets(
        dataset, root, "train", format=layouts["train"], download=download,
        choose=lambda labels: split_indices(labels, val_size=val_size, train_subset=train_subset, rng=split_rng))
    test_arrays, test_rows, (test_idx,) = _load_subsets(
        dataset, root, "test", format=layouts["test"], download=download,
        choose=lambda labels: (subset_indices(labels, test_subset, test_rng),))
    return Splits(
        train=CIFARArrayDataset(train_arrays, train_idx, augment=augment, cutout=cutout, seed=seed, rows=train_rows),
        val=CIFARArrayDataset(train_arrays, val_idx, augment=False, cutout=cutout, seed=seed, rows=train_rows),
        test=CIFARArrayDataset(test_arrays, test_idx, augment=False, cutout=cutout, seed=seed, rows=test_rows),
        num_classes=train_arrays.num_classes,
        classes=train_arrays.classes,
    )
