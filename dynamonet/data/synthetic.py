"""Motion-defined action datasets: the embedded default, the test data and a benchmark set.

DynamoNet learns motion by predicting the next frame with dynamic filters (paper §3.1) and
classifies with the motion (DMR) and appearance (AR) features (§3.2). These datasets make the
class a function of the motion only, so a network must use the frames' dynamics to solve them.
``SyntheticConfig.kind`` picks one of three kinds.

``motion`` (the embedded default): 13 global motions of a random canvas.

    classes   translate in 8 directions (1-3 px/frame), rotate cw / ccw, zoom in / out, static
    content   a random canvas per video (smooth colour fields, stripes/checker/noise textures,
              10-24 shapes of random colours, sizes and positions), 2.75x larger than the frame
    motion    frame t samples the canvas through the class's similarity transform at time
              t - (N-1)/2 (bilinear, numpy), then the centre S x S is kept: the warp never leaves
              the canvas, so there are no black borders or edge artefacts that could give the
              direction away; per-frame sensor noise, random brightness and contrast per video

``subtle`` (a benchmark for the §4.5 ablation, plain 3D CNN vs dynamic motion filters): 10
classes of one object's motion relative to a panning background, among distractor objects
moving at similar speeds: right/left slow and fast, up/down slow, horizontal/vertical shake,
horizontal zigzag, still (see :mod:`dynamonet.data.synthetic_subtle`).

``order`` (a benchmark for video-level temporal fusion, STFN over a video's clips): up to 12
classes, the ordered pairs of two different global translations of a random canvas separated by
a static gap (right then left, left then right, ..., up then right). Every window shorter than the
gap shows at most one motion, so a mean of clip scores is at chance between a class and its
reverse; only the clip sequence tells them apart. Video lengths vary (``num_frames`` >= 32 is the
longest; see :mod:`dynamonet.data.synthetic_order`).

Appearance is drawn independently of the class, so a single frame carries no class information.
A horizontal flip turns "right" into "left" and "cw" into "ccw", so the manifest declares
``labels_hflip_invariant: false`` and the clip stream flips (and relabels) training clips only
where the manifest's mirror label map covers every class. The generator is a pure function of
:class:`~dynamonet.config.SyntheticConfig` (seeded per video), writes real H.264 files in a
``<split>/<class>/<id>.mp4`` tree, and ingests them through the same code as every other
source (no resize: short side = ``size``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np

from dynamonet.config import DataConfig, SyntheticConfig
from dynamonet.data.encode import TranscodeSettings, encode_video
from dynamonet.data.shards import MANIFEST_NAME
from dynamonet.storage import is_file, is_remote, join_uri, resolve_filesystem

GENERATOR_VERSION = 4  # 4: shuffled rows in shards, mirror label map
# The first `num_classes` of these are used; the order keeps small subsets diverse.
MOTIONS = ("translate_right", "translate_left", "translate_up", "translate_down", "rotate_cw", "rotate_ccw",
           "zoom_in", "zoom_out", "static", "translate_up_right", "translate_up_left", "translate_down_left",
           "translate_down_right")
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1), "up_right": (1, -1),
               "up_left": (-1, -1), "down_left": (-1, 1), "down_right": (1, 1)}   # (dx, dy), y down


def class_names(num_classes: int, kind: str = "motion") -> list[str]:
    """Class names of a dataset of ``kind`` with ``num_classes`` classes (generation order); a
    ValueError naming the config field when the kind has fewer classes."""
    if kind == "motion":
        names: tuple[str, ...] = MOTIONS
    elif kind == "subtle":
        from dynamonet.data.synthetic_subtle import SUBTLE_CLASSES as names
    elif kind == "order":
        from dynamonet.data.synthetic_order import ORDER_CLASSES as names
    else:
        raise ValueError(f"data.synthetic.kind: unknown kind {kind!r}; choose from motion, subtle, order")
    if num_classes > len(names):
        raise ValueError(f"data.synthetic.num_classes: the {kind} kind has {len(names)} classes, "
                         f"choose 2..{len(names)}, got {num_classes}")
    return list(names[:num_classes])


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``img (H, W, C)`` float32 at float coordinates ``ys, xs`` (same shape ``D``) with
    bilinear interpolation; returns ``D + (C,)``. Channel planes keep the gathers contiguous."""
    ys, xs = np.broadcast_arrays(ys, xs)
    (h, w, c), shape = img.shape, ys.shape
    ys = np.clip(ys, 0, h - 1.001).astype(np.float32).ravel()
    xs = np.clip(xs, 0, w - 1.001).astype(np.float32).ravel()
    y0, x0 = ys.astype(np.int32), xs.astype(np.int32)
    wy, wx = ys - y0, xs - x0
    planes, i00 = np.ascontiguousarray(img.reshape(-1, c).T), y0 * w + x0      # (C, H*W), (P,)
    a, b, d, e = (np.take(planes, i, axis=1) for i in (i00, i00 + 1, i00 + w, i00 + w + 1))
    top = a + (b - a) * wx
    out = top + (d + (e - d) * wx - top) * wy                                   # (C, P)
    return out.T.reshape(*shape, c)


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1, channels), dtype=np.float32)
    coords = np.linspace(0, cells, size, dtype=np.float32)
    return _bilinear(grid, coords[:, None], coords[None, :])


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(3)
    # Periods >= 12 px (4x the top speed): a periodic texture moving by a large fraction of its
    # period per frame would make the direction ambiguous (temporal aliasing).
    if kind == 0:   # stripes at a random angle and period
        a, period = rng.uniform(0, np.pi), rng.uniform(12, 24)
        return (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0).astype(np.float32)
    if kind == 1:   # checker
        cell = rng.integers(6, 12)
        return ((xx // cell + yy // cell) % 2).astype(np.float32)
    return _smooth_field(rng, size, int(rng.integers(12, 32)), 1)[..., 0]


def _draw_shapes(rng: np.random.Generator, canvas: np.ndarray) -> None:
    size = canvas.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(rng.integers(10, 25)):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(2, size / 8, 2)
        colour = rng.random(3, dtype=np.float32)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        canvas[mask] = colour


def random_canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random appearance ``(size, size, 3)`` float32 in [0, 1], independent of any class."""
    base = _smooth_field(rng, size, int(rng.integers(2, 7)), 3)
    tex = _texture(rng, size)[..., None] * rng.random(3, dtype=np.float32)
    canvas = (1 - (mix := rng.uniform(0.2, 0.7))) * base + mix * tex
    _draw_shapes(rng, canvas)
    return canvas


def _canvas_size(size: int, num_frames: int) -> int:
    need = max(2.75 * size, size + 3.0 * (num_frames - 1) + 8)
    return int(np.ceil(need / 2) * 2)


def _motion_params(motion: str, rng: np.random.Generator, size: int, half_span: float, canvas: int
                   ) -> tuple[np.ndarray, float, float]:
    """(velocity (2,) px/frame, rotation rad/frame, log-zoom per frame) of one video."""
    r_ref = size / 3.0
    speed = rng.uniform(1.0, 3.0)
    vel, omega, rho = np.zeros(2), 0.0, 0.0
    if motion.startswith("translate_"):
        dx, dy = _DIRECTIONS[motion[len("translate_"):]]
        angle = np.arctan2(dy, dx) + rng.uniform(-0.17, 0.17)
        vel = speed * np.array([np.cos(angle), np.sin(angle)])
    elif motion.startswith("rotate_"):
        omega = (1 if motion == "rotate_cw" else -1) * speed / r_ref
    elif motion.startswith("zoom_"):
        rho_max = min(0.08, np.log(0.9 * canvas / size) / max(half_span, 1.0))
        rho = (1 if motion == "zoom_in" else -1) * min(speed / r_ref, rho_max) * rng.uniform(0.6, 1.0)
    return vel, omega, rho


def render_video(motion: str, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """Frames ``(N, S, S, 3)`` uint8 of one video of class ``motion`` (see :data:`MOTIONS`)."""
    csize = _canvas_size(size, num_frames)
    canvas = random_canvas(rng, csize)
    half = (num_frames - 1) / 2
    vel, omega, rho = _motion_params(motion, rng, size, half, csize)
    t = np.arange(num_frames, dtype=np.float32) - half                     # (N,)
    p = np.arange(size, dtype=np.float32) - (size - 1) / 2
    py, px = np.meshgrid(p, p, indexing="ij")                              # (S, S), frame-centred
    scale, theta = np.exp(rho * t)[:, None, None], (omega * t)[:, None, None]
    qx, qy = px[None] / scale, py[None] / scale                            # undo zoom, (N, S, S)
    cos, sin = np.cos(theta), np.sin(theta)
    sx = cos * qx + sin * qy - (vel[0] * t)[:, None, None]                 # undo rotation, translation
    sy = -sin * qx + cos * qy - (vel[1] * t)[:, None, None]
    frames = _bilinear(canvas, sy + (csize - 1) / 2, sx + (csize - 1) / 2)  # (N, S, S, 3)
    return _sensor(frames, rng, rng.uniform(0.6, 1.0), rng.uniform(-0.15, 0.15), rng.uniform(0.0, 0.03))


def _sensor(frames: np.ndarray, rng: np.random.Generator, contrast: float, brightness: float, noise: float
            ) -> np.ndarray:
    """Float frames ``(N, S, S, 3)`` in [0, 1] -> uint8 through a video's contrast, brightness and
    per-pixel Gaussian sensor noise of std ``noise``."""
    frames = (frames - 0.5) * contrast + 0.5 + brightness
    frames += noise * rng.standard_normal(frames.shape, dtype=np.float32)
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_class(cfg: SyntheticConfig, out_dir: str, split_id: int, split: str, class_id: int, count: int) -> int:
    name = class_names(cfg.num_classes, cfg.kind)[class_id]
    if cfg.kind == "subtle":
        from dynamonet.data.synthetic_subtle import render_subtle as render
    elif cfg.kind == "order":   # n varies per video (<= num_frames): gop=num_frames is one keyframe
        from dynamonet.data.synthetic_order import render_order as render
    else:
        render = render_video
    folder = os.path.join(out_dir, split, name)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([cfg.seed, split_id, class_id, i])
        frames = render(name, rng, cfg.num_frames, cfg.size)
        with open(os.path.join(folder, f"{name}_{i:05d}.mp4"), "wb") as fh:
            fh.write(encode_video(frames, cfg.fps, gop=cfg.num_frames, crf=12))
    return count


def generate_videos(cfg: SyntheticConfig, out_dir: str, workers: int = 0) -> int:
    """Write ``<out_dir>/<split>/<class>/<class>_<i>.mp4`` for splits train and val; returns the count.

    ``workers`` > 1 renders classes in a spawn-started process pool (0 = one per core); the
    output does not depend on it (every video is seeded by its own (seed, split, class, index)).
    """
    class_names(cfg.num_classes, cfg.kind)  # a ValueError before any work when the kind has fewer classes
    jobs = [(cfg, out_dir, split_id, split, class_id, per_class)
            for split_id, (split, per_class) in enumerate((("train", cfg.train_per_class), ("val", cfg.val_per_class)))
            for class_id in range(cfg.num_classes)]
    workers = workers or (os.cpu_count() or 1)
    if workers <= 1:
        return sum(_write_class(*job) for job in jobs)
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(_write_class, *zip(*jobs, strict=True)))


def transcode_settings(cfg: SyntheticConfig) -> TranscodeSettings:
    """The canonical format of the synthetic shards: no resize, keyframe every 8 frames."""
    return TranscodeSettings(short_side=cfg.size, gop=8, crf=18)


def mirror_label_map(names: list[str]) -> list[int] | None:
    """For each class, the class of its left-right mirror image (right↔left, cw↔ccw), or None if
    some mirror class is not in ``names`` (then training clips are not flipped)."""
    swap = {"right": "left", "left": "right", "cw": "ccw", "ccw": "cw"}
    mirrored = ["_".join(swap.get(part, part) for part in n.split("_")) for n in names]
    if any(m not in names for m in mirrored):
        return None
    return [names.index(m) for m in mirrored]


def dataset_key(cfg: SyntheticConfig) -> str:
    """Cache key: a hash of the config, the generator version and the transcode settings (and, for
    the subtle and order kinds, their knob constants)."""
    parts: list[object] = [asdict(cfg), GENERATOR_VERSION, asdict(transcode_settings(cfg))]
    if cfg.kind == "subtle":
        from dynamonet.data.synthetic_subtle import subtle_knobs

        parts.append(subtle_knobs())
    elif cfg.kind == "order":
        from dynamonet.data.synthetic_order import order_knobs

        parts.append(order_knobs())
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


DEFAULT_CACHE = os.path.join("~", ".cache", "dynamonet")


def synthetic_root(data: DataConfig) -> str:
    """The embedded dataset of a data config (empty ``data.root``): built once, under
    ``<data.cache_dir>/synthetic/`` (``~/.cache/dynamonet`` by default, or an ``s3://`` prefix)."""
    cache = data.cache_dir or DEFAULT_CACHE
    return ensure_synthetic_dataset(data.synthetic, join_uri(cache, "synthetic") if is_remote(cache)
                                    else os.path.join(cache, "synthetic"), data.s3_endpoint)


def ensure_synthetic_dataset(cfg: SyntheticConfig, cache_dir: str = "", endpoint: str = "") -> str:
    """Build (once) and return the shard root of the synthetic dataset described by ``cfg``.

    The root is ``<cache_dir>/synthetic-<key>``, a local directory or an ``s3://`` prefix (the
    cluster's shared storage, see dynamonet/cluster/runtime.py); a second call with the same config
    returns at once; a config whose kind has fewer than ``num_classes`` classes fails first (a
    ValueError naming ``data.synthetic.num_classes``). Locally, concurrent callers (the trials of
    a sweep on a cold cache) take an exclusive ``flock`` on ``<cache_dir>/.synthetic-<key>.lock``:
    one builds, the others wait and then use its result; the build goes to a private temp dir
    renamed into place, so a killed builder leaves nothing half-written (and the kernel releases
    its lock). On S3 there is no lock: the shards are a pure function of ``cfg`` and
    ``manifest.json`` is written last, so concurrent builders write the same objects and readers
    only ever see a complete set.
    """
    class_names(cfg.num_classes, cfg.kind)
    if is_remote(cache_dir):
        final = join_uri(cache_dir, f"synthetic-{dataset_key(cfg)}")
        fs, path = resolve_filesystem(final, endpoint)
        if not is_file(fs, f"{path}/{MANIFEST_NAME}"):
            _build(cfg, final, endpoint)
        return final
    cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE)
    final = os.path.join(cache_dir, f"synthetic-{dataset_key(cfg)}")
    if os.path.exists(os.path.join(final, MANIFEST_NAME)):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    with _exclusive(os.path.join(cache_dir, f".{os.path.basename(final)}.lock")):  # hidden: globs see datasets only
        if not os.path.exists(os.path.join(final, MANIFEST_NAME)):
            _build(cfg, final)
    return final


@contextlib.contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; say so when another process holds it."""
    with open(lock_path, "a") as fh:
        locked = True
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"synthetic dataset: another process is building it, waiting for {lock_path}", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # no flock on this filesystem: builders race, and the first rename wins
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _build(cfg: SyntheticConfig, final: str, endpoint: str = "") -> None:
    """Render the videos into a private temp dir and ingest them to ``final`` (local: through a
    temp dir renamed into place; S3: straight to the bucket, manifest last)."""
    from dynamonet.data.ingest import IngestOptions, run_ingest  # ingest imports Ray lazily

    remote = is_remote(final)
    work = tempfile.mkdtemp(prefix="dynamonet-synthetic-") if remote else f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        n = generate_videos(cfg, os.path.join(work, "raw"))
        opts = IngestOptions(source="synthetic", input=os.path.join(work, "raw"),
                             output=final if remote else os.path.join(work, "shards"), endpoint=endpoint,
                             transcode=transcode_settings(cfg), videos_per_shard=64, labels_hflip_invariant=False,
                             hflip_label_map=mirror_label_map(sorted(class_names(cfg.num_classes, cfg.kind))))
        run_ingest(opts, executor="threads", progress=False, verbose=False)
        if not remote:
            try:
                os.rename(os.path.join(work, "shards"), final)
            except OSError:
                if not os.path.exists(os.path.join(final, MANIFEST_NAME)):
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"synthetic dataset: {n} {cfg.kind} videos ({cfg.num_classes} classes, {cfg.num_frames} frames, "
          f"{cfg.size}px) built in {time.perf_counter() - t0:.1f} s -> {final}", flush=True)
