"""Ray Data stream of training / evaluation clips from video shards (paper §4.3 sampling).

    open_dataset(cfg)                    driver-side checks, fail fast with one-line ValueErrors
        │
    read_parquet(shards, filesystem=RetryingS3FileSystem | local)     video rows, projected columns
        │   training: file order reshuffled every epoch (FileShuffleConfig, reseeded per execution)
    map_batches(decode, TaskPoolStrategy | ActorPoolStrategy(decode_actors), num_cpus=decode_cpus)
        │   fused with the read (one task reads a shard and decodes it), whole read blocks in,
        │   one output block per ≤ 128 MB of clips (a shard's clips are one contiguous block,
        │   so consumer batches are zero-copy slices of it)
        │   K random windows per video (training) | every non-overlapping window (eval)
    union(padding rows)                  status=1 rows so that rows % num_consumers == 0
        ▼
    clip rows → Ray Train: streaming_split(n, equal=True) → iter_torch_batches

Epoch rule. Every video yields a fixed number of rows (K, or its window count; a corrupt video
yields the same number of status=2 rows), so an epoch has exactly ``num_clips`` real rows, known
on the driver from the manifest. ``streaming_split(n, equal=True)`` gives every consumer the same
number of rows by *dropping* the ``total % n`` remainder; padding the total to a multiple of n
makes that remainder zero, so no real row is dropped, every training video is seen exactly K times
per epoch, and every consumer gets the same rows and batches.

Randomness. Each epoch re-executes the dataset. A video's windows, crops and flips are drawn from
``(seed, execution index, video_index)``: different every epoch, independent of which actor
decodes the row, reproducible for a given seed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import ray
from ray.data.datasource import FileShuffleConfig

from dynamonet.config import DataConfig
from dynamonet.data.decode import INPUT_COLUMNS, STATUS_PADDING, ClipDecoder
from dynamonet.data.sampling import clip_span, total_eval_windows
from dynamonet.data.shards import (
    MANIFEST_NAME,
    PROBE_CONNECT_TIMEOUT,
    PROBE_REQUEST_TIMEOUT,
    Manifest,
    SplitInfo,
    endpoint_url,
    is_s3,
    join_uri,
    read_bytes,
    resolve_endpoint,
    resolve_filesystem,
    uri_path,
)
from dynamonet.data.synthetic import ensure_synthetic_dataset

TARGET_BATCH_BYTES = 128 << 20    # decoded clip bytes per decoder output (Ray Data's default target block size)
_NETWORK_ERRORS = ("NETWORK_CONNECTION", "curlCode", "Timeout", "timed out", "Could not connect", "resolve host")


@dataclass
class ClipDatasetInfo:
    """What the training loop needs to know about a clip stream, before iterating it."""

    num_videos: int
    num_clips: int                      # real rows per epoch (status 0 expected)
    num_padding: int                    # status=1 rows added so rows % num_consumers == 0
    class_names: list[str]
    clip_shape: tuple[int, int, int, int]   # (T+1, S, S, 3)
    num_consumers: int = 1
    hflip: bool = False                 # training clips are flipped at random

    @property
    def rows_per_consumer(self) -> int:
        """Rows every consumer receives per epoch."""
        return (self.num_clips + self.num_padding) // self.num_consumers


def _probe_error(cfg: DataConfig, root: str, err: Exception) -> ValueError:
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if any(s in str(err) for s in _NETWORK_ERRORS):
        url = endpoint_url(resolve_endpoint(cfg.s3_endpoint)) or "AWS S3"
        origin = "data.s3_endpoint" if cfg.s3_endpoint else "AWS_ENDPOINT_URL*" if url != "AWS S3" else "default"
        return ValueError(f"data.s3_endpoint: cannot reach the S3 endpoint {url} (from {origin}) for {root}: {msg}")
    return ValueError(f"data.root: cannot read {join_uri(root, MANIFEST_NAME)}: {msg}")


def open_dataset(cfg: DataConfig) -> Manifest:
    """Read and check the manifest on the driver; every problem is one ``ValueError`` line naming
    the config field. An empty ``data.root`` builds (once) and opens the synthetic dataset.

    S3 is probed with one attempt and second-scale timeouts, so a wrong endpoint fails in a few
    seconds instead of riding the long retry policy used for streaming.
    """
    root = cfg.root or ensure_synthetic_dataset(cfg.synthetic, cfg.cache_dir)
    fs, path = resolve_filesystem(root, cfg.s3_endpoint, max_attempts=1, connect_timeout=PROBE_CONNECT_TIMEOUT,
                                  request_timeout=PROBE_REQUEST_TIMEOUT)
    if not is_s3(root) and fs.get_file_info(path).type != pafs.FileType.Directory:
        raise ValueError(f"data.root: directory {root} does not exist")
    try:
        text = read_bytes(fs, f"{path}/{MANIFEST_NAME}").decode()
    except FileNotFoundError:
        raise ValueError(f"data.root: no {MANIFEST_NAME} at {join_uri(root, MANIFEST_NAME)} "
                         "(run pipelines/prepare_data.py, or the ingest did not finish)") from None
    except OSError as e:
        raise _probe_error(cfg, root, e) from None
    try:
        manifest = Manifest.from_json(text, root=root)
    except (ValueError, KeyError) as e:
        raise ValueError(f"data.root: {join_uri(root, MANIFEST_NAME)}: {e}") from None
    check_split(cfg, manifest, cfg.train_split, "data.train_split")
    if cfg.val_split:
        check_split(cfg, manifest, cfg.val_split, "data.val_split")
    return manifest


def check_split(cfg: DataConfig, manifest: Manifest, split: str, key: str = "split") -> None:
    """``split`` exists and at least one of its videos is as long as one clip (shorter videos are
    looped, but a split where *every* video is shorter is a configuration mistake)."""
    if split not in manifest.splits:
        raise ValueError(f"{key}: split {split!r} is not in {join_uri(manifest.root, MANIFEST_NAME)} "
                         f"(it has: {', '.join(sorted(manifest.splits)) or 'none'})")
    span, longest = clip_span(cfg.clip_len, cfg.frame_stride), manifest.splits[split].max_frames
    if span > longest:
        raise ValueError(f"data.clip_len: a clip spans {span} frames (clip_len {cfg.clip_len} + 1 frames, "
                         f"frame_stride {cfg.frame_stride}) but the longest video of split {split!r} has {longest}")


def _execution_epoch() -> int:
    """Ray Data's execution index (one per iteration of the dataset): the epoch of the draws."""
    epoch = getattr(ray.data.DataContext.get_current(), "_execution_idx", None)
    if epoch is None:  # older/newer Ray without it: fresh randomness per execution instead
        epoch = secrets.randbits(62)
    return int(epoch)


