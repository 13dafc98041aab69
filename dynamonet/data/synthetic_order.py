"""The ``order`` synthetic kind: classes that differ only in the ORDER of two motions in one video.

A benchmark for video-level temporal fusion (STFN over the sequence of a video's clips,
docs/model.md): every short window of a video looks alike for the two classes of a pair, so a
mean of clip scores cannot tell them apart while a model of the clip sequence can.

    classes   :data:`ORDER_CLASSES`: the 12 ordered pairs of two different directions among right,
              left, up and down (right_then_left, left_then_right, ..., right_then_up, up_then_right, ...)
    content   one random canvas per video (:func:`~dynamonet.data.synthetic.random_canvas`), seen
              through an S x S window; the canvas is large enough that the window never leaves it
    motion    the window's offset follows a piecewise-constant velocity over the video's steps
              (step t = frame t -> t+1): a static lead, motion A (a global translation of the whole
              view in the first direction of the name), a static gap, motion B (the second
              direction), a static trail. Each motion has its own speed ~ U[SPEED] px/frame and
              direction jitter (± DIRECTION_JITTER rad, as in the ``motion`` kind); sub-pixel
              offsets are sampled bilinearly, then brightness, contrast and sensor noise per video
    length    five segments of i.i.d. lengths (below), so n varies per video (downstream clip
              sequences have variable lengths) and never exceeds N = ``num_frames`` >= MIN_FRAMES

Segment lengths, in steps (:func:`order_segments`): lead, gap and trail are i.i.d. uniform on
:func:`static_range` (N) = ``floor(STATIC_FRACTION[0] N) .. floor(STATIC_FRACTION[1] N)``; A and B
i.i.d. uniform on :func:`motion_range` (N) (MOTION_FRACTION). With N = 72 (the embedded STFN
recipe): lead, gap and trail 9..10 steps, each motion 18..20 steps, videos of 64..71 frames, 7
non-overlapping 9-frame clips; moving frames are about 55 % of a video.

Key property. The gap is never shorter than :func:`min_gap` (N) steps, so a window of up to
``min_gap(N) + 1`` frames (10 at N = 72, a 9-frame clip included) never sees both motions. Each
motion is bracketed by static segments: right_then_left is (lead, R, gap, L, trail) and
left_then_right is (lead, L, gap, R, trail). Lead, gap and trail are exchangeable, as are A and B
and their speeds and jitters, so the rightward motion of either class comes with static context
of the same distribution before and after it (lead/gap or gap/trail), and likewise the leftward
one: the bag of windows of up to ``min_gap(N) + 1`` frames at uniformly random positions (how
training clips are drawn) has the same distribution for both classes of a pair. Only the order
over the whole video tells them apart. A classifier of such clips therefore cannot beat chance
within a pair, while a model of the clip sequence can reach about 1.0. The clips do tell which
two directions a video holds, and learning that is what teaches the network the directions of
motion (with all 12 classes a clip must say right, left, up or down): the expected top-1 of the
mean of clip scores is about 0.5, that of a sequence model about 1.0.

Appearance, lengths, speeds, jitters and photometry use the same random draws for every class
(same generator state => same video but for the two directions; the motions of
``left_then_right`` are then the mirror images of those of ``right_then_left``). A horizontal
flip swaps ``right_then_left`` and ``left_then_right`` and keeps the vertical pair
(:func:`~dynamonet.data.synthetic.mirror_label_map`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from dynamonet.data.synthetic import _bilinear, _sensor, random_canvas

# Structure knobs. Lengths are in steps (frame-to-frame transitions), fractions of num_frames N.
# Feasible for every N >= MIN_FRAMES: 3 * hi_static + 2 * hi_motion + 1 <= N frames (tested up to 128).
MIN_FRAMES = 32                     # num_frames below this leaves gaps shorter than 4 steps
STATIC_FRACTION = (0.125, 0.14)     # lead, gap, trail ~ U{floor(lo N), ..., floor(hi N)} steps (i.i.d.)
MOTION_FRACTION = (0.25, 0.28)      # A, B ~ U{floor(lo N), ..., floor(hi N)} steps (i.i.d.)
SPEED = (1.5, 3.0)                  # px/frame of each motion ~ U[SPEED]
DIRECTION_JITTER = 0.17             # ± rad around the named direction, per motion

_KNOBS = ("MIN_FRAMES", "STATIC_FRACTION", "MOTION_FRACTION", "SPEED", "DIRECTION_JITTER")

# The first `num_classes` of these are used; each class sits next to its reverse.
ORDER_CLASSES = ("right_then_left", "left_then_right", "up_then_down", "down_then_up", "right_then_up", "up_then_right",
                 "right_then_down", "down_then_right", "left_then_up", "up_then_left", "left_then_down",
                 "down_then_left")
# Heading (rad, y down) and jitter sign: opposite directions take mirrored jitters, so the same
# draws give mirror-image motions (a horizontal flip of right_then_left is left_then_right).
_DIRECTIONS = {"right": (0.0, 1), "left": (np.pi, -1), "up": (-np.pi / 2, -1), "down": (np.pi / 2, 1)}


def order_knobs() -> dict[str, object]:
    """The structure constants by name (part of the dataset cache key: changing one rebuilds)."""
    return {name: globals()[name] for name in _KNOBS}


def _check_frames(num_frames: int) -> None:
    if num_frames < MIN_FRAMES:
        raise ValueError(f"data.synthetic.num_frames: the order kind needs >= {MIN_FRAMES} frames, got {num_frames}")


def _range(fraction: tuple[float, float], num_frames: int) -> tuple[int, int]:
    lo = math.floor(fraction[0] * num_frames + 1e-9)
    return lo, max(lo, math.floor(fraction[1] * num_frames + 1e-9))


def static_range(num_frames: int) -> tuple[int, int]:
    """Inclusive range, in steps, of the lead, the gap and the trail."""
    return _range(STATIC_FRACTION, num_frames)


def motion_range(num_frames: int) -> tuple[int, int]:
    """Inclusive range, in steps, of each motion."""
    return _range(MOTION_FRACTION, num_frames)


def min_gap(num_frames: int) -> int:
    """The shortest static gap, in steps, between the two motions: windows of up to ``min_gap + 1``
    frames never see both motions."""
    return static_range(num_frames)[0]


def order_segments(rng: np.random.Generator, num_frames: int) -> tuple[int, int, int, int, int]:
    """Draw one video's segment lengths in steps ``(lead, A, gap, B, trail)``; the video has
    their sum + 1 frames (at most ``num_frames``)."""
    _check_frames(num_frames)
    (slo, shi), (mlo, mhi) = static_range(num_frames), motion_range(num_frames)
    lead, gap, trail = (int(x) for x in rng.integers(slo, shi + 1, size=3))
    a, b = (int(x) for x in rng.integers(mlo, mhi + 1, size=2))
    return lead, a, gap, b, trail


@dataclass(frozen=True)
class OrderTrack:
    """How the view of one ``order`` video moves: content displacement in frame pixels ``(x, y)``,
    y down (the content of frame t is the canvas shifted by ``offset[t]``)."""

    segments: tuple[int, int, int, int, int]   # (lead, A, gap, B, trail) in steps; sum = n - 1
    velocity: np.ndarray                       # (n - 1, 2) content velocity of step t -> t+1, px/frame
    offset: np.ndarray                         # (n, 2) cumulative content displacement, offset[0] = 0


def _canvas(size: int, num_frames: int) -> int:
    """Canvas side: the ``motion`` kind's 2.75 x frame (similar texture scales), or more when the
    worst-case path needs it (one motion along an axis, both across it through the jitter)."""
    m = motion_range(num_frames)[1] * SPEED[1]
    span = max(m, 2 * m * np.sin(DIRECTION_JITTER))
    return int(np.ceil(max(2.75 * size, size + span + 8) / 2) * 2)


@overload
def render_order(motion: str, rng: np.random.Generator, num_frames: int, size: int,
                 return_track: Literal[False] = ...) -> np.ndarray: ...
@overload
def render_order(motion: str, rng: np.random.Generator, num_frames: int, size: int,
                 return_track: Literal[True]) -> tuple[np.ndarray, OrderTrack]: ...
def render_order(motion: str, rng: np.random.Generator, num_frames: int, size: int,
                 return_track: bool = False) -> np.ndarray | tuple[np.ndarray, OrderTrack]:
    """Frames ``(n, S, S, 3)`` uint8 of one video of class ``motion`` (see :data:`ORDER_CLASSES`),
    n <= ``num_frames`` (see :func:`order_segments`); with ``return_track`` also its :class:`OrderTrack`."""
    _check_frames(num_frames)
    first, sep, second = motion.partition("_then_")
    if not sep or first not in _DIRECTIONS or second not in _DIRECTIONS:
        raise ValueError(f"unknown order class {motion!r}; choose from {', '.join(ORDER_CLASSES)}")
    csize = _canvas(size, num_frames)
    canvas = random_canvas(rng, csize)                                     # (C, C, 3)
    segments = order_segments(rng, num_frames)
    lead, a, gap, b, trail = segments
    speeds, jitters = rng.uniform(*SPEED, size=2), rng.uniform(-DIRECTION_JITTER, DIRECTION_JITTER, size=2)
    photometric = rng.uniform(0.6, 1.0), rng.uniform(-0.15, 0.15), rng.uniform(0.0, 0.03)
    velocity = np.zeros((sum(segments), 2))                                # (n-1, 2), static by default
    for start, length, (heading, sign), speed, jitter in (
            (lead, a, _DIRECTIONS[first], speeds[0], jitters[0]),
            (lead + a + gap, b, _DIRECTIONS[second], speeds[1], jitters[1])):
        angle = heading + sign * jitter
        velocity[start:start + length] = speed * np.array([np.cos(angle), np.sin(angle)])
    offset = np.concatenate([np.zeros((1, 2)), np.cumsum(velocity, axis=0)])   # (n, 2)
    # Content moves by +offset: frame t samples the canvas at p - offset[t], the path centred in it.
    corner = (csize - size) / 2 + (offset.min(0) + offset.max(0)) / 2 - offset  # (n, 2) window top-left (x, y)
    p = np.arange(size, dtype=np.float32)
    ys = corner[:, 1, None, None].astype(np.float32) + p[None, :, None]      # (n, S, 1)
    xs = corner[:, 0, None, None].astype(np.float32) + p[None, None, :]      # (n, 1, S)
    frames = _bilinear(canvas, ys, xs)                                      # (n, S, S, 3)
    video = _sensor(frames, rng, *photometric)
    if not return_track:
        return video
    return video, OrderTrack(segments=segments, velocity=velocity, offset=offset)
