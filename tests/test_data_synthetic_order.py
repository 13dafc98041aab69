"""The ``order`` synthetic kind: two motions per video whose order alone is the class."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from dynamonet.config import DataConfig, SyntheticConfig
from dynamonet.data import synthetic_order as order
from dynamonet.data.synthetic import class_names, dataset_key, ensure_synthetic_dataset, mirror_label_map
from dynamonet.data.synthetic_order import ORDER_CLASSES, min_gap, order_knobs, render_order

AXIS_SIGN = {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}   # (axis: 0 = x, 1 = y; sign)


def step_shifts(video: np.ndarray, reach: int = 4) -> np.ndarray:
    """Integer global content shift ``(n - 1, 2)`` (dx, dy) from each frame to the next: the shift
    with the smallest mean |difference| of the 3x3-blurred grayscale frames over the overlap (the
    blur keeps sensor noise on a low-contrast canvas from faking a shift between static frames)."""
    gray = video.astype(np.float32).mean(-1)                                   # (n, S, S)
    gray = (gray[:, :-2] + gray[:, 1:-1] + gray[:, 2:]) / 3
    gray = (gray[:, :, :-2] + gray[:, :, 1:-1] + gray[:, :, 2:]) / 3          # (n, S-2, S-2)
    s = gray.shape[1]
    shifts = [(dx, dy) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    errs = np.stack([np.abs(gray[:-1, max(0, -dy):s - max(0, dy), max(0, -dx):s - max(0, dx)]
                            - gray[1:, max(0, dy):s - max(0, -dy), max(0, dx):s - max(0, -dx)]).mean((1, 2))
                     for dx, dy in shifts], 1)                                  # (n - 1, K)
    return np.array(shifts)[errs.argmin(1)]


def runs(labels: list[str]) -> list[tuple[str, int]]:
    """Run-length encoding ``[(label, length), ...]``."""
    out: list[tuple[str, int]] = []
    for x in labels:
        if out and out[-1][0] == x:
            out[-1] = (x, out[-1][1] + 1)
        else:
            out.append((x, 1))
    return out


def step_labels(name: str, shifts: np.ndarray) -> list[str]:
    """Per step: "static" (no shift), the direction of the name along the dominant axis of the
    shift, or "other" (a direction the name does not hold)."""
    first, _, second = name.partition("_then_")
    out = []
    for d in shifts:
        if not d.any():
            out.append("static")
            continue
        axis = int(abs(d[1]) > abs(d[0]))                                    # 0 = x, 1 = y
        out.append(next((w for w in (first, second) if AXIS_SIGN[w] == (axis, np.sign(d[axis]))), "other"))
    return out


def test_shapes_length_bounds_and_determinism():
    lengths = set()
    for i in range(8):
        video = render_order("up_then_down", np.random.default_rng([3, i]), 72, 32)
        assert video.dtype == np.uint8 and video.shape[1:] == (32, 32, 3)
        assert 64 <= len(video) <= 71
        lengths.add(len(video))
    assert len(lengths) >= 3                                           # the length varies per video
    a = render_order("left_then_right", np.random.default_rng(11), 40, 32)
    b = render_order("left_then_right", np.random.default_rng(11), 40, 32)
    assert np.array_equal(a, b)


def test_segments_fit_for_every_length():
    for num_frames in range(32, 129):
        gap = min_gap(num_frames)
        for seed in range(10):
            lead, a, g, b, trail = order.order_segments(np.random.default_rng([num_frames, seed]), num_frames)
            n = lead + a + g + b + trail + 1
            assert n <= num_frames and min(lead, g, trail) >= gap >= math.floor(0.125 * num_frames) and min(a, b) >= gap
    assert min_gap(72) == 9 and order.motion_range(72) == (18, 20)  # N = 72: 9-frame clips see one motion


@pytest.mark.parametrize("name", ORDER_CLASSES)
def test_motions_come_in_the_named_order(name):
    first, _, second = name.partition("_then_")
    for seed in range(3):
        video, track = render_order(name, np.random.default_rng([21, seed]), 72, 32, return_track=True)
        lead, a, gap, b, trail = track.segments
        assert len(video) == sum(track.segments) + 1 and min(lead, gap, trail) >= 9 and min(a, b) >= 18
        expected = ["static"] * lead + [first] * a + ["static"] * gap + [second] * b + ["static"] * trail
        seen = step_labels(name, step_shifts(video))
        # the static segments are exact; inside a motion a slow, low-contrast step may read as one
        # integer shift off its axis (at most 2 of its 18..20 steps), never as the other direction
        assert [x for x, e in zip(seen, expected, strict=True) if e == "static"] == ["static"] * (lead + gap + trail)
        for direction, (start, length) in ((first, (lead, a)), (second, (lead + a + gap, b))):
            part = seen[start:start + length]
            assert part.count(direction) >= length - 2 and set(part) <= {direction, "static", "other"}, (name, seed)
        speeds = np.linalg.norm(track.velocity, axis=1)
        assert np.all((speeds == 0) | ((speeds >= 1.5) & (speeds <= 3.0)))


def test_short_windows_see_at_most_one_motion_and_the_pair_differs_only_in_order():
    rng_state = 5
    seqs = {}
    for name in ("right_then_left", "left_then_right"):
        video, track = render_order(name, np.random.default_rng(rng_state), 72, 32, return_track=True)
        labels = step_labels(name, step_shifts(video))
        w = min_gap(72) + 1                                                # frames, so w - 1 steps
        for start in range(len(labels) - (w - 1) + 1):
            moving = {x for x in labels[start:start + w - 1] if x != "static"}
            assert len(moving) <= 1, (name, start, moving)
        seqs[name] = (labels, track)
    (l1, t1), (l2, t2) = seqs["right_then_left"], seqs["left_then_right"]
    assert t1.segments == t2.segments                                      # same draws but the directions
    swap = {"right": "left", "left": "right", "static": "static"}
    assert [swap[x] for x in l1] == l2
    np.testing.assert_allclose(t1.velocity * [-1, 1], t2.velocity, atol=1e-12)


def test_mirror_label_map_swaps_right_and_left():
    names = sorted(ORDER_CLASSES[:4])
    mirrored = {a: names[b] for a, b in zip(names, mirror_label_map(names), strict=True)}
    assert mirrored == {"right_then_left": "left_then_right", "left_then_right": "right_then_left",
                        "up_then_down": "up_then_down", "down_then_up": "down_then_up"}
    names = sorted(ORDER_CLASSES)
    mirrored = {a: names[b] for a, b in zip(names, mirror_label_map(names), strict=True)}
    assert mirrored["right_then_up"] == "left_then_up" and mirrored["down_then_left"] == "down_then_right"
    assert mirrored["up_then_down"] == "up_then_down"


def test_class_names_config_checks_and_cache_key():
    assert class_names(3, "order") == list(ORDER_CLASSES[:3])
    assert len(set(class_names(12, "order"))) == 12
    with pytest.raises(ValueError, match="data.synthetic.num_classes"):
        class_names(13, "order")
    with pytest.raises(ValueError, match="data.synthetic.num_frames"):
        SyntheticConfig(kind="order", num_frames=24)
    with pytest.raises(ValueError, match="data.synthetic.num_frames: the order kind needs >= 32 frames, got 24"):
        render_order("up_then_down", np.random.default_rng(0), 24, 32)
    with pytest.raises(ValueError, match="unknown order class"):
        render_order("up_then_up_then_left", np.random.default_rng(0), 72, 32)
    assert set(order_knobs()) == set(order._KNOBS)
    cfg = SyntheticConfig(kind="order", num_classes=4, num_frames=40, size=32)
    motion = SyntheticConfig(num_classes=4, num_frames=40, size=32)
    assert dataset_key(cfg) != dataset_key(motion)


def test_knobs_are_in_the_cache_key(monkeypatch):
    cfg = SyntheticConfig(kind="order", num_classes=4, num_frames=40, size=32)
    before = dataset_key(cfg)
    monkeypatch.setattr(order, "STATIC_FRACTION", (0.12, 0.14))
    assert dataset_key(cfg) != before


def test_ensure_synthetic_dataset_builds_the_order_kind(tmp_path):
    from dynamonet.data import open_dataset

    cfg = SyntheticConfig(kind="order", num_classes=4, train_per_class=2, val_per_class=1, num_frames=40, size=32)
    root = ensure_synthetic_dataset(cfg, cache_dir=str(tmp_path))
    assert os.path.exists(os.path.join(root, "manifest.json"))
    manifest = open_dataset(DataConfig(root=root))
    assert manifest.class_names == sorted(ORDER_CLASSES[:4])
    train, val = manifest.splits["train"], manifest.splits["val"]
    assert (train.num_videos, val.num_videos) == (8, 4)
    counts = {**train.frame_counts}
    for n, k in val.frame_counts.items():
        counts[n] = counts.get(n, 0) + k
    assert sum(counts.values()) == 12 and len(counts) >= 2               # frame counts differ between videos
    assert 3 * 5 + 2 * 10 + 1 <= min(counts) and max(counts) <= 3 * 5 + 2 * 11 + 1  # N = 40: 5 and 10..11 steps
    names = manifest.class_names
    assert manifest.labels_hflip_invariant is False
    assert {names[i]: names[j] for i, j in enumerate(manifest.hflip_label_map)}["right_then_left"] == "left_then_right"