def _decode_in_parts(decode: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], batch: dict[str, np.ndarray],
                     videos_per_part: int) -> Iterator[dict[str, np.ndarray]]:
    """Decode a read block (a shard's rows) ``videos_per_part`` videos at a time, yielding each
    part's clip rows: memory stays bounded, and a part is one contiguous output block."""
    n = len(batch["video_index"])
    for lo in range(0, n, videos_per_part):
        yield decode({k: v[lo:lo + videos_per_part] for k, v in batch.items()})


class _RayClipDecoder(ClipDecoder):
    """ClipDecoder for an actor pool; learns the epoch when the pool starts (once per execution)."""

    def __init__(self, videos_per_part: int, **kwargs: object) -> None:
        super().__init__(epoch=_execution_epoch(), **kwargs)
        self.videos_per_part = videos_per_part

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:  # type: ignore[override]
        yield from _decode_in_parts(super().__call__, batch, self.videos_per_part)


def _decode_task(batch: dict[str, np.ndarray], videos_per_part: int, **kwargs: object
                 ) -> Iterator[dict[str, np.ndarray]]:
    """The task-pool form: a ClipDecoder is a few attributes, so building one per block is free, and
    the worker processes (decord loaded) stay warm from one epoch to the next."""
    yield from _decode_in_parts(ClipDecoder(epoch=_execution_epoch(), **kwargs), batch, videos_per_part)


def _padding_rows(batch: dict[str, np.ndarray], clip_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    n = len(batch["id"])
    return {"clip": np.zeros((n, *clip_shape), dtype=np.uint8), "label": np.zeros(n, dtype=np.int64),
            "video_id": np.full(n, "", dtype=object), "video_index": np.full(n, -1, dtype=np.int64),
            "clip_index": np.zeros(n, dtype=np.int32), "status": np.full(n, STATUS_PADDING, dtype=np.uint8),
            "start": np.zeros(n, dtype=np.int32)}


def _read_shards(paths: list[str], fs: pafs.FileSystem, shuffle: FileShuffleConfig | None,
                 resources: dict | None = None, concurrency: int | None = None,
                 num_cpus: float | None = None) -> ray.data.Dataset:
    """read_parquet through the V1 Parquet datasource, one block per shard file.

    Ray 2.60's default V2 datasource (ListFiles → ReadFilesParquetV2) took 5-10 s per execution
    to read a few small local shards here (V1: 0.3 s), and every epoch re-executes the read. The
    switch is scoped to this call; the plan is fixed when the read is created. ``resources``
    (``data.decode_resources``) places the reads where the decoders run, off the GPU nodes;
    ``concurrency`` and ``num_cpus`` equal to the decoders' let Ray Data fuse the read into them.
    """
    ctx = ray.data.DataContext.get_current()
    previous = getattr(ctx, "use_datasource_v2", False)
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, filesystem=fs, columns=list(INPUT_COLUMNS), shuffle=shuffle,
                                     override_num_blocks=len(paths), concurrency=concurrency, num_cpus=num_cpus,
                                     ray_remote_args={"resources": resources} if resources else None)
    finally:
        ctx.use_datasource_v2 = previous


