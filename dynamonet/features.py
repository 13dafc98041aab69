"""Clip features of whole videos for video-level fusion (STFN, seeds/stfn-summary.txt; paper §4.3).

A Ray Data batch-inference job scores every non-overlapping clip (centre crop, as in §4.3
testing) of every video of a split with a DynamoNet checkpoint and writes, per video, the
sequence of its clips' appearance (AR) and motion (DMR) vectors and class scores:

    manifest shards ──► decoders (Ray Data tasks, placed by data.decode_*: the eval stream of
        evaluate.py) ──► ClipScorer actors (the model; CPU or one GPU each, placed like Train
        workers) ──► groupby(video_index) ──► one row per video ──► Parquet
        <out>/videos/*.parquet  +  <out>/features.json (written last: the set is complete)

One row per video (the Parquet schema, readable with plain pyarrow or pandas)::

    video_index int64, video_id string, label int64 (-1 unlabeled), num_clips int32,
    clip_index list<int32>                          (N,)     the clips in time order
    ar     list<fixed_size_list<float32, ar_dim>>   (N, ar_dim)
    dmr    list<fixed_size_list<float32, dmr_dim>>  (N, dmr_dim)
    logits list<fixed_size_list<float32, K>>        (N, K)   the classifier's clip scores

A video whose clips all failed to decode is written with ``num_clips`` 0 and its reason in
``skipped`` (and counted in the manifest); readers here drop it. ``features.json`` records
the checkpoint and its epoch, the split, the clip settings, the class names, the sizes and the
counts, so a second extraction of the same checkpoint and split is a reuse, not a rerun.

The format helpers (:func:`read_features`, :func:`collate`, :func:`clip_mean_scores`) need
no Ray; the extraction imports Ray when it runs.
"""

from __future__ import annotations

import json
import math
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dynamonet import storage
from dynamonet.config import HOLDOUT

MANIFEST = "features.json"
VIDEOS = "videos"
FORMAT = "dynamonet-clip-features"
VERSION = 1
# the clip settings a feature set depends on besides the checkpoint (a change means a new extraction)
CLIPS_PER_PARTITION = 20_000  # scored clips per groupby partition (~115 MB at Kinetics' 512 + 512 + 400 floats)
# the data settings that choose the videos of a training-videos or holdout set
SELECT_KEYS = ("train_split", "holdout_fraction", "holdout_by", "holdout_seed", "label_fraction", "label_subset",
               "label_seed")
CLIP_KEYS = ("clip_len", "frame_stride", "crop_size", "resize_short", "max_eval_clips")


# --------------------------------------------------------------------------------------------
# The format (no Ray)
# --------------------------------------------------------------------------------------------

def _sequences(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """``list<fixed_size_list<float32, D>>`` from stacked clip vectors ``(total, D)`` and ``(V+1,)`` offsets."""
    inner = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values, np.float32).ravel()),
                                              values.shape[1])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)


def video_table(videos: list[dict[str, Any]], dims: tuple[int, int, int]) -> pa.Table:
    """One Parquet row per video from ``{video_index, video_id, label, clip_index (N,), ar (N, Da),
    dmr (N, Dm), logits (N, K), skipped}`` dicts (N may be 0); ``dims`` = (Da, Dm, K)."""
    counts = np.array([len(v["clip_index"]) for v in videos], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

    def stack(key: str, dim: int) -> np.ndarray:
        parts = [np.asarray(v[key], np.float32).reshape(-1, dim) for v in videos]
        return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)

    clip_index = np.concatenate([np.asarray(v["clip_index"], np.int32) for v in videos]) if videos else \
        np.zeros(0, np.int32)
    return pa.table({
        "video_index": pa.array([int(v["video_index"]) for v in videos], pa.int64()),
        "video_id": pa.array([str(v["video_id"]) for v in videos], pa.string()),
        "label": pa.array([int(v["label"]) for v in videos], pa.int64()),
        "num_clips": pa.array(counts.astype(np.int32), pa.int32()),
        "clip_index": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(clip_index, pa.int32())),
        "ar": _sequences(stack("ar", dims[0]), offsets),
        "dmr": _sequences(stack("dmr", dims[1]), offsets),
        "logits": _sequences(stack("logits", dims[2]), offsets),
        "skipped": pa.array([str(v.get("skipped", "")) for v in videos], pa.string()),
    })


