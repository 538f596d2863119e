"""The paper's training augmentation, as pure functions of an image and a ``torch.Generator``.

Training: random crop 32 with 4-pixel zero padding, horizontal flip (p = 0.5), Cutout (one
16x16 hole set to 0, centre uniform over the image, clipped at the borders; DeVries & Taylor 2017).
Test and validation images are only converted. Images stay in [0, 1]; normalisation is the
model's job, so attacks work in pixel space.

Every random draw comes from the generator passed in. :func:`sample_generator` derives one per
(seed, epoch, index), so a sample's augmentation does not depend on which DataLoader worker
draws it or in which order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, index) through ``numpy.random.SeedSequence``.

    All three must be non-negative integers.
    """
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def to_float_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in [0, 1] (a new tensor; the input is not touched)."""
    pixels = image if isinstance(image, torch.Tensor) else torch.tensor(image)  # copies read-only arrays
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected a uint8 image of shape [H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
    return pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)


def _check_chw(image: torch.Tensor) -> None:
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape [C, H, W], got {list(image.shape)}")


def random_crop(image: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad ``[C, H, W]`` by ``padding`` on every side and crop ``[C, H, W]`` at a uniform offset."""
    _check_chw(image)
    if padding == 0:
        return image
    _, height, width = image.shape
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    return padded[:, top:top + height, left:left + width]


def random_hflip(image: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror ``[C, H, W]`` left-right with probability ``p``."""
    _check_chw(image)
    if torch.rand((), generator=generator).item() < p:
        return image.flip(-1)
    return image


def cutout_at(image: torch.Tensor, center_y: int, center_x: int, size: int) -> torch.Tensor:
    """A copy of ``[C, H, W]`` with the ``size`` x ``size`` square centred at (center_y, center_x) set to 0.

    Rows ``[center_y - size // 2, center_y - size // 2 + size)`` (and likewise columns), clipped
    to the image.
    """
    _check_chw(image)
    _, height, width = image.shape
    top, left = center_y - size // 2, center_x - size // 2
    out = image.clone()
    out[:, max(top, 0):min(top + size, height), max(left, 0):min(left + size, width)] = 0
    return out


def cutout(image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout: zero one ``size`` x ``size`` hole whose centre is uniform over ``[C, H, W]``."""
    _check_chw(image)
    if size == 0:
        return image
    _, height, width = image.shape
    center_y = int(torch.randint(0, height, (), generator=generator))
    center_x = int(torch.randint(0, width, (), generator=generator))
    return cutout_at(image, center_y, center_x, size)


def augment(image: torch.Tensor, generator: torch.Generator, *, padding: int = 4,
            cutout_size: int = 16) -> torch.Tensor:
    """The training augmentation on float ``[3, 32, 32]``: crop with padding, flip, Cutout (0 = none).

    Draws, in order: crop offsets, flip, Cutout centre. Returns float ``[3, 32, 32]`` in [0, 1].
    """
    image = random_crop(image, padding, generator)
    image = random_hflip(image, generator)
    return cutout(image, cutout_size, generator)
