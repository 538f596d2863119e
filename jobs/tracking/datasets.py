"""The data a training run learns and is validated on, as MLflow dataset inputs (the run's "Datasets").

Each split the run reads (``cifar10-train``, context ``training``; ``cifar10-val``, context
``validation``) is logged with its source (the file or folder it is read from), a profile (the
split, how many images, drawn with which seed from how many) and a digest: the SHA-256 of the
source files and of the drawn indices, so two runs show the same digest exactly when they read the
same images.  The indices come from the labels alone (no image is decoded).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from stable_snn.data.formats import TORCHVISION_FOLDERS, parquet_file, resolve_format
from stable_snn.data.splits import train_val_indices

from ..checksums import sha256
from ..config import JobConfig

DIGEST_CHARS = 16


def source_files(dataset: str, root: Path, layout: str) -> tuple[Path, list[Path]]:
    """The source a run's training split is read from (a Parquet file or torchvision's folder) and its files."""
    if layout == "parquet":
        path = parquet_file(root, "train")
        return path, [path]
    folder = root / TORCHVISION_FOLDERS[dataset]
    return folder, sorted(p for p in folder.rglob("*") if p.is_file())


def digest(source_digest: str, indices: np.ndarray) -> str:
    h = hashlib.sha256(source_digest.encode())
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def dataset_inputs(cfg: JobConfig) -> list[DatasetInput]:
    """The run's training and validation splits as MLflow dataset inputs."""
    data, root = cfg.data, cfg.data.resolved_root()
    layout = resolve_format(data.dataset, root, "train", format=data.format, download=data.download)
    train, val = train_val_indices(data.dataset, root, format=layout, download=data.download, val_size=data.val_size,
                                   train_subset=data.train_subset, seed=cfg.run.seed)
    source, files = source_files(data.dataset, root, layout)
    source_digest = hashlib.sha256("".join(sha256(p) for p in files).encode()).hexdigest()
    common = {"source_split": "train", "layout": layout, "seed": cfg.run.seed, "val_size": data.val_size,
              "train_subset": data.train_subset}
    splits = (
        ("train", "training", train, {"augment": data.augment, "cutout": data.cutout if data.augment else 0}),
        ("val", "validation", val, {"validation_subset": min(cfg.validation.subset, len(val))}),
    )
    return [
        DatasetInput(
            Dataset(name=f"{data.dataset}-{split}", digest=digest(source_digest, indices), source_type="local",
                    source=json.dumps({"uri": str(source)}),
                    profile=json.dumps({"split": split, "images": int(len(indices)), **common, **extra})),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)],
        )
        for split, context, indices, extra in splits
    ]
