"""The ``subtle`` kind of the synthetic dataset: one object's motion among distractors.

A benchmark that separates a plain 3D CNN from DynamoNet's dynamic motion filters (paper §3.1,
the §4.5 ablation): the class is a small difference in how ONE object moves, while everything
a single frame shows, and most of what moves, is drawn independently of the class.

    background  a random canvas (:func:`~dynamonet.data.synthetic.random_canvas`) larger than
                the frame, panning with a random constant velocity (direction uniform, speed
                uniform in [0, PAN_MAX] px/frame); the pan never shows the canvas border
    distractors 2-4 small soft-edged discs / rounded rectangles with their own random texture,
                moving at random constant velocities (0 to DISTRACTOR_SPEED_MAX px/frame, any
                direction) relative to the background
    actor       one clearly larger object of the same kind, drawn last (never occluded); its
                motion RELATIVE TO THE BACKGROUND is the class (:data:`SUBTLE_CLASSES`):
                right/left/up/down drifts, slow or fast (direction jitter ±10°); a sinusoidal
                shake around a point of the background (horizontal or vertical); a horizontal
                zigzag (constant speed, reversing every 3-4 frames); still (moves with the pan)

Positions are continuous and rendered with sub-pixel accuracy (bilinear background and texture
samples, analytic anti-aliased alpha masks), vectorised over frames; brightness, contrast and
sensor noise per video as in the ``motion`` kind. Every object stays inside the frame for the
whole video: distractors are placed to fit their own trajectory, the actor's position at the
middle frame to fit the worst case of ALL classes (so its distribution is the same for every
class), given the video's pan. Appearance, sizes, colours, the pan and the distractors use the
same random draws for every class (same generator state ⇒ same video but for the actor's path).
A horizontal flip swaps ``right_*`` and ``left_*`` and keeps the other classes
(:func:`~dynamonet.data.synthetic.mirror_label_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from dynamonet.data.synthetic import _bilinear, _sensor, _smooth_field, _texture, random_canvas

# Difficulty knobs, calibrated by hand on the benchmark recipe (pipelines/recipes/subtle.yaml:
# 32 px, 12 frames, 7 classes) so that a plain 3D CNN lands in 0.5-0.8 top-1 (docs/results.md:
# with a background as contrasted as the objects and no outlines, every variant stayed at chance).
# Speeds are px/frame relative to the background; radii are fractions of the frame side. The
# actor's worst case must fit the frame:
#     ACTOR_RADIUS * S + (PAN_MAX + FAST_SPEED[1]) * (N - 1) / 2 <= (S - 1) / 2
# (32 px, 12 frames: 5.8 + 9.1 = 14.8 <= 15.5). Beyond it the actor is centred at the middle
# frame and may cross the border (a distractor likewise when its own path does not fit).
PAN_MAX = 0.35                      # background pan speed ~ U[0, PAN_MAX], direction uniform
DISTRACTORS = (2, 3)                # distractor objects per video, inclusive range
DISTRACTOR_SPEED_MAX = 1.2          # distractor speed ~ U[0, max] (covers the class speeds on purpose)
ACTOR_RADIUS = 0.18                 # actor half-extent / frame side
DISTRACTOR_RADIUS = 0.06            # distractor half-extent / frame side (times U[0.8, 1.2])
SLOW_SPEED = (0.4, 0.6)             # *_slow drift speed range
FAST_SPEED = (1.0, 1.3)             # *_fast drift speed range
DIRECTION_JITTER_DEG = 10.0         # drift direction jitter, ± degrees
SHAKE_AMPLITUDE = (1.5, 2.5)        # shake_* amplitude range, px
SHAKE_PERIOD = (4.0, 6.0)           # shake_* period range, frames
ZIGZAG_SPEED = (1.0, 1.4)           # zigzag_* speed range (constant magnitude)
ZIGZAG_HALF_PERIOD = (3.0, 4.0)     # frames between zigzag reversals (<= 4: every 8 frames hold one)
EDGE_SOFTNESS = 1.5                 # width in px of the alpha ramp at object edges
BACKGROUND_CONTRAST = 0.4           # background texture contrast against the objects' (1 = the same)
OUTLINE = 1.0                       # dark outline of every object, px (objects stand out; class-independent)

_KNOBS = ("PAN_MAX", "DISTRACTORS", "DISTRACTOR_SPEED_MAX", "ACTOR_RADIUS", "DISTRACTOR_RADIUS", "SLOW_SPEED",
          "FAST_SPEED", "DIRECTION_JITTER_DEG", "SHAKE_AMPLITUDE", "SHAKE_PERIOD", "ZIGZAG_SPEED",
          "ZIGZAG_HALF_PERIOD", "EDGE_SOFTNESS", "BACKGROUND_CONTRAST", "OUTLINE")

# The first `num_classes` of these are used.
SUBTLE_CLASSES = ("right_slow", "right_fast", "left_slow", "left_fast", "shake_horizontal", "zigzag_horizontal",
                  "still", "up_slow", "down_slow", "shake_vertical")
_HEADINGS = {"right": 0.0, "left": np.pi, "up": -np.pi / 2, "down": np.pi / 2}    # radians, y down


def subtle_knobs() -> dict[str, object]:
    """The difficulty constants by name (part of the dataset cache key: recalibrating rebuilds)."""
    return {name: globals()[name] for name in _KNOBS}


@dataclass(frozen=True)
class SubtleTrack:
    """Where the objects of one ``subtle`` video are; coordinates ``(x, y)`` in frame pixels
    (pixel ``[row i, col j]`` has its centre at ``(j, i)``, y down)."""

    actor: np.ndarray               # (N, 2) actor centre per frame
    pan: np.ndarray                 # (2,) background velocity, px/frame
    distractors: np.ndarray         # (K, N, 2) distractor centres per frame
    actor_radius: float             # actor half-extent along each axis, px
    distractor_radii: np.ndarray    # (K,) distractor half-extents, px


def relative_motion(name: str, u: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Actor offset ``(N, 2)`` from its anchor on the background at centred times ``t (N,)``, for
    class ``name`` and four uniforms ``u`` in [0, 1) (every class takes the same four draws)."""
    def pick(lo_hi: tuple[float, float], x: float) -> float:
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * float(x)

    out = np.zeros((len(t), 2))
    head, _, tail = name.partition("_")
    if head in _HEADINGS and tail in ("slow", "fast"):
        angle = _HEADINGS[head] + np.deg2rad(DIRECTION_JITTER_DEG) * (2 * u[0] - 1)
        speed = pick(SLOW_SPEED if tail == "slow" else FAST_SPEED, u[1])
        return speed * t[:, None] * np.array([np.cos(angle), np.sin(angle)])
    axis = {"horizontal": 0, "vertical": 1}.get(tail, -1)
    if head == "shake" and axis >= 0:
        amplitude, period = pick(SHAKE_AMPLITUDE, u[0]), pick(SHAKE_PERIOD, u[1])
        out[:, axis] = amplitude * np.sin(2 * np.pi * t / period + 2 * np.pi * u[2])
    elif head == "zigzag" and axis >= 0:
        speed, half = pick(ZIGZAG_SPEED, u[0]), pick(ZIGZAG_HALF_PERIOD, u[1])
        s = (t + 2 * half * u[2]) % (2 * half)                  # triangle wave, slopes ±speed,
        out[:, axis] = speed * (half / 2 - np.abs(s - half))    # zero mean, reversal every `half`
    elif name != "still":
        raise ValueError(f"unknown subtle class {name!r}; choose from {', '.join(SUBTLE_CLASSES)}")
    return out


