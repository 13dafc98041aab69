"""Ray Data stream of training / evaluation clips from video shards (paper §4.3 sampling).

    open_dataset(cfg)                    driver-side checks, fail fast with one-line ValueErrors
        │
    from_items(shard positions 0..S-1)   one block per shard, no read task of its own
        │
    map_batches(_decode_shards, TaskPoolStrategy | ActorPoolStrategy(decode_actors),
        │       num_cpus=decode_cpus, memory=decode_memory_mb, max_retries=decode_max_retries,
        │       resources=decode_resources)
        │   one task per shard: position p of epoch e is shard order_e[p] (a permutation drawn
        │   from (seed, e) for training, the manifest order for evaluation); the task reads the
        │   shard itself (pyarrow, RetryingS3FileSystem | local), so its bytes never cross the
        │   object store, and yields one output block per ≤ 128 MB of clips (a shard's clips are
        │   one contiguous block, so consumer batches are zero-copy slices of it)
        │   K random windows per video (training) | every non-overlapping window (eval)
        │   data.label_fraction < 1 (training split): only the selected videos' rows are decoded
        │   data.holdout_fraction > 0: the training split minus the held-out videos (training),
        │   or only them (val_split=holdout, the validation stream)
    union(padding rows)                  status=1 rows so that rows % num_consumers == 0
        ▼
    clip rows → Ray Train: streaming_split(n, equal=True) → iter_torch_batches

Epoch rule. Every video yields a fixed number of rows (K, or its window count; a corrupt video
yields the same number of status=2 rows), so an epoch has exactly ``num_clips`` real rows, known
on the driver from the manifest. ``streaming_split(n, equal=True)`` gives every consumer the same
number of rows by *dropping* the ``total % n`` remainder; padding the total to a multiple of n
makes that remainder zero, so no real row is dropped, every training video is seen exactly K times
per epoch, and every consumer gets the same rows and batches.

Label fractions (paper Table 2). With ``data.label_fraction`` < 1 the training stream keeps a
stratified share of the split's videos (``data.label_subset=labeled``) or the rest
(``unlabeled``): the driver reads the split's ``(video_index, video_id, label)`` columns once and
selects (:mod:`dynamonet.data.subset`); each decode task drops the other rows of its shard before
decoding. ``num_clips`` counts the selected videos only, so the epoch rule holds unchanged, and a
video keeps its ``video_index`` in the full split, so its draws do not depend on the fraction.
Evaluation streams are never subset by the label fraction.

Validation held out from training. With ``data.holdout_fraction`` > 0 a share of the training
split (whole UCF101 groups, or a stratified share of every class: :mod:`dynamonet.data.subset`)
is held out: the training stream of ``data.train_split`` skips those videos (and applies
``label_fraction`` to the rest), and the split name ``holdout`` (``data.val_split=holdout``)
streams only them, from the training split's shards, with their ``video_index`` there. The same
``keep`` filter does both; an evaluation stream of a subset counts its windows from the kept
videos' frame counts.

Randomness. Every draw of a training epoch e comes from the seed and e: the shard order from
``(seed, e)``, draw k of video v (window, crop, flip) from ``(seed, e, v, k)``. Nothing comes
from Ray Data's own execution counter, which starts again at 0 whenever Train rebuilds its
datasets (a worker-group restart, a resumed driver). The consumer says which epoch it is about to
read with :func:`publish_epoch` (a key in Ray's GCS key-value store, named by the dataset's
``epoch_key``); the decode tasks read it when they start. ``streaming_split`` starts an epoch only
once every consumer has asked for it, so every consumer publishes before any task of the epoch runs.

Failure. A decode task declares its memory and is retried at most ``data.decode_max_retries``
times if its worker dies (OOM kill, a crash in native code, a lost node); after that the epoch
fails with one line naming the shard (:func:`describe_data_error`). A corrupt video never fails a
task: it becomes status=2 rows (decode.py).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.experimental import internal_kv

from dynamonet.config import HOLDOUT, DataConfig
from dynamonet.data.decode import INPUT_COLUMNS, STATUS_PADDING, ClipDecoder
from dynamonet.data.sampling import clip_span, total_eval_windows
from dynamonet.data.shards import MANIFEST_NAME, Manifest, read_split_columns
from dynamonet.data.subset import HoldoutSelection, LabelSelection, holdout_selection, label_selection
from dynamonet.data.synthetic import synthetic_root
from dynamonet.storage import (
    PROBE_CONNECT_TIMEOUT,
    PROBE_REQUEST_TIMEOUT,
    endpoint_url,
    is_s3,
    join_uri,
    read_bytes,
    resolve_endpoint,
    resolve_filesystem,
    uri_path,
)

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
    epoch_key: str = ""                 # training: where the consumer publishes the epoch (publish_epoch)
    selection: LabelSelection | None = None  # data.label_fraction < 1: the videos kept (num_videos of them)
    holdout: HoldoutSelection | None = None  # data.holdout_fraction > 0: the videos held out for validation

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
    root = cfg.root or synthetic_root(cfg)
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
    looped, but a split where *every* video is shorter is a configuration mistake). ``holdout``
    checks ``data.train_split``, which it is carved from."""
    if split == HOLDOUT:
        split, key = cfg.source_split(split), "data.train_split"
    if split not in manifest.splits:
        raise ValueError(f"{key}: split {split!r} is not in {join_uri(manifest.root, MANIFEST_NAME)} "
                         f"(it has: {', '.join(sorted(manifest.splits)) or 'none'})")
    span, longest = clip_span(cfg.clip_len, cfg.frame_stride), manifest.splits[split].max_frames
    if span > longest:
        raise ValueError(f"data.clip_len: a clip spans {span} frames (clip_len {cfg.clip_len} + 1 frames, "
                         f"frame_stride {cfg.frame_stride}) but the longest video of split {split!r} has {longest}")