def _videos_per_part(clip_shape: tuple[int, ...], rows_per_video: float) -> int:
    """Videos decoded into one output block: their clips take at most ``TARGET_BATCH_BYTES``
    (a whole shard of the default 64 videos at 17×112×112, K = 1: 41 MB)."""
    clip_bytes = int(np.prod(clip_shape))
    return max(1, TARGET_BATCH_BYTES // max(1, int(np.ceil(clip_bytes * rows_per_video))))


def _num_clips(cfg: DataConfig, split: SplitInfo, training: bool) -> int:
    if training:
        return split.num_videos * cfg.clips_per_video
    return total_eval_windows(split.frame_counts, cfg.clip_len, cfg.frame_stride, cfg.max_eval_clips)


def _split_key(cfg: DataConfig, split: str) -> str:
    return {cfg.train_split: "data.train_split", cfg.val_split: "data.val_split"}.get(split, "split")


def build_clip_dataset(cfg: DataConfig, split: str, *, training: bool, num_consumers: int = 1,
                       manifest: Manifest | None = None, seed: int | None = None
                       ) -> tuple[ray.data.Dataset, ClipDatasetInfo]:
    """A Ray Dataset of clip rows for ``split`` (see the module docstring and docs/data.md).

    Args:
        cfg: data settings (clip_len, frame_stride, clips_per_video, crop_size, decode_* ...).
        split: manifest split name, e.g. ``cfg.train_split``.
        training: random windows/crops/flips (K per video) instead of every window, centre crop.
        num_consumers: consumers the stream will be split into (Ray Train workers); the rows are
            padded to a multiple of it.
        manifest: from :func:`open_dataset` (read again if None).
        seed: base seed of the sampling (None = random).

    Returns:
        ``(dataset, info)``; rows: clip uint8 (T+1, S, S, 3), label int64, video_id str,
        video_index int64, clip_index int32, status uint8, start int32 (first frame index).
    """
    manifest = manifest or open_dataset(cfg)
    check_split(cfg, manifest, split, _split_key(cfg, split))
    info = manifest.splits[split]
    seed = secrets.randbits(31) if seed is None else seed
    clip_shape = (cfg.clip_len + 1, cfg.crop_size, cfg.crop_size, 3)
    num_clips = _num_clips(cfg, info, training)
    flip_map = manifest.flip_label_map() if training and cfg.hflip else None
    hflip = flip_map is not None
    fs, _ = resolve_filesystem(manifest.root, cfg.s3_endpoint, max_attempts=cfg.s3_max_attempts)
    paths = [uri_path(u) for u in manifest.shard_uris(split)]
    fuse_args = (None, None) if cfg.decode_pool == "actors" else (cfg.decode_actors, cfg.decode_cpus)
    ds = _read_shards(paths, fs, FileShuffleConfig(seed=seed, reseed_after_execution=True) if training else None,
                      cfg.decode_resources or None, *fuse_args)
    decoder_kwargs = {"clip_len": cfg.clip_len, "frame_stride": cfg.frame_stride, "crop_size": cfg.crop_size,
                      "resize_short": cfg.resize_short, "training": training,
                      "canonical_short_side": int(manifest.transcode.get("short_side", 0)),
                      "clips_per_video": cfg.clips_per_video, "max_eval_clips": cfg.max_eval_clips, "seed": seed,
                      "hflip": hflip, "hflip_label_map": flip_map}
    decoder_kwargs["videos_per_part"] = _videos_per_part(clip_shape, num_clips / max(1, info.num_videos))
    # batch_size=None: whole read blocks (no re-batching), which is what lets the read fuse in
    common = {"batch_format": "numpy", "batch_size": None, "num_cpus": cfg.decode_cpus,
              "resources": cfg.decode_resources or None, "zero_copy_batch": True}
    if cfg.decode_pool == "actors":
        ds = ds.map_batches(_RayClipDecoder, fn_constructor_kwargs=decoder_kwargs,
                            compute=ray.data.ActorPoolStrategy(size=cfg.decode_actors), **common)
    else:
        ds = ds.map_batches(_decode_task, fn_kwargs=decoder_kwargs,
                            compute=ray.data.TaskPoolStrategy(size=cfg.decode_actors), **common)
    num_padding = (-num_clips) % num_consumers
    if num_padding:
        pad = ray.data.range(num_padding).map_batches(_padding_rows, fn_kwargs={"clip_shape": clip_shape},
                                                      batch_format="numpy")
        ds = ds.union(pad)
    return ds, ClipDatasetInfo(num_videos=info.num_videos, num_clips=num_clips, num_padding=num_padding,
                               class_names=list(manifest.class_names), clip_shape=clip_shape,
                               num_consumers=num_consumers, hflip=hflip)
