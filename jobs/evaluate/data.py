"""The test images an evaluation runs on: the whole test split, or a class-balanced subset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stable_snn.data import DatasetNotFoundError, load_arrays
from stable_snn.data.splits import subset_indices

from ..config import JobConfig
from ..errors import EvaluationInputError
from .report import data_key


@dataclass
class TestSet:
    images: torch.Tensor  # [N, 3, 32, 32] float in [0, 1]
    labels: torch.Tensor  # [N] int64
    indices: torch.Tensor  # [N] positions in the test split
    dataset: str
    root: str
    key: str  # what "the same data" means when comparing model versions


def load_test_set(cfg: JobConfig, dataset_root: str | None, limit: int | None, data_seed: int = 0) -> TestSet:
    """The model's dataset's test split from ``dataset_root`` (default: the model's data root); with
    ``limit`` a class-balanced subset drawn with ``data_seed`` (nested: a smaller limit gives a prefix
    of the same order; the Parquet copy is sorted by class, so "the first N" would be one class)."""
    dataset = cfg.data.dataset
    root = Path(dataset_root).expanduser().resolve() if dataset_root else cfg.data.resolved_root()
    try:
        arrays = load_arrays(dataset, root, "test", format=cfg.data.format if not dataset_root else "auto",
                             download=cfg.data.download)
    except (DatasetNotFoundError, ValueError) as e:
        raise EvaluationInputError(str(e)) from None
    total = len(arrays.labels)
    size = None if limit is None or limit >= total else limit
    idx = subset_indices(arrays.labels, size, np.random.default_rng(data_seed))
    images = torch.from_numpy(arrays.images[idx]).permute(0, 3, 1, 2).float().div_(255)
    labels = torch.from_numpy(arrays.labels[idx]).long()
    return TestSet(images, labels, torch.from_numpy(idx).long(), dataset, str(root), data_key(dataset, size, data_seed))