KV_NAMESPACE = "dynamonet"


def publish_epoch(epoch_key: str, epoch: int) -> None:
    """Tell the decode tasks of the dataset with ``epoch_key`` which epoch they are drawing for.

    Called by every consumer before it iterates an epoch (the training loop does); the value lives
    in Ray's GCS, so it survives a lost worker node and is read by tasks on any node.
    """
    internal_kv._internal_kv_put(f"epoch/{epoch_key}", str(int(epoch)), overwrite=True, namespace=KV_NAMESPACE)


def published_epoch(epoch_key: str) -> int:
    """The epoch last published for ``epoch_key`` (in a decode task)."""
    value = internal_kv._internal_kv_get(f"epoch/{epoch_key}", namespace=KV_NAMESPACE)
    if value is None:
        raise RuntimeError(f"no epoch published for the training stream {epoch_key!r}: call "
                           "dynamonet.data.dataset.publish_epoch(key, epoch) before iterating it")
    return int(value)


def _note_shard(path: str) -> None:
    """Record which shard this worker is decoding, under its worker id (read back if it dies)."""
    ctx = ray.get_runtime_context()
    note = json.dumps({"shard": path, "pid": os.getpid(), "node_id": ctx.get_node_id(), "started": time.time()})
    internal_kv._internal_kv_put(f"decoding/{ctx.get_worker_id()}", note, overwrite=True, namespace=KV_NAMESPACE)


def decoder_notes() -> dict[str, dict]:
    """``{worker_id: {"shard", "pid", "node_id", "started"}}``: the last shard each decode worker started."""
    keys = internal_kv._internal_kv_list("decoding/", namespace=KV_NAMESPACE)
    notes = {}
    for key in keys:
        value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        if value is not None:
            notes[key.decode().split("/", 1)[1]] = json.loads(value)
    return notes


class DataStreamError(RuntimeError):
    """A clip stream that could not deliver an epoch (see :func:`describe_data_error`)."""


def _dead_decoder_shards() -> list[str]:
    """Shards that decode tasks of this job were working on when their worker died (Ray's state API
    names each failed task's worker; the task left a note of its shard under that worker)."""
    from ray.util.state import list_tasks

    job = ray.get_runtime_context().get_job_id()
    try:
        failed = list_tasks(filters=[("state", "=", "FAILED"), ("job_id", "=", job)], detail=True, limit=1000,
                            raise_on_missing_output=False)
    except Exception:  # no dashboard (state API) on this Ray: say what failed without the shard
        return []
    notes, shards = decoder_notes(), []
    for t in failed:
        note = notes.get(t.worker_id or "")
        if ("_decode_task" in t.name or "ClipDecoder" in t.name) and note and note["shard"] not in shards:
            shards.append(note["shard"])
    return shards


