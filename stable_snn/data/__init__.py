"""The data layer: CIFAR-10/100 from torchvision's folder or an offline Parquet copy, held in
memory as uint8 arrays, split into train / validation / test and served as float tensors in [0, 1]
with the paper's training augmentation (crop with padding, flip, Cutout).

Modules: ``arrays`` (names, :class:`ImageArrays`), ``formats`` (layouts and their detection),
``parquet`` and ``torchvision_cifar`` (readers), ``loading`` (:func:`load_arrays`),
``transforms`` (augmentation), ``dataset`` (:class:`CIFARArrayDataset`), ``splits``
(:func:`build_splits`).
"""

from stable_snn.data.arrays import DATASETS, ImageArrays, num_classes_of
from stable_snn.data.dataset import CIFARArrayDataset, stack_dataset
from stable_snn.data.formats import FORMATS, DatasetNotFoundError
from stable_snn.data.loading import load_arrays
from stable_snn.data.splits import Splits, build_splits

__all__ = [
    "DATASETS",
    "FORMATS",
    "CIFARArrayDataset",
    "DatasetNotFoundError",
    "ImageArrays",
    "Splits",
    "build_splits",
    "load_arrays",
    "num_classes_of",
    "stack_dataset",
]
