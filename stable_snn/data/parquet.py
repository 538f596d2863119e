"""Reader for the Parquet layout of an offline CIFAR copy.

A split is one file, ``<root>/<split>.parquet``, with columns

* ``image``: bytes, the original 32x32 RGB image encoded as JPEG (or any format Pillow reads);
* ``label``: integer class index (int8 in the CIFAR-10 copy);
* ``source``: str, where the image came from (not read here);

and the class names in the Arrow schema metadata key ``classes``, comma-separated
(``b"airplane,automobile,..."``; a JSON list is accepted too).

Images are decoded with Pillow (torchvision's own decoders are deprecated since 0.29). Decoding
the 50,000 training images takes seconds, so there are three ways in, each with a small
per-process cache keyed by (path, modification time, size), so a file is read afresh only once
it changes:

* :func:`read_parquet_split`: every image of the file (cached: at most 4 files);
* :func:`read_parquet_labels`: the ``label`` column and the class names only, no image decoded
  (cached: at most 8 files);
* :func:`read_parquet_rows`: only the images of the given rows (cached: the last 4 row sets), for
  callers that use a subset (``build_splits`` with small subsets decodes a few hundred images
  instead of 60,000).

Cached arrays are read-only.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import time
from pathlib import Path

from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from stable_snn.data.arrays import IMAGE_SHAPE, ImageArrays, check_rows, read_only

logger = logging.getLogger(__name__)

CLASSES_KEY = b"classes"
"""Schema metadata key holding the class names."""


def parse_classes(raw: bytes) -> tuple[str, ...]:
    """Class names from the ``classes`` metadata value: comma-separated, or a JSON list of str."""
    text = raw.decode("utf-8").strip()
    if text.startswith("["):
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"schema metadata 'classes' is not a list of str: {text[:80]!r}")
        return tuple(names)
    return tuple(name.strip() for name in text.split(","))


def read_classes(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names stored in the schema metadata of the Parquet file at ``path`` (no data is read)."""
    metadata = pq.read_schema(path).metadata or {}
    if CLASSES_KEY not in metadata:
        raise ValueError(f"{path} has no 'classes' key in its schema metadata "
                         f"(keys: {sorted(k.decode() for k in metadata)})")
    return parse_classes(metadata[CLASSES_KEY])


def decode_image(data: bytes) -> np.ndarray:
    """Decode one encoded image (JPEG, PNG, ...) to uint8 ``[32, 32, 3]`` RGB; ``ValueError`` on another size."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.asarray(image)
    if pixels.shape != IMAGE_SHAPE:
        raise ValueError(f"expected a 32x32 RGB image, got shape {list(pixels.shape)}")
    return pixels


def decode_images(encoded: list[bytes], *, row_numbers: Sequence[int] | None = None) -> np.ndarray:
    """Decode ``N`` encoded images to uint8 ``[N, 32, 32, 3]`` RGB.

    Raises ``ValueError`` naming the first row that cannot be decoded or is not 32x32: its
    position in ``encoded``, or ``row_numbers[position]`` when given (the row in the file).
    """
    images = np.empty((len(encoded), *IMAGE_SHAPE), dtype=np.uint8)
    for i, data in enumerate(encoded):
        try:
            images[i] = decode_image(data)
        except Exception as err:
            row = i if row_numbers is None else int(row_numbers[i])
            raise ValueError(f"row {row} could not be decoded as a 32x32 RGB image: {err}") from err
    return images


def read_parquet_split(path: str | os.PathLike) -> ImageArrays:
    """Decode the Parquet file at ``path`` into :class:`ImageArrays` (uint8 ``[N, 32, 32, 3]``, int64 ``[N]``).

    Served from the per-process cache when the file is unchanged since it was last decoded.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _decode_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _decode_cached(path: str, mtime_ns: int, size: int) -> ImageArrays:
    # mtime_ns and size only make the cache key; a changed file is decoded afresh.
    start = time.perf_counter()
    classes = read_classes(path)
    table = pq.read_table(path, columns=["image", "label"])
    encoded = table.column("image").to_pylist()
    labels = table.column("label").to_numpy().astype(np.int64)
    try:
        images = decode_images(encoded)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    logger.info("decoded %d images from %s in %.1f s", len(images), path, time.perf_counter() - start)
    return ImageArrays(read_only(images), read_only(labels), classes)


def read_parquet_labels(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...]]:
    """The labels and class names of the Parquet file at ``path``, without decoding any image.

    Only the ``label`` column and the schema are read. Served from the per-process cache when the
    file is unchanged.

    Returns:
        int64 ``[N]`` labels (read-only), the class names.

    Raises:
        ValueError: no ``classes`` metadata, or a label outside ``[0, len(classes))``.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _labels_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _labels_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    # mtime_ns and size only make the cache key; a changed file is read afresh.
    classes = read_classes(path)
    # ParquetFile + to_pylist rather than read_table + to_numpy: those import pyarrow.dataset and
    # pandas (0.3-1 CPU-s on first use), for 50,000 small ints that convert in milliseconds.
    column = pq.ParquetFile(path, memory_map=True).read(columns=["label"]).column("label")
    if column.null_count:
        raise ValueError(f"{path}: {column.null_count} rows have no label")
    labels = np.array(column.to_pylist(), dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{path}: labels must lie in [0, {len(classes)}), got range [{labels.min()}, {labels.max()}]")
    return read_only(labels), classes


def read_parquet_rows(path: str | os.PathLike, rows: np.ndarray | Sequence[int]) -> ImageArrays:
    """Decode only ``rows`` of the Parquet file at ``path``.

    Args:
        path: the file.
        rows: int ``[M]``, strictly increasing positions in ``[0, N)``.

    Returns:
        :class:`ImageArrays` of length ``M``: ``images[j]`` and ``labels[j]`` are those of row
        ``rows[j]`` of the file (exactly what :func:`read_parquet_split` holds at that position).
        Served from the per-process cache (the last 4 row sets) when the file is unchanged.

    Raises:
        ValueError: ``rows`` not strictly increasing in ``[0, N)``, bad labels or metadata, or a
            selected image that cannot be decoded (naming its row in the file).
    """
    path = Path(path).resolve()
    stat = path.stat()
    labels, _ = _labels_cached(str(path), stat.st_mtime_ns, stat.st_size)
    rows = check_rows(rows, len(labels))
    return _rows_cached(str(path), stat.st_mtime_ns, stat.st_size, rows.tobytes())


@functools.lru_cache(maxsize=4)
def _rows_cached(path: str, mtime_ns: int, size: int, rows_key: bytes) -> ImageArrays:
    # rows_key is the int64 bytes of the (checked) rows: hashable, and cheap to hash.
    start = time.perf_counter()
    rows = np.frombuffer(rows_key, dtype=np.int64)
    labels, classes = _labels_cached(path, mtime_ns, size)
    column = pq.ParquetFile(path, memory_map=True).read(columns=["image"]).column("image")
    # Row by row rather than column.take(pa.array(rows)): pa.array imports pandas (see _labels_cached),
    # and for a few thousand rows this is as fast.
    encoded = [column[int(row)].as_py() for row in rows]
    try:
        images = decode_images(encoded, row_numbers=rows)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    logger.info("decoded %d of %d images from %s in %.2f s", len(images), len(labels), path,
                time.perf_counter() - start)
    return ImageArrays(read_only(images), read_only(labels[rows]), classes)