def describe_data_error(err: BaseException) -> str:
    """One line for a clip stream that failed: the shard a dead decoder was working on, if any
    (a worker killed past ``data.decode_max_retries``), and the innermost error."""
    inner = err
    while getattr(inner, "__cause__", None) is not None:
        inner = inner.__cause__
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    why = f"{type(err).__name__}: {lines[-1] if lines else type(inner).__name__}"
    shards: list[str] = []
    deadline = time.monotonic() + 30  # the state API learns of a failed task within seconds (tens when loaded)
    while ray.is_initialized() and not shards and time.monotonic() < deadline:
        shards = _dead_decoder_shards()
        if not shards:
            time.sleep(0.5)
    if shards:
        return (f"decoding shard {', '.join(shards)} failed: its worker died more often than data.decode_max_retries "
                f"allows (OOM kill, a crash in native code, or a lost node): {why}")
    return f"the clip stream failed: {why}"


@dataclass(frozen=True)
class ShardSource:
    """The shards a decode task reads, in the order of an epoch."""

    paths: tuple[str, ...]  # filesystem paths of the split's shards, manifest order
    fs: pafs.FileSystem
    seed: int
    epoch_key: str = ""  # "" = evaluation: manifest order, no randomness
    # data.label_fraction < 1 or data.holdout_fraction > 0: sorted video_index values of the videos to
    # decode (None = every row).
    # 8 bytes a video, pickled once per execution with the decode function's arguments (Ray Data puts
    # the map function in the object store once): ~1.9 MB for Kinetics-400's ~240k training videos.
    keep: np.ndarray | None = field(default=None, compare=False, repr=False)

    def epoch(self) -> int:
        return published_epoch(self.epoch_key) if self.epoch_key else 0

    def shard_at(self, position: int, epoch: int) -> str:
        """The shard read at ``position`` of ``epoch``: a permutation drawn from ``(seed, epoch)``."""
        if not self.epoch_key:
            return self.paths[position]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))
        return self.paths[int(order[position])]

    def kept(self, video_index: np.ndarray) -> np.ndarray:
        """Which of ``video_index`` the stream decodes (a boolean mask; all True without a selection)."""
        if self.keep is None:
            return np.ones(len(video_index), dtype=bool)
        return np.isin(video_index, self.keep)

    def read(self, path: str) -> dict[str, np.ndarray]:
        """The decoder's columns of one shard, as numpy arrays: the whole object in one GET, parsed
        on this thread (Arrow's thread pool and ranged reads cost more than they save on a shard of
        a few MB). With a selection (``keep``) only the selected videos' rows, before any bytes are
        converted."""
        with self.fs.open_input_file(path) as fh:
            data = fh.read()
        table = pq.read_table(pa.BufferReader(data), columns=list(INPUT_COLUMNS), use_threads=False)
        if self.keep is not None:
            table = table.filter(pa.array(self.kept(table.column("video_index").to_numpy())))
        return {c: table.column(c).to_numpy(zero_copy_only=False) for c in INPUT_COLUMNS}


def _decode_in_parts(decode: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], batch: dict[str, np.ndarray],
                     videos_per_part: int) -> Iterator[dict[str, np.ndarray]]:
    """Decode a shard's rows ``videos_per_part`` videos at a time, yielding each part's clip rows:
    memory stays bounded, and a part is one contiguous output block."""
    n = len(batch["video_index"])
    for lo in range(0, n, videos_per_part):
        yield decode({k: v[lo:lo + videos_per_part] for k, v in batch.items()})


def _decode_positions(batch: dict[str, np.ndarray], source: ShardSource, videos_per_part: int,
                      decoder_kwargs: dict) -> Iterator[dict[str, np.ndarray]]:
    epoch = source.epoch()
    decoder = ClipDecoder(epoch=epoch, **decoder_kwargs)
    for position in batch["position"].tolist():
        path = source.shard_at(int(position), epoch)
        _note_shard(path)
        yield from _decode_in_parts(decoder, source.read(path), videos_per_part)


class _RayClipDecoder:
    """The actor-pool form (``data.decode_pool=actors``): one decoder process per actor."""

    def __init__(self, source: ShardSource, videos_per_part: int, decoder_kwargs: dict) -> None:
        self.source, self.videos_per_part, self.decoder_kwargs = source, videos_per_part, decoder_kwargs

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        yield from _decode_positions(batch, self.source, self.videos_per_part, self.decoder_kwargs)


def _decode_task(batch: dict[str, np.ndarray], source: ShardSource, videos_per_part: int,
                 decoder_kwargs: dict) -> Iterator[dict[str, np.ndarray]]:
    """The task-pool form: a ClipDecoder is a few attributes, so building one per shard is free, and
    the worker processes (decord loaded) stay warm from one epoch to the next."""
    yield from _decode_positions(batch, source, videos_per_part, decoder_kwargs)


