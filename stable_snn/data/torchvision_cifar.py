"""Reader for the torchvision layout (``cifar-10-batches-py`` / ``cifar-100-python``).

Reading goes through ``torchvision.datasets.CIFAR10`` / ``CIFAR100``, which verify every file
against the official MD5 checksums and download the archive only when ``download=True``.
torchvision is imported on first use: its package import loads its models and ops, and through them
torch's compiler stack (about 2.5 s of CPU in every process that imports the data package).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from stable_snn.data.arrays import ImageArrays, check_dataset, check_split, read_only
from stable_snn.data.formats import not_found

logger = logging.getLogger(__name__)


def torchvision_class(dataset: str) -> type:
    """The torchvision dataset class reading ``dataset``."""
    import torchvision

    return {"cifar10": torchvision.datasets.CIFAR10,
            "cifar100": torchvision.datasets.CIFAR100}[check_dataset(dataset)]


def read_torchvision_split(dataset: str, root: str | os.PathLike, split: str, *,
                           download: bool = False) -> ImageArrays:
    """Read ``split`` of ``dataset`` from torchvision's folder under ``root``.

    Returns:
        :class:`ImageArrays` with uint8 images ``[N, 32, 32, 3]`` (N = 50,000 train / 10,000 test for
        the real releases), int64 labels ``[N]`` (CIFAR-100: the fine labels) and the class names.

    Raises:
        DatasetNotFoundError: the files are missing or fail torchvision's integrity check.
    """
    check_split(split)
    root = Path(root)
    try:
        source = torchvision_class(dataset)(str(root), train=split == "train", download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        raise not_found(dataset, root, f"torchvision could not read it ({err})") from err
    images = np.ascontiguousarray(source.data, dtype=np.uint8)
    labels = np.asarray(source.targets, dtype=np.int64)
    logger.info("read %d %s %s images from %s", len(images), dataset, split, root)
    return ImageArrays(read_only(images), read_only(labels), tuple(source.classes))
