"""The motion-defined synthetic dataset: motion carries the class, appearance does not."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dynamonet.config import SyntheticConfig
from dynamonet.data.synthetic import MOTIONS, class_names, ensure_synthetic_dataset, mirror_label_map, render_video

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
