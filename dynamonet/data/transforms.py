"""Spatial augmentation of clips on uint8 frames (paper §4.3).

Training: frames resized so the short side is ``resize_short`` (paper: 122; aspect ratio kept),
then one of 5 crops of 112 x 112 (4 corners + centre) chosen at random, flipped horizontally with
p = 0.5. Evaluation: the same resize, then the centre crop. The resize happens in decord while
decoding (:func:`decode_size`) whatever the shards' stored short side (canonical shards: 128), and
costs nothing when the stored short side already equals ``resize_short`` (the synthetic sets: the
frames are decoded as stored). Everything works on ``uint8 (N, H, W, 3)`` arrays: a crop is
a slice, and the single copy is the write into the output batch (float conversion and
normalisation happen later, on the training device). A flipped crop is written by ``torch.flip``
(on one thread: :func:`dynamonet.data.decode.single_threaded_torch`):
numpy's copy from a negative-stride view of 3-byte pixels goes element by element, ≈ 1.0 ms per
17×112×112 clip against ≈ 0.17 ms (≈ 5 % of the decode cost of a clip at p = 0.5; see
docs/data.md).

Crop positions (index → origin, for an H x W frame and crop S):

    0 centre        ((H - S) // 2, (W - S) // 2)
    1 top-left      (0, 0)
    2 top-right     (0, W - S)
    3 bottom-left   (H - S, 0)
    4 bottom-right  (H - S, W - S)
"""

from __future__ import annotations

import numpy as np
import torch

CROP_POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
CENTER = 0


def crop_origin(height: int, width: int, size: int, position: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of crop ``position`` (see :data:`CROP_POSITIONS`) of ``size`` in a frame."""
    if size > height or size > width:
        raise ValueError(f"crop {size} larger than frame {height}x{width}")
    ys = ((height - size) // 2, 0, 0, height - size, height - size)
    xs = ((width - size) // 2, 0, width - size, 0, width - size)
    return ys[position], xs[position]


def crop_into(out: np.ndarray, frames: np.ndarray, position: int, flip: bool) -> None:
    """Write crop ``position`` of ``frames`` ``(N, H, W, 3)``, optionally flipped left-right,
    into ``out`` ``(N, S, S, 3)`` (one copy, no temporary)."""
    size = out.shape[1]
    y, x = crop_origin(frames.shape[1], frames.shape[2], size, position)
    view = frames[:, y:y + size, x:x + size]
    if flip:
        torch.from_numpy(out).copy_(torch.from_numpy(view).flip(2))
    else:
        out[...] = view


def random_crop_params(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random crop positions (uniform over the 5) and flips (p = 0.5)."""
    return rng.integers(0, len(CROP_POSITIONS), size=n), rng.random(n) < 0.5


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``short_side`` (aspect ratio kept)."""
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


def decode_size(height: int, width: int, resize_short: int, crop_size: int) -> tuple[int, int] | None:
    """Size ``(height, width)`` to ask the decoder for, or None to decode at the stored size.

    Paper §4.3: frames are resized to short side ``resize_short`` (122) before the crop, in
    training and evaluation alike, whatever the stored short side: a row whose short side differs
    from ``resize_short`` is resized (aspect ratio kept, :func:`resized_size`); a row whose short
    side equals it is decoded as stored (no resize, no cost). ``resize_short`` must be at least
    ``crop_size`` (``data.resize_short >= data.crop_size`` is checked by the config; 0 is not a
    setting).
    """
    if resize_short < crop_size:
        raise ValueError(f"crop {crop_size} larger than the resized short side {resize_short}")
    if min(height, width) == resize_short:
        return None
    return resized_size(height, width, resize_short)
