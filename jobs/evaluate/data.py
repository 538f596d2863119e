"""The images an evaluation runs on: the test split, or the validation split of the model's own run.

The validation split is rebuilt from the model's stored config and seed exactly as the training
run built it (:func:`jobs.training.validation.load_splits`): images held out of the training set,
which no version trained on in that run. Promotion decides there; the test split only reports.
Either split can be cut to a class-balanced subset of ``limit`` images drawn with ``data_seed``
(nested: a smaller limit gives a prefix of the same order; the Parquet copy is sorted by class,
so "the first N" would be one class).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stable_snn.data import DatasetNotFoundError, load_arrays, stack_dataset
from stable_snn.data.splits import subset_indices

from ..config import JobConfig
from ..errors import EvaluationInputError
from ..training.validation import load_splits
from . import check_split
from .report import data_key


@dataclass
class EvalSet:
    images: torch.Tensor  # [N, 3, 32, 32] float in [0, 1]
    labels: torch.Tensor  # [N] int64
    indices: torch.Tensor  # [N] positions in the dataset's split (test, or train for the validation split)
    dataset: str
    split: str
    root: str
    key: str  # what "the same data" means when comparing model versions


def _validation_arrays(cfg: JobConfig, root: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float ``[M, 3, 32, 32]`` in [0, 1], labels ``[M]``, positions in the training split) of the run's
    validation split, rebuilt from its config and seed."""
    if root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root), format="auto"))
    val = load_splits(cfg).val
    images, labels = stack_dataset(val)
    return images, labels.numpy(), np.asarray(val.indices)


def load_eval_set(cfg: JobConfig, split: str, dataset_root: str | None, limit: int | None,
                  data_seed: int = 0) -> EvalSet:
    """``split`` (test or validation) of the model's dataset from ``dataset_root`` (default: the model's
    data root); with ``limit`` a class-balanced subset drawn with ``data_seed``."""
    check_split(split)
    dataset = cfg.data.dataset
    root = Path(dataset_root).expanduser().resolve() if dataset_root else None
    try:
        if split == "validation":
            images, labels, indices = _validation_arrays(cfg, root)
        else:
            arrays = load_arrays(dataset, root or cfg.data.resolved_root(), "test",
                                 format=cfg.data.format if root is None else "auto", download=cfg.data.download)
            images = arrays.images  # uint8 [N, 32, 32, 3], read-only: only the chosen rows are copied out
            labels, indices = arrays.labels, np.arange(len(arrays.labels))
    except (DatasetNotFoundError, ValueError) as e:
        raise EvaluationInputError(str(e)) from None
    total = len(labels)
    size = None if limit is None or limit >= total else limit
    keep = subset_indices(labels, size, np.random.default_rng(data_seed))
    if isinstance(images, np.ndarray):
        chosen = torch.from_numpy(images[keep]).permute(0, 3, 1, 2).float().div_(255)
    else:
        chosen = images[torch.from_numpy(keep)]
    return EvalSet(chosen.contiguous(), torch.from_numpy(np.asarray(labels)[keep]).long(),
                   torch.from_numpy(np.asarray(indices)[keep]).long(), dataset, split,
                   str(root or cfg.data.resolved_root()), data_key(dataset, split, size, data_seed))
