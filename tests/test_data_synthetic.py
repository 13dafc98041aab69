"""The motion-defined synthetic datasets (kinds motion and subtle): motion carries the class, appearance does not."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dynamonet.config import SyntheticConfig
from dynamonet.data import synthetic
from dynamonet.data import synthetic_subtle as subtle
from dynamonet.data.synthetic import MOTIONS, class_names, ensure_synthetic_dataset, mirror_label_map, render_video
from dynamonet.data.synthetic_subtle import SUBTLE_CLASSES, render_subtle

DIRS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1), "up_right": (1, -1), "up_left": (-1, -1),
        "down_left": (-1, 1), "down_right": (1, 1)}


def shift(a: np.ndarray, b: np.ndarray, reach: int = 7) -> tuple[float, float]:
    """Integer global (dx, dy) of b relative to a: the smallest mean |difference| over the overlap."""
    best, arg = np.inf, (0.0, 0.0)
    h, w = a.shape[:2]
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            pa = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            pb = b[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
            err = np.abs(pa - pb).mean()
            if err < best:
                best, arg = err, (float(dx), float(dy))
    return arg


def crop40(video: np.ndarray) -> np.ndarray:
    return video[:9, 4:44, 4:44].astype(np.float32)             # a 40x40 crop of the first 9 frames


def test_thirteen_motion_classes_and_determinism():
    assert len(MOTIONS) == 13 and class_names(10) == list(MOTIONS[:10])
    a = render_video("zoom_in", np.random.default_rng(5), 24, 48)
    b = render_video("zoom_in", np.random.default_rng(5), 24, 48)
    assert a.shape == (24, 48, 48, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.parametrize("direction", sorted(DIRS))
def test_translations_move_1_to_3_px_per_frame_in_their_direction(direction):
    for i in range(4):
        clip = crop40(render_video(f"translate_{direction}", np.random.default_rng([1, i]), 24, 48))
        d = np.median([shift(clip[t], clip[t + 2]) for t in range(7)], axis=0) / 2   # px per frame
        want = np.array(DIRS[direction], dtype=float)
        cos = np.dot(d, want) / (np.linalg.norm(want) * np.linalg.norm(d) + 1e-9)
        assert cos > 0.9 and 0.4 < np.linalg.norm(d) < 3.6, (direction, i, d)


def test_static_rotation_and_zoom_have_no_global_translation():
    rng = np.random.default_rng(0)
    static = crop40(render_video("static", rng, 24, 48))
    assert np.abs(static[8] - static[0]).mean() < 6                 # noise only
    for motion in ("rotate_cw", "rotate_ccw", "zoom_in", "zoom_out"):
        clip = crop40(render_video(motion, rng, 24, 48))
        change = np.abs(clip[8] - clip[0]).mean(-1)                   # visible motion over 9 frames,
        assert change.mean() > 10, motion                              # growing with the radius
        assert change[16:24, 16:24].mean() < 0.8 * np.concatenate([change[:6].ravel(), change[-6:].ravel()]).mean()


def test_one_frame_does_not_tell_the_class():
    """Nearest-centroid on first-frame colour and texture statistics stays near chance."""
    feats, labels = [], []
    for c, motion in enumerate(MOTIONS):
        for i in range(16):
            f = render_video(motion, np.random.default_rng([7, c, i]), 12, 48)[0].astype(np.float32)
            grad = np.abs(np.diff(f, axis=0)).mean() + np.abs(np.diff(f, axis=1)).mean()
            edges = [f[0].mean(), f[-1].mean(), f[:, 0].mean(), f[:, -1].mean()]
            feats.append([*f.mean((0, 1)), *f.std((0, 1)), grad, *edges])
            labels.append(c)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(0)) / x.std(0)
    train, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(13)])
    pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == y[test]).mean() < 0.25                          # chance = 0.077


def test_mirror_label_map_swaps_left_right_and_rotation_sense():
    names = sorted(MOTIONS)
    mapping = mirror_label_map(names)
    mirrored = {a: names[b] for a, b in zip(names, mapping, strict=True)}
    assert mirrored["translate_up_left"] == "translate_up_right" and mirrored["rotate_cw"] == "rotate_ccw"
    assert mirrored["translate_up"] == "translate_up" and mirrored["zoom_in"] == "zoom_in"
    assert mirror_label_map(["translate_right", "translate_up"]) is None  # no mirror class: no flips


def _files(root: str) -> dict[str, tuple[int, int, int]]:
    """``relative path -> (inode, mtime in ns, size)`` of every file under ``root``."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_ensure_synthetic_dataset_is_cached_by_config(tmp_path, monkeypatch):
    from dynamonet.data import synthetic

    rendered: list[str] = []
    real = synthetic.render_video

    def counting(motion: str, *args: object, **kwargs: object) -> np.ndarray:
        rendered.append(motion)
        return real(motion, *args, **kwargs)

    monkeypatch.setattr(synthetic, "render_video", counting)
    cfg = SyntheticConfig(num_classes=3, train_per_class=2, val_per_class=1, num_frames=12, size=32)
    root = ensure_synthetic_dataset(cfg, str(tmp_path))
    videos = cfg.num_classes * (cfg.train_per_class + cfg.val_per_class)
    assert len(rendered) == videos                              # the spy sees every rendered video
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    assert manifest["counts"]["per_split"] == {"train": 6, "val": 3}
    assert manifest["transcode"]["short_side"] == 32 and manifest["splits"]["train"]["max_frames"] == 12
    assert manifest["labels_hflip_invariant"] is False          # a flip would swap left/right, cw/ccw
    names = manifest["class_names"]
    assert [names[i] for i in manifest["hflip_label_map"]] == ["translate_right", "translate_left", "translate_up"]
    before = _files(root)
    assert ensure_synthetic_dataset(cfg, str(tmp_path)) == root
    assert len(rendered) == videos and _files(root) == before  # reused: nothing rendered, no file rewritten
    other = ensure_synthetic_dataset(SyntheticConfig(**{**cfg.__dict__, "seed": 1}), str(tmp_path))
    assert len(rendered) == 2 * videos                          # another config is another build
    built = sorted(n for n in os.listdir(tmp_path) if not n.endswith(".lock"))   # no temp dirs left
    assert other != root and built == sorted([os.path.basename(root), os.path.basename(other)])