def _max_excursion(half_span: float) -> float:
    """Largest |actor offset| along an axis over all classes, for centred times |t| <= half_span."""
    return max(FAST_SPEED[1] * half_span, SLOW_SPEED[1] * half_span, SHAKE_AMPLITUDE[1],
               ZIGZAG_SPEED[1] * ZIGZAG_HALF_PERIOD[1] / 2)


def _place(rng: np.random.Generator, lo_off: np.ndarray, hi_off: np.ndarray, extent: float, size: int) -> np.ndarray:
    """An anchor ``(2,)`` such that anchor + offset stays in [extent, size-1-extent] for offsets in
    [lo_off, hi_off] (per axis, uniform); the middle of the range where that is impossible."""
    lo, hi = extent - lo_off, size - 1 - extent - hi_off
    pick = lo + (hi - lo) * rng.random(2)
    return np.where(lo <= hi, pick, (lo + hi) / 2)


def _pan(canvas: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """Frames ``(N, S, S, 3)``: the S x S windows of ``canvas (C, C, 3)`` whose top-left pixel is at
    ``corners (N, 2)`` (x, y), sub-pixel; a pure translation, so bilinear weights are per frame."""
    out = np.empty((len(corners), size, size, canvas.shape[2]), dtype=np.float32)
    for t, (x, y) in enumerate(corners):
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = np.float32(x - x0), np.float32(y - y0)
        win = canvas[y0:y0 + size + 1, x0:x0 + size + 1]                     # (S+1, S+1, 3)
        cols = win[:, :-1] + (win[:, 1:] - win[:, :-1]) * fx                # (S+1, S, 3)
        out[t] = cols[:-1] + (cols[1:] - cols[:-1]) * fy
    return out


def _object(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, float, float, float]:
    """A random object: texture patch ``(Q, Q, 3)``, half-extents (ax, ay) <= radius and corner
    radius (a disc when both equal the corner radius, else a rounded rectangle)."""
    q = 2 * int(np.ceil(radius + EDGE_SOFTNESS)) + 2
    base = _smooth_field(rng, q, int(rng.integers(1, 4)), 3)
    tex = _texture(rng, q)[..., None] * rng.random(3, dtype=np.float32)
    patch = (1 - (mix := rng.uniform(0.2, 0.7))) * base + mix * tex
    if rng.random() < 0.5:
        return patch, radius, radius, radius
    short = radius * rng.uniform(0.6, 1.0)
    ax, ay = (radius, short) if rng.random() < 0.5 else (short, radius)
    return patch, ax, ay, rng.uniform(0.25, 0.6) * short


def _composite(frames: np.ndarray, obj: tuple[np.ndarray, float, float, float], centres: np.ndarray) -> None:
    """Draw an object over ``frames (N, S, S, 3)`` float32 in place at ``centres (N, 2)`` (x, y):
    an anti-aliased rounded-box alpha and the texture, both sampled at sub-pixel offsets, in a
    per-frame P x P window around the object (kept inside the frame, so no index repeats)."""
    patch, ax, ay, corner = obj
    n, size = frames.shape[:2]
    p = min(size, 2 * int(np.ceil(max(ax, ay) + EDGE_SOFTNESS / 2)) + 2)
    origin = np.clip(np.floor(centres).astype(np.int64) - p // 2 + 1, 0, size - p)       # (N, 2)
    steps = np.arange(p)
    xs, ys = origin[:, :1] + steps, origin[:, 1:] + steps                                 # (N, P)
    dx, dy = xs - centres[:, :1], ys - centres[:, 1:]                                     # (N, P)
    qx = np.abs(dx)[:, None, :] - (ax - corner)                                           # (N, 1, P)
    qy = np.abs(dy)[:, :, None] - (ay - corner)                                           # (N, P, 1)
    sdf = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - corner
    alpha = np.clip(0.5 - sdf / EDGE_SOFTNESS, 0, 1).astype(np.float32)[..., None]        # (N, P, P, 1)
    c = (patch.shape[0] - 1) / 2
    tex = _bilinear(patch, dy[:, :, None] + c, dx[:, None, :] + c)                         # (N, P, P, 3)
    idx = (np.arange(n)[:, None, None], ys[:, :, None], xs[:, None, :])
    under = frames[idx]
    frames[idx] = under + alpha * (tex - under)


@overload
def render_subtle(name: str, rng: np.random.Generator, num_frames: int, size: int,
                  return_track: Literal[False] = ...) -> np.ndarray: ...
@overload
def render_subtle(name: str, rng: np.random.Generator, num_frames: int, size: int,
                  return_track: Literal[True]) -> tuple[np.ndarray, SubtleTrack]: ...
def render_subtle(name: str, rng: np.random.Generator, num_frames: int, size: int,
                  return_track: bool = False) -> np.ndarray | tuple[np.ndarray, SubtleTrack]:
    """Frames ``(N, S, S, 3)`` uint8 of one video of class ``name`` (see :data:`SUBTLE_CLASSES`),
    and with ``return_track`` the objects' centres and the pan (:class:`SubtleTrack`)."""
    half = (num_frames - 1) / 2
    t = np.arange(num_frames, dtype=np.float64) - half                     # (N,) centred time
    # Background: a canvas with room for the pan, sampled at p - pan * t (content moves by +pan).
    csize = int(np.ceil((size + 2 * PAN_MAX * half + 6) / 2) * 2)
    canvas = random_canvas(rng, csize)
    canvas = canvas.mean() + BACKGROUND_CONTRAST * (canvas - canvas.mean())  # objects stand out from it
    heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0, PAN_MAX)
    pan = speed * np.array([np.cos(heading), np.sin(heading)])             # (2,) (vx, vy)
    shift = pan[None] * t[:, None]                                         # (N, 2)
    frames = _pan(canvas, (csize - size) / 2 - shift, size)               # (N, S, S, 3)
    # Distractors: own texture, size and velocity; placed so that their whole path fits.
    distractors, radii, paths = [], [], []
    for _ in range(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1)):
        radius = DISTRACTOR_RADIUS * size * rng.uniform(0.8, 1.2)
        obj = _object(rng, radius)
        angle, vel = rng.uniform(0, 2 * np.pi), rng.uniform(0, DISTRACTOR_SPEED_MAX)
        offsets = shift + vel * t[:, None] * np.array([np.cos(angle), np.sin(angle)])
        anchor = _place(rng, offsets.min(0), offsets.max(0), radius, size)
        distractors.append(obj)
        radii.append(radius)
        paths.append(anchor + offsets)
    # Actor: anchored at the middle frame within the worst case of every class (the same for all).
    actor_radius = ACTOR_RADIUS * size
    actor = _object(rng, actor_radius)
    reach = _max_excursion(half)
    anchor = _place(rng, shift.min(0) - reach, shift.max(0) + reach, actor_radius, size)
    photometric = rng.uniform(0.6, 1.0), rng.uniform(-0.15, 0.15), rng.uniform(0.0, 0.03)
    track = anchor + shift + relative_motion(name, rng.random(4), t)       # (N, 2), the class draws last
    for obj, path in [*zip(distractors, paths, strict=True), (actor, track)]:
        if OUTLINE > 0:
            patch, ax, ay, corner = obj
            _composite(frames, (np.zeros_like(patch), ax + OUTLINE, ay + OUTLINE, corner + OUTLINE), path)
        _composite(frames, obj, path)
    video = _sensor(frames, rng, *photometric)
    if not return_track:
        return video
    return video, SubtleTrack(actor=track, pan=pan, distractors=np.array(paths).reshape(-1, num_frames, 2),
                              actor_radius=float(actor_radius), distractor_radii=np.array(radii))
