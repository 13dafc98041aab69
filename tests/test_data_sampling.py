"""Clip windows in time and 5-crop + flip on uint8 (paper §4.3)."""

from __future__ import annotations

import numpy as np
import pytest

from dynamonet.data.sampling import (
    clip_span,
    eval_starts,
    num_eval_windows,
    total_eval_windows,
    train_starts,
    window_indices,
)
from dynamonet.data.transforms import CROP_POSITIONS, crop_into, crop_origin, decode_size, resized_size


def test_eval_windows_tile_the_video_without_overlapping_inputs():
    T, stride, n = 4, 2, 50                                   # span 9, hop 8 → windows at 0, 8, ..., 40
    starts = eval_starts(n, T, stride)
    idx = window_indices(starts, n, T, stride)
    assert idx.shape == (num_eval_windows(n, T, stride), T + 1) == (6, 5)
    inputs = idx[:, :T]
    assert len(np.unique(inputs)) == inputs.size               # T input frames never overlap
    assert np.array_equal(idx[:-1, T], idx[1:, 0])             # target frame = next window's first
    assert idx[0, 0] == 0 and n - 1 - idx[-1, -1] < T * stride  # covered up to less than one hop
    assert idx.max() < n


def test_eval_window_count_and_cap():
    assert [num_eval_windows(n, 8) for n in (3, 8, 9, 16, 17, 25)] == [1, 1, 1, 1, 2, 3]
    assert num_eval_windows(100, 8, max_clips=3) == 3
    starts = eval_starts(100, 8, max_clips=3)                  # 12 windows, 3 kept evenly spread
    assert list(starts) == [0, 6 * 8, 11 * 8]
    assert total_eval_windows({17: 2, 25: 1}, 8) == 7


def test_short_videos_are_looped():
    idx = window_indices(train_starts(5, 8, 1, 3, np.random.default_rng(0)), 5, 8, 1)
    assert idx.shape == (3, 9) and list(idx[0]) == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert num_eval_windows(5, 8) == 1


def test_train_starts_are_uniform_and_in_range():
    rng = np.random.default_rng(0)
    starts = np.concatenate([train_starts(30, 8, 2, 4, rng) for _ in range(500)])
    assert starts.min() == 0 and starts.max() == 30 - clip_span(8, 2)
    assert np.histogram(starts, bins=14)[0].min() > 60


@pytest.mark.parametrize("position,expected", [(0, (4, 10)), (1, (0, 0)), (2, (0, 20)), (3, (8, 0)), (4, (8, 20))])
def test_crop_origins(position, expected):
    assert crop_origin(40, 52, 32, position) == expected
    assert CROP_POSITIONS[0] == "center"


def test_crop_into_and_flip_write_the_right_pixels():
    frames = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
    out = np.zeros((2, 4, 4, 3), np.uint8)
    crop_into(out, frames, position=2, flip=False)
    assert np.array_equal(out, frames[:, 0:4, 4:8])
    crop_into(out, frames, position=3, flip=True)
    assert np.array_equal(out, frames[:, 2:6, 0:4][:, :, ::-1])


def test_decode_size_resizes_to_resize_short_unless_stored_at_it():
    # paper §4.3: short side 122 before the crop, whatever the stored short side (canonical: 128)
    assert decode_size(128, 170, resize_short=122, crop_size=112) == (122, 162)
    assert decode_size(240, 320, resize_short=122, crop_size=112) == (122, 163)
    assert decode_size(170, 128, resize_short=122, crop_size=112) == (162, 122)
    assert decode_size(48, 48, resize_short=64, crop_size=56) == (64, 64)       # upscaled too
    assert decode_size(122, 163, resize_short=122, crop_size=112) is None       # stored at 122: as stored
    assert decode_size(48, 64, resize_short=48, crop_size=40) is None           # the synthetic recipes
    with pytest.raises(ValueError, match="crop 112 larger"):
        decode_size(128, 170, resize_short=100, crop_size=112)
    assert resized_size(320, 240, 122) == (163, 122)