def test_concurrent_callers_build_the_synthetic_set_once(tmp_path, monkeypatch):
    import threading

    from dynamonet.data import synthetic

    calls = []
    real = synthetic.generate_videos
    monkeypatch.setattr(synthetic, "generate_videos", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cfg = SyntheticConfig(num_classes=3, train_per_class=2, val_per_class=1, num_frames=12, size=32, seed=5)
    roots = []
    threads = [threading.Thread(target=lambda: roots.append(ensure_synthetic_dataset(cfg, str(tmp_path))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(roots) == 3 and len(set(roots)) == 1 and len(calls) == 1      # one build, three users
    assert os.path.exists(os.path.join(roots[0], "manifest.json"))


# --- the subtle kind: one object's motion relative to a panning background, among distractors ---

def test_subtle_class_names_mirror_map_and_too_many_classes(tmp_path):
    names = class_names(10, "subtle")
    assert names == list(SUBTLE_CLASSES) and len(set(names)) == 10 and class_names(3, "subtle") == names[:3]
    assert all(part for n in names for part in n.split("_"))
    ordered = sorted(names)
    mapping = mirror_label_map(ordered)
    assert mapping is not None and sorted(mapping) == list(range(10))              # a permutation
    mirrored = {a: ordered[b] for a, b in zip(ordered, mapping, strict=True)}
    assert mirrored["right_slow"] == "left_slow" and mirrored["left_fast"] == "right_fast"
    assert all(mirrored[n] == n for n in names if not n.startswith(("left_", "right_")))
    for bad in (11, 13):
        with pytest.raises(ValueError, match=r"^data\.synthetic\.num_classes: .*10 classes") as err:
            ensure_synthetic_dataset(SyntheticConfig(kind="subtle", num_classes=bad), str(tmp_path))
        assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []                                              # refused before any work


def test_subtle_cache_key_covers_kind_and_difficulty_constants(monkeypatch):
    cfg = SyntheticConfig(kind="subtle", num_classes=4)
    key = synthetic.dataset_key(cfg)
    assert key != synthetic.dataset_key(SyntheticConfig(num_classes=4))
    monkeypatch.setattr(subtle, "PAN_MAX", subtle.PAN_MAX + 0.1)                    # recalibrated: rebuilt
    assert synthetic.dataset_key(cfg) != key


N, S = 12, 32  # the benchmark recipe's videos (pipelines/recipes/subtle.yaml)


def relative_track(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, subtle.SubtleTrack]:
    """(actor offset from its anchor on the background (N, 2), its per-frame velocity (N-1, 2), track)."""
    _, track = render_subtle(name, np.random.default_rng([3, seed]), N, S, return_track=True)
    t = np.arange(N) - (N - 1) / 2
    offset = track.actor - track.pan * t[:, None]
    return offset - offset.mean(0), np.diff(offset, axis=0), track


HEADINGS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}


@pytest.mark.parametrize("name", SUBTLE_CLASSES)
def test_subtle_actor_moves_as_its_class_relative_to_the_background(name):
    head, _, tail = name.partition("_")
    axis = 0 if tail == "horizontal" else 1
    for seed in range(6):
        offset, vel, track = relative_track(name, seed)
        r = track.actor_radius
        assert np.all((track.actor >= r) & (track.actor <= S - 1 - r)), (name, seed)   # inside the frame, always
        radii = track.distractor_radii[:, None, None]
        assert 2 <= len(radii) <= 4 and np.all((track.distractors >= radii) & (track.distractors <= S - 1 - radii))
        assert np.all(radii < 0.6 * r) and np.linalg.norm(track.pan) <= subtle.PAN_MAX
        if tail in ("slow", "fast"):                                              # constant drift
            mean = vel.mean(0)
            speed, want = np.linalg.norm(mean), np.array(HEADINGS[head])
            assert np.allclose(vel, mean, atol=1e-9) and np.dot(mean, want) / speed > np.cos(np.deg2rad(10.01))
            lo, hi = subtle.SLOW_SPEED if tail == "slow" else subtle.FAST_SPEED
            split = (subtle.SLOW_SPEED[1] + subtle.FAST_SPEED[0]) / 2                # slow and fast never meet
            assert lo <= speed <= hi and (hi < split if tail == "slow" else lo > split), (name, seed, speed)
        elif head == "still":
            assert np.abs(vel).max() < 1e-9
        else:                                                                     # no drift, oscillates on one axis
            along = offset[:, axis]
            assert np.abs(offset[:, 1 - axis]).max() < 1e-9 and np.abs(along).max() < 3.5
            assert along.std() > 0.7   # bounded (|offset| < 3.5 px, a slow drift covers >= 4.4 px), moving
            steps = vel[:, axis]
            if head == "shake":                                                   # period 4-6 over 11 steps
                assert 2 <= np.sum(np.diff(np.sign(steps)) != 0) <= 6, (name, seed)
            else:                                                                 # zigzag: constant |v|
                full = np.abs(steps) > 0.999 * np.abs(steps).max()                # and a reversal in every 8 frames
                lo, hi = subtle.ZIGZAG_SPEED
                assert lo <= np.abs(steps).max() <= hi and full.sum() >= 5
                for s in range(len(steps) - 6):
                    window = steps[s:s + 7]
                    assert window.max() > 0.5 and window.min() < -0.5, (name, seed, s)


def test_subtle_is_deterministic_and_only_the_actor_depends_on_the_class():
    a = render_subtle("zigzag_horizontal", np.random.default_rng([1, 2, 3, 0]), 24, 48)
    assert a.shape == (24, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_subtle("zigzag_horizontal", np.random.default_rng([1, 2, 3, 0]), 24, 48))
    assert np.abs(a.astype(int) - render_subtle("zigzag_horizontal", np.random.default_rng([1, 2, 3, 1]), 24,
                                                48)).mean() > 10
    # The same generator state renders the same background, distractors and noise for every class:
    # two classes differ only near the actor's two paths.
    left, lt = render_subtle("left_fast", np.random.default_rng(9), 24, 48, return_track=True)
    shake, st = render_subtle("shake_vertical", np.random.default_rng(9), 24, 48, return_track=True)
    yy, xx = np.mgrid[0:48, 0:48]
    near = np.zeros((24, 48, 48), dtype=bool)
    for track in (lt, st):
        dist = np.maximum(np.abs(xx - track.actor[:, 0, None, None]), np.abs(yy - track.actor[:, 1, None, None]))
        near |= dist <= track.actor_radius + 2
    assert np.array_equal(left[~near], shake[~near]) and not np.array_equal(left[near], shake[near])


def test_one_subtle_frame_does_not_tell_the_class():
    """Nearest-centroid on one random frame's colour, contrast and a coarse 6x6 layout stays near chance."""
    chosen = ("right_slow", "left_fast", "shake_horizontal", "zigzag_horizontal", "still")
    pick = np.random.default_rng(0)
    feats, labels = [], []
    for c, name in enumerate(chosen):
        for i in range(20):
            video = render_subtle(name, np.random.default_rng([11, c, i]), 24, 48)
            f = video[pick.integers(24)].astype(np.float32)
            coarse = f.mean(-1).reshape(6, 8, 6, 8).mean((1, 3)).ravel()         # (36,) 8x8-pixel blocks
            feats.append([*f.mean((0, 1)), *f.std((0, 1)), *coarse])
            labels.append(c)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(0)) / x.std(0)
    train, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(len(chosen))])
    pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), 1)
    # chance = 0.2; with 50 test frames the binomial std at chance is 0.057, so 0.37 is chance + 3 std
    assert (pred == y[test]).mean() < 0.37


def test_generate_videos_writes_decodable_subtle_mp4s(tmp_path):
    import av

    cfg = SyntheticConfig(kind="subtle", num_classes=2, train_per_class=1, val_per_class=1, num_frames=12, size=32)
    assert synthetic.generate_videos(cfg, str(tmp_path), workers=1) == 4
    for split_id, split in enumerate(("train", "val")):
        assert sorted(os.listdir(tmp_path / split)) == ["right_fast", "right_slow"]
        for class_id, name in enumerate(("right_slow", "right_fast")):
            path = tmp_path / split / name / f"{name}_00000.mp4"
            with av.open(str(path)) as container:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            want = render_subtle(name, np.random.default_rng([cfg.seed, split_id, class_id, 0]), 12, 32)
            # H.264 (4:2:0 chroma) of noisy 32-px textures: about 6-8 grey levels off; another video: 40-60
            assert frames.shape == (12, 32, 32, 3) and np.abs(frames.astype(int) - want).mean() < 12