def _flat(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(values (total, D), offsets (V+1,))`` of a ``list<fixed_size_list<float32, D>>`` column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    inner = arr.values  # fixed_size_list (all clips of the column's slice, and maybe more)
    dim = inner.type.list_size
    flat = inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return flat, offsets


@dataclass
class SequenceBatch:
    """Videos padded to their longest sequence. ``mask`` is True on real clips."""

    ar: torch.Tensor  # (B, N, ar_dim) float32
    dmr: torch.Tensor  # (B, N, dmr_dim)
    logits: torch.Tensor  # (B, N, K) the DynamoNet clip scores
    mask: torch.Tensor  # (B, N) bool
    labels: torch.Tensor  # (B,) int64
    video_index: torch.Tensor  # (B,) int64


def collate(table: pa.Table, device: torch.device | str = "cpu") -> SequenceBatch:
    """Pad a batch of video rows (see the module docstring) into :class:`SequenceBatch` tensors."""
    counts = table.column("num_clips").to_numpy().astype(np.int64)  # (B,)
    b, n = len(counts), max(1, int(counts.max(initial=0)))
    mask = np.arange(n)[None, :] < counts[:, None]  # (B, N)
    out = {}
    for key in ("ar", "dmr", "logits"):
        flat, offsets = _flat(table.column(key))
        padded = np.zeros((b, n, flat.shape[1]), np.float32)
        rows = np.repeat(np.arange(b), counts)
        cols = np.arange(len(rows)) - np.repeat(offsets[:-1] - offsets[0], counts)
        padded[rows, cols] = flat[offsets[0]:offsets[0] + len(rows)]
        out[key] = torch.from_numpy(padded).to(device)
    return SequenceBatch(ar=out["ar"], dmr=out["dmr"], logits=out["logits"], mask=torch.from_numpy(mask).to(device),
                         labels=torch.from_numpy(table.column("label").to_numpy().astype(np.int64)).to(device),
                         video_index=torch.from_numpy(table.column("video_index").to_numpy().astype(np.int64)).to(device))


def clip_mean_scores(batch: SequenceBatch) -> torch.Tensor:
    """Video scores ``(B, K)`` as §4.3 tests: the mean of the softmax scores of the video's clips."""
    probs = batch.logits.softmax(dim=-1) * batch.mask.unsqueeze(-1)  # (B, N, K)
    return probs.sum(dim=1) / batch.mask.sum(dim=1, keepdim=True).clamp_min(1)


@dataclass
class VideoResult:
    """STFN and the clip mean (§4.3) scored on the same videos."""

    metrics: dict[str, float]  # top1, top5, loss of STFN; clip_mean_top1, clip_mean_top5; videos
    predictions: list[tuple[str, int, int, float, int]]  # (video_id, label, STFN's class, its softmax score,
    #                                                      the clip mean's class)
    confusion: torch.Tensor  # (K, K) of STFN, rows = true class


def score_videos(model: torch.nn.Module, tables: Any, num_classes: int, device: torch.device | str = "cpu"
                 ) -> VideoResult:
    """Run STFN over batches of video rows (pyarrow tables); the clip mean of the same rows beside it."""
    import torch.nn.functional as F

    from dynamonet.eval_metrics import confusion_matrix

    was_training = model.training
    model.eval()
    loss = 0.0
    scores, means, labels, ids = [], [], [], []  # ids: video_id strings
    with torch.inference_mode():
        for table in tables:
            if table.num_rows == 0:
                continue
            b = collate(table, device)
            logits = model(b.ar, b.dmr, b.mask)  # (B, K)
            loss += float(F.cross_entropy(logits.float(), b.labels, reduction="sum"))
            scores.append(logits.float().cpu())
            means.append(clip_mean_scores(b).cpu())
            labels.append(b.labels.cpu())
            ids.extend(table.column("video_id").to_pylist())
    model.train(was_training)
    if not scores:
        return VideoResult({"videos": 0.0}, [], torch.zeros(num_classes, num_classes, dtype=torch.long))
    s, m, y = torch.cat(scores), torch.cat(means), torch.cat(labels)
    metrics = {"top1": top_k(s, y, 1), "top5": top_k(s, y, 5), "loss": loss / len(y),
               "clip_mean_top1": top_k(m, y, 1), "clip_mean_top5": top_k(m, y, 5), "videos": float(len(y))}
    top, cls = s.softmax(1).max(1)
    preds = list(zip(ids, y.tolist(), cls.tolist(), top.tolist(), m.argmax(1).tolist(), strict=True))
    return VideoResult(metrics, preds, confusion_matrix(s.argmax(1), y, num_classes))


def read_manifest(uri: str, endpoint: str = "") -> dict[str, Any]:
    """``features.json`` of a feature set (a ValueError naming the path if there is none)."""
    fs, path = storage.resolve_filesystem(uri, endpoint)
    target = posixpath.join(path, MANIFEST)
    if not storage.is_file(fs, target):
        raise ValueError(f"stfn.features: no {MANIFEST} under {uri} (an incomplete or missing feature set; "
                         "extract it with pipelines/extract_features.py)")
    meta = json.loads(storage.read_bytes(fs, target))
    if meta.get("format") != FORMAT:
        raise ValueError(f"stfn.features: {uri}/{MANIFEST} is not a DynamoNet feature set")
    return meta


def video_files(uri: str, endpoint: str = "") -> list[str]:
    """The Parquet files of a feature set, sorted (paths in the filesystem's own form)."""
    fs, path = storage.resolve_filesystem(uri, endpoint)
    sel = storage.pafs.FileSelector(posixpath.join(path, VIDEOS), allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(sel) if i.path.endswith(".parquet"))


def read_features(uri: str, endpoint: str = "") -> pa.Table:
    """Every video of a feature set with at least one clip, ordered by ``video_index``."""
    fs, _ = storage.resolve_filesystem(uri, endpoint)
    files = video_files(uri, endpoint)
    if not files:
        return pa.table({})
    table = pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])
    table = table.filter(pa.compute.greater(table.column("num_clips"), 0))
    return table.sort_by("video_index")