def _padding_rows(batch: dict[str, np.ndarray], clip_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    n = len(batch["id"])
    return {"clip": np.zeros((n, *clip_shape), dtype=np.uint8), "label": np.zeros(n, dtype=np.int64),
            "video_id": np.full(n, "", dtype=object), "video_index": np.full(n, -1, dtype=np.int64),
            "clip_index": np.zeros(n, dtype=np.int32), "status": np.full(n, STATUS_PADDING, dtype=np.uint8),
            "start": np.zeros(n, dtype=np.int32), "crop": np.zeros(n, dtype=np.uint8), "flip": np.zeros(n, dtype=bool)}


def _videos_per_part(clip_shape: tuple[int, ...], rows_per_video: float) -> int:
    """Videos decoded into one output block: their clips take at most ``TARGET_BATCH_BYTES``
    (a whole shard of the default 64 videos at 17×112×112, K = 1: 41 MB)."""
    clip_bytes = int(np.prod(clip_shape))
    return max(1, TARGET_BATCH_BYTES // max(1, int(np.ceil(clip_bytes * rows_per_video))))


def _num_clips(cfg: DataConfig, frame_counts: dict[int, int], training: bool, num_videos: int) -> int:
    if training:
        return num_videos * cfg.clips_per_video
    return total_eval_windows(frame_counts, cfg.clip_len, cfg.frame_stride, cfg.max_eval_clips)


@dataclass(frozen=True)
class StreamVideos:
    """The videos a subset stream decodes (:func:`select_stream_videos`)."""

    video_indices: np.ndarray           # sorted video_index values in the source split (ShardSource.keep)
    frame_counts: dict[int, int]        # num_frames -> videos, over the kept videos
    holdout: HoldoutSelection | None = None
    selection: LabelSelection | None = None

    @property
    def num_videos(self) -> int:
        return len(self.video_indices)


def select_stream_videos(cfg: DataConfig, manifest: Manifest, split: str, training: bool) -> StreamVideos | None:
    """The videos of a stream that does not read its whole split; None for one that does.

    * ``split == "holdout"``: the videos :func:`~dynamonet.data.subset.holdout_selection` holds out
      of ``data.train_split`` (the validation stream of ``data.val_split=holdout``);
    * the training stream of ``data.train_split``: the split minus the held-out videos
      (``data.holdout_fraction`` > 0), then the ``data.label_fraction`` share of what is left
      (``label_subset=labeled``) or its rest (``unlabeled``), stratified per class (paper Table 2, §4.4).

    One projected read of the split's ``(video_index, video_id, label, num_frames)`` columns on the
    driver (no video bytes). Every problem is a one-line ``ValueError`` naming the config field.
    """
    holding_out = split == HOLDOUT or (training and split == cfg.train_split and cfg.holdout_fraction > 0)
    labeling = training and split == cfg.train_split and cfg.label_fraction < 1.0
    if not (holding_out or labeling):
        return None
    if split == HOLDOUT and cfg.holdout_fraction <= 0:
        raise ValueError("data.holdout_fraction: the holdout split needs data.holdout_fraction > 0")
    cols = read_split_columns(manifest, cfg.source_split(split), ("video_index", "video_id", "label", "num_frames"),
                              cfg.s3_endpoint)
    rows = list(zip(cols["video_index"], cols["video_id"], cols["label"], cols["num_frames"], strict=True))
    held = None
    if holding_out:
        held = holdout_selection(cols["video_id"], cols["label"], cfg.holdout_fraction, cfg.holdout_by,
                                 cfg.holdout_seed)
        inside = split == HOLDOUT   # the held-out videos themselves, or the training rest
        rows = [r for r in rows if (r[1] in held.video_ids) == inside]
    selection = None
    if labeling:
        selection = label_selection([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                    cfg.label_fraction, cfg.label_subset, cfg.label_seed)
        rows = [r for r in rows if r[1] in selection.video_ids]
    frame_counts: dict[int, int] = {}
    for r in rows:
        frame_counts[int(r[3])] = frame_counts.get(int(r[3]), 0) + 1
    return StreamVideos(video_indices=np.sort(np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))),
                        frame_counts=frame_counts, holdout=held, selection=selection)


def _split_key(cfg: DataConfig, split: str) -> str:
    return {cfg.train_split: "data.train_split", cfg.val_split: "data.val_split"}.get(split, "split")


def build_clip_dataset(cfg: DataConfig, split: str, *, training: bool, num_consumers: int = 1,
                       manifest: Manifest | None = None, seed: int | None = None, training_videos: bool = False
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
        training_videos: an evaluation stream (every clip, centre crop) of the videos the training
            stream of ``split`` reads (STFN's training features: the split minus its held-out part).

    With ``cfg.label_fraction`` < 1 or ``cfg.holdout_fraction`` > 0, the training stream of
    ``cfg.train_split`` decodes only the videos of :func:`select_stream_videos` (paper Table 2; the
    split minus the held-out videos); ``split="holdout"`` streams the held-out videos alone.
    ``info.num_videos`` and ``info.num_clips`` count them, ``info.selection`` and ``info.holdout``
    describe them. Other evaluation streams read their whole split.

    Returns:
        ``(dataset, info)``; rows: clip uint8 (T+1, S, S, 3), label int64, video_id str,
        video_index int64, clip_index int32, status uint8, start int32 (first frame index),
        crop uint8 (crop position, transforms.CROP_POSITIONS), flip bool. A training stream draws
        for the epoch published under ``info.epoch_key`` (:func:`publish_epoch`).
    """
    manifest = manifest or open_dataset(cfg)
    check_split(cfg, manifest, split, _split_key(cfg, split))
    info = manifest.splits[cfg.source_split(split)]
    seed = secrets.randbits(31) if seed is None else seed
    clip_shape = (cfg.clip_len + 1, cfg.crop_size, cfg.crop_size, 3)
    subset = select_stream_videos(cfg, manifest, split, training or training_videos)
    num_videos = subset.num_videos if subset is not None else info.num_videos
    num_clips = _num_clips(cfg, subset.frame_counts if subset is not None else info.frame_counts, training, num_videos)
    flip_map = manifest.flip_label_map() if training and cfg.hflip else None
    hflip = flip_map is not None
    fs, _ = resolve_filesystem(manifest.root, cfg.s3_endpoint, max_attempts=cfg.s3_max_attempts)
    source = ShardSource(paths=tuple(uri_path(u) for u in manifest.shard_uris(cfg.source_split(split))), fs=fs,
                         seed=seed, epoch_key=f"{split}-{uuid.uuid4().hex}" if training else "",
                         keep=subset.video_indices if subset is not None else None)
    decoder_kwargs = {"clip_len": cfg.clip_len, "frame_stride": cfg.frame_stride, "crop_size": cfg.crop_size,
                      "resize_short": cfg.resize_short, "training": training,
                      "clips_per_video": cfg.clips_per_video, "max_eval_clips": cfg.max_eval_clips, "seed": seed,
                      "hflip": hflip, "hflip_label_map": flip_map}
    decode_args = {"source": source, "decoder_kwargs": decoder_kwargs,
                   "videos_per_part": _videos_per_part(clip_shape, num_clips / max(1, num_videos))}
    # one block per shard position; batch_size=None hands each task its whole block
    ds = ray.data.from_items([{"position": p} for p in range(len(source.paths))],
                             override_num_blocks=len(source.paths))
    placement = {"num_cpus": cfg.decode_cpus, "resources": cfg.decode_resources or None,
                 "memory": cfg.decode_memory_mb * 1024 * 1024}
    common = {"batch_format": "numpy", "batch_size": None, "zero_copy_batch": True, **placement}
    # Retry bounds go through map_batches' **ray_remote_args, deprecated in later Ray but the only
    # way in 2.60 (Ray Data's own default is max_retries=-1: a task killed every time loops forever).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        if cfg.decode_pool == "actors":
            ds = ds.map_batches(_RayClipDecoder, fn_constructor_kwargs=decode_args,
                                compute=ray.data.ActorPoolStrategy(size=cfg.decode_actors),
                                max_restarts=cfg.decode_max_retries, max_task_retries=cfg.decode_max_retries, **common)
        else:
            ds = ds.map_batches(_decode_task, fn_kwargs=decode_args,
                                compute=ray.data.TaskPoolStrategy(size=cfg.decode_actors),
                                max_retries=cfg.decode_max_retries, **common)
    num_padding = (-num_clips) % num_consumers
    if num_padding:
        pad = ray.data.from_items([{"id": i} for i in range(num_padding)]).map_batches(
            _padding_rows, fn_kwargs={"clip_shape": clip_shape}, batch_format="numpy", **placement)
        ds = ds.union(pad)
    return ds, ClipDatasetInfo(num_videos=num_videos, num_clips=num_clips, num_padding=num_padding,
                               class_names=list(manifest.class_names), clip_shape=clip_shape,
                               num_consumers=num_consumers, hflip=hflip, epoch_key=source.epoch_key,
                               selection=subset.selection if subset is not None else None,
                               holdout=subset.holdout if subset is not None else None)
