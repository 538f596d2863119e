"""The paper's augmentation: random crop with padding, horizontal flip, Cutout."""

import numpy as np
import pytest
import torch

from stable_snn.data.transforms import (augment, cutout, cutout_at, random_crop, random_hflip,
                                        sample_generator, to_float_chw)


def _image(seed=0):
    return torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(seed))


def test_to_float_chw():
    pixels = np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3).astype(np.uint8)
    image = to_float_chw(pixels)
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert image[1, 2, 5].item() == pytest.approx(pixels[2, 5, 1] / 255.0)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        to_float_chw(pixels.astype(np.float32))


def test_random_crop_is_a_shift_with_zero_padding():
    image = _image() + 1.0  # strictly positive, so padding shows as zeros
    for seed in range(20):
        out = random_crop(image, 4, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 32, 32)
        padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
        offsets = [(t, l) for t in range(9) for l in range(9) if torch.equal(padded[:, t:t + 32, l:l + 32], out)]
        assert len(offsets) == 1


def test_crop_offsets_cover_the_range():
    image = torch.ones((1, 32, 32))
    zero_rows = set()
    for seed in range(200):
        out = random_crop(image, 4, torch.Generator().manual_seed(seed))
        zero_rows.add(int((out[0, :, 16] == 0).sum()))
    assert zero_rows == set(range(5))  # 0..4 padded rows show


def test_hflip_flips_or_not():
    image = _image()
    outcomes = set()
    for seed in range(40):
        out = random_hflip(image, torch.Generator().manual_seed(seed))
        assert torch.equal(out, image) or torch.equal(out, image.flip(-1))
        outcomes.add(torch.equal(out, image))
    assert outcomes == {True, False}


def test_cutout_zeroes_a_16x16_square():
    ones = torch.ones((3, 32, 32))
    out = cutout_at(ones, 10, 20, 16)
    expected = ones.clone()
    expected[:, 2:18, 12:28] = 0
    assert torch.equal(out, expected)
    assert torch.equal(ones, torch.ones((3, 32, 32)))  # input untouched


def test_cutout_clips_at_borders():
    out = cutout_at(torch.ones((3, 32, 32)), 0, 31, 16)
    assert int((out[0] == 0).sum()) == 8 * 9  # rows 0..7, columns 23..31


def test_random_cutout_hole_is_16x16_clipped():
    for seed in range(50):
        out = cutout(torch.ones((3, 32, 32)), 16, torch.Generator().manual_seed(seed))
        rows = (out[0] == 0).any(dim=1).nonzero().flatten()
        cols = (out[0] == 0).any(dim=0).nonzero().flatten()
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        assert int((out == 0).sum()) == 3 * len(rows) * len(cols)  # one rectangle, all channels
        for span in (rows, cols):  # a shorter side only where the hole meets a border
            assert len(span) == 16 or span[0] == 0 or span[-1] == 31
    assert torch.equal(cutout(torch.ones((3, 32, 32)), 0, torch.Generator()), torch.ones((3, 32, 32)))


def test_augment_keeps_shape_and_range_and_is_deterministic():
    image = _image()
    out = augment(image, sample_generator(0, 0, 7))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, augment(image, sample_generator(0, 0, 7)))


def test_sample_generator_depends_on_every_part():
    draws = {tuple(torch.rand(4, generator=sample_generator(*key)).tolist())
             for key in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]}
    assert len(draws) == 4