# --------------------------------------------------------------------------------------------
# Extraction (Ray Data)
# --------------------------------------------------------------------------------------------

class ClipScorer:
    """Ray Data actor: a DynamoNet in eval mode; clip rows in, AR / DMR / logits rows out."""

    def __init__(self, state: Any, config: dict[str, Any], num_classes: int, device: str) -> None:
        import ray

        from dynamonet.config import Config
        from dynamonet.eval import build_eval_model
        from dynamonet.train.worker import amp_dtype_for

        if isinstance(state, list):  # [ObjectRef]: the checkpoint travels once through the object store
            state = ray.get(state[0])
        self.cfg = Config.from_dict(config)
        self.device = torch.device(device)
        torch.set_num_threads(max(1, int(self.cfg.train.cpus_per_worker)))
        self.model = build_eval_model(self.cfg, {**state, "class_names": [""] * num_classes}, self.device)
        self.amp = amp_dtype_for(self.cfg, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from contextlib import nullcontext

        from dynamonet.train.engine import prepare_batch

        cols = ("clip", "label", "status", "video_index")  # Ray's zero-copy batches are read-only: copy those
        b = prepare_batch({k: torch.from_numpy(np.require(batch[k], requirements="W")) for k in cols}, self.device)
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        with torch.inference_mode(), ctx:
            ar, dmr = self.model.extract_features(b.x)  # (B, ar_dim), (B, dmr_dim)
            logits = self.model.classify(ar, dmr)  # (B, K)
        return {"video_index": batch["video_index"], "video_id": batch["video_id"], "label": batch["label"],
                "clip_index": batch["clip_index"], "status": batch["status"],
                "ar": ar.float().cpu().numpy(), "dmr": dmr.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}


def assemble_video(group: dict[str, np.ndarray], dims: tuple[int, int, int]) -> pa.Table:
    """``map_groups``: the scored clips of one video → its row (clips in time order; undecodable ones dropped)."""
    ok = np.asarray(group["status"]) == 0
    order = np.argsort(np.asarray(group["clip_index"])[ok], kind="stable")
    bad = int((~ok).sum())
    video = {"video_index": int(group["video_index"][0]), "video_id": str(group["video_id"][0]),
             "label": int(group["label"][0]), "clip_index": np.asarray(group["clip_index"])[ok][order],
             **{k: np.asarray(group[k])[ok][order] for k in ("ar", "dmr", "logits")},
             "skipped": "" if ok.any() else f"corrupt: no decodable clip ({bad} failed)"}
    return video_table([video], dims)


def features_uri(base: str, split: str) -> str:
    """Where the features of ``split`` go under a features directory (local or object storage)."""
    return storage.join_uri(base, split) if storage.is_remote(base) else posixpath.join(base, split)


def default_features_dir(checkpoint: str) -> str:
    """``<run>/features`` next to a checkpoint (run dir, checkpoint dir or .pt)."""
    from dynamonet.eval import run_dir

    return features_uri(run_dir(checkpoint), "features")


def extract_features(checkpoint: str, split: str, out: str = "", *, overrides: list[str] | None = None,
                     device: str = "cpu", batch_size: int = 0, actors: int = 1, training_videos: bool = False,
                     endpoint: str = "", reuse: bool = True) -> dict[str, Any]:
    """Score every non-overlapping clip of every video of ``split``; returns the feature set's manifest.

    Args:
        checkpoint: a joint or no_fp DynamoNet checkpoint (run dir, checkpoint dir or .pt; local or s3://).
        split: the manifest split, or ``holdout`` (the part of data.train_split held out for validation).
        out: the feature set's directory; "" = ``<run>/features/<split>``.
        overrides: ``key=value`` overrides of the checkpoint's config (``data.root=...``).
        device: ``cpu`` or ``cuda`` (one GPU per scoring actor).
        batch_size: clips per model call (0 = the checkpoint's data.batch_size).
        actors: model replicas scoring at once.
        training_videos: only the videos the training stream of ``split`` reads (without its held-out part).
        endpoint: S3 endpoint of the checkpoint and the output ("" = AWS_ENDPOINT_URL or AWS).
        reuse: return an existing feature set of the same checkpoint, epoch, split and clip settings.

    Raises:
        ValueError: a checkpoint without AR/DMR heads, an unknown split, an unreadable dataset.
        RuntimeError: the job failed (one line naming the shard when a decoder failed).
    """
    import ray

    from dynamonet.data import build_clip_dataset, open_dataset
    from dynamonet.eval import load_for_eval, placement
    from dynamonet.train.checkpoint import resolve_checkpoint
    from dynamonet.train.ray_train import effective_data, init_ray

    t0 = time.perf_counter()
    cfg, state = load_for_eval(checkpoint, ["data.max_eval_clips=0", *(overrides or [])], endpoint)
    if cfg.model.mode not in ("joint", "no_fp"):
        raise ValueError(f"stfn.checkpoint: {checkpoint} is a {cfg.model.mode!r} model; STFN fuses the AR and DMR "
                         "vectors of a joint or no_fp DynamoNet")
    init_ray(cfg)
    cfg = placement(cfg)
    data = cfg.data if cfg.data.root else effective_data(cfg)
    manifest = open_dataset(data)
    class_names = list(state.get("class_names") or manifest.class_names)
    source = resolve_checkpoint(checkpoint, endpoint)
    meta = {"format": FORMAT, "version": VERSION, "checkpoint": source, "epoch": int(state.get("epoch") or 0),
            "split": split, "training_videos": training_videos, "data_root": data.root,
            "clip": {k: getattr(data, k) for k in CLIP_KEYS},
            "videos": {k: getattr(data, k) for k in SELECT_KEYS} if training_videos or split == HOLDOUT else {},
            "class_names": class_names,
            "ar_dim": cfg.model.ar_dim, "dmr_dim": cfg.model.dmr_dim, "num_classes": len(class_names)}
    out = out or features_uri(default_features_dir(checkpoint), split)
    fs, out_path = storage.resolve_filesystem(out, endpoint or cfg.data.s3_endpoint)
    if reuse and storage.is_file(fs, posixpath.join(out_path, MANIFEST)):
        old = read_manifest(out, endpoint or cfg.data.s3_endpoint)
        if {k: old.get(k) for k in meta} == meta:
            print(f"[features] {split}: reusing {old['num_videos']} videos, {old['num_clips']} clips at {out}",
                  flush=True)
            return {**old, "uri": out, "reused": True}
    for stale in (posixpath.join(out_path, MANIFEST), posixpath.join(out_path, VIDEOS)):  # a set replaced whole
        kind = fs.get_file_info(stale).type
        if kind == storage.pafs.FileType.File:
            fs.delete_file(stale)
        elif kind == storage.pafs.FileType.Directory:
            fs.delete_dir(stale)
    ds, info = build_clip_dataset(replace_batch(data, batch_size), split, training=False, manifest=manifest,
                                  training_videos=training_videos)
    print(f"[features] {split}: {info.num_videos} videos → {info.num_clips} clips, {actors} scorer(s) on {device}, "
          f"→ {out}", flush=True)
    cuda = device.startswith("cuda")
    dims = (cfg.model.ar_dim, cfg.model.dmr_dim, len(class_names))
    scored = ds.select_columns(["clip", "label", "video_id", "video_index", "clip_index", "status"]).map_batches(
        ClipScorer, fn_constructor_kwargs={"state": [ray.put(state)], "config": cfg.to_dict(),
                                           "num_classes": len(class_names), "device": device},
        batch_size=batch_size or data.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.train.cpus_per_worker, num_gpus=1 if cuda else 0,
        resources=cfg.train.worker_resources or None)
    # a few large partitions: Ray Data's default (one per input block) makes a task per handful of clips
    partitions = max(1, math.ceil(info.num_clips / CLIPS_PER_PARTITION))
    videos = scored.groupby("video_index", num_partitions=partitions).map_groups(assemble_video, fn_args=(dims,),
                                                                                  batch_format="numpy")
    try:
        videos.write_parquet(posixpath.join(out_path, VIDEOS), filesystem=fs)
    except Exception as e:
        from dynamonet.data.dataset import describe_data_error

        raise RuntimeError(f"feature extraction failed: {describe_data_error(e)}") from e
    counts = [pq.read_table(f, filesystem=fs, columns=["video_id", "num_clips", "skipped"])
              for f in video_files(out, endpoint or cfg.data.s3_endpoint)]
    table = pa.concat_tables(counts) if counts else pa.table({"video_id": [], "num_clips": [], "skipped": []})
    n_clips = table.column("num_clips").to_numpy()
    skipped = [{"video_id": v, "reason": r} for v, n, r in zip(table.column("video_id").to_pylist(), n_clips,
                                                                  table.column("skipped").to_pylist(), strict=True)
               if n == 0]
    missing = info.num_videos - table.num_rows
    if missing:
        raise RuntimeError(f"feature extraction: {missing} of {info.num_videos} videos of {split} produced no row "
                           f"in {out}")
    meta.update(num_videos=int(table.num_rows - len(skipped)), num_clips=int(n_clips.sum()), skipped=skipped,
                files=len(counts), wall_time_s=round(time.perf_counter() - t0, 2),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    storage.write_bytes(fs, posixpath.join(out_path, MANIFEST), json.dumps(meta, indent=1).encode())
    note = f", {len(skipped)} skipped (see {MANIFEST})" if skipped else ""
    print(f"[features] {split}: {meta['num_videos']} videos, {meta['num_clips']} clips "
          f"({meta['num_clips'] / max(1, meta['num_videos']):.1f}/video) in {meta['wall_time_s']:.1f} s{note}", flush=True)
    return {**meta, "uri": out, "reused": False}


def replace_batch(data: Any, batch_size: int) -> Any:
    """``data`` with ``batch_size`` clips per batch when one is given."""
    from dataclasses import replace

    return replace(data, batch_size=batch_size) if batch_size else data


def top_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose label is among the ``k`` best scores (``scores (V, K)``, ``labels (V,)``)."""
    from dynamonet.eval_metrics import topk_correct

    return float(topk_correct(scores, labels, k).float().mean()) if len(labels) else math.nan
