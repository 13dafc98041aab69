"""Clip throughput of the data pipeline against the decoder's limit and two DataLoader baselines.

    python bench/data_throughput.py [--videos 48] [--replicas 64] [--repeats 3]

On the same UCF101-like source videos (320x240 MPEG-4 AVI, 25 fps, long GOP), in one run:

  (a) raw decord in a separate clean process (``--raw-only``: no Ray imported, no Ray threads):
      exactly the frames of each clip decoded from the canonical shard bytes (open + one
      contiguous get_batch), no augmentation, no transport: the limit. Its CPU is that
      process's own (getrusage over the decoding loop; wait4 for the whole process, reported);
  (b) the Ray Data stream of build_clip_dataset from S3 on loopback (moto in its own process),
      one decode task per shard reading it itself (data.decode_pool, default tasks;
      --decode-pool actors) + crops + flips, consumed as batches of 32 by the driver like a
      Train worker; data.resize_short = the canonical short side (128), so the frames are decoded
      at the stored size as in (a), not resized to the recipes' 122;
  (c') a torch DataLoader over the same canonical shards from the same S3 server, one shard per
      item read and decoded by the project's own code (ShardSource.read + ClipDecoder, (b)'s
      settings and seed), with as many worker processes as (b) has decode tasks (--actors,
      --shard-workers), kept across epochs: the same work without Ray Data, which isolates the
      streaming pipeline;
  (c) a torch DataLoader baseline of the kind PySlowFast/MMAction2 users run today: decord on the
      original AVI per item, resize short side 128 + random 112 crop + flip in the worker. It
      decodes the source files, so (b)/(c) measures the transcode and the stream together.

Cores used are measured, not assumed: CPU seconds of the whole process tree divided by wall time
((b): driver, Ray's processes and workers; (c), (c'): driver and DataLoader workers, Ray's idle
processes excluded; the S3 server always excluded). Targets, checked on the unrounded medians
of the per-repeat ratios with bench/_verdict.py (over the limit is a fail): (b)/(a) per core
≥ 0.85, (b)/(c') per core ≥ 1.0, (b)/(c) ≥ 1.5. Also reported: the decode cost of a 16-frame
clip against 16 sequentially decoded frames, on the canonical and the source format. Prints one
JSON object (medians, spread = min/max over the repeats).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import check, summarize

from dynamonet.config import DataConfig
from dynamonet.data.encode import TranscodeSettings, encode_video
from dynamonet.data.sampling import train_starts, window_indices
from dynamonet.data.synthetic import random_canvas

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

T, CROP, SHORT = 16, 112, 128
_TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------
# CPU accounting over a process tree (Linux /proc)
# ------------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, start time, utime + stime in seconds) of a process, None if it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(root: int, exclude: frozenset[int] = frozenset()) -> dict[tuple[int, int], float]:
    """CPU seconds so far of ``root`` and each descendant (minus ``exclude`` subtrees), keyed by
    (pid, start time) so that a recycled pid is a new process."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p)))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in exclude or pid not in stats:
            continue
        out[(pid, stats[pid][1])] = stats[pid][2]
        todo += children.get(pid, [])
    return out


class Meter:
    """Wall and CPU time of the process tree during a block: ``cores = cpu / wall``.

    Processes come and go (Ray actors per epoch, DataLoader workers), and exited ones are not
    always reaped into a parent's counters, so the tree is sampled every ``interval`` s and each
    process counts with the last CPU time seen (at most one interval of a dying process is lost).
    The sampler's own CPU is subtracted.
    """

    def __init__(self, exclude: frozenset[int] = frozenset(), interval: float = 0.25) -> None:
        self.exclude, self.interval = exclude, interval
        self._stop, self._own = threading.Event(), 0.0

    def _sample(self) -> None:
        t = time.thread_time()
        self.last.update(tree_cpu(os.getpid(), self.exclude))
        self._own += time.thread_time() - t

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def cpu_now(self) -> float:
        return sum(v - self.first.get(k, 0.0) for k, v in self.last.items()) - self._own

    def __enter__(self) -> Meter:
        self.t0 = time.perf_counter()
        self.first = tree_cpu(os.getpid(), self.exclude)
        self.last = dict(self.first)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.perf_counter() - self.t0
        self.cpu = self.cpu_now()
        self.cores = self.cpu / self.wall


# ------------------------------------------------------------------------------------------
# Source videos and shards
# ------------------------------------------------------------------------------------------

def ucf_like_video(seed: int, frames: int) -> bytes:
    """320x240 MPEG-4 AVI, 25 fps, GOP 250: a textured scene panning at 1-3 px/frame."""
    rng = np.random.default_rng(seed)
    canvas = (random_canvas(rng, 480) * 255).astype(np.uint8)
    vx, vy = rng.uniform(-1.5, 1.5, 2)
    def frame(t: int) -> np.ndarray:
        y, x = int(120 + vy * t) % 240, int(80 + vx * t) % 160
        return canvas[y:y + 240, x:x + 320]
    return encode_video((frame(t) for t in range(frames)), 25, codec="mpeg4", container_format="avi", gop=250,
                        bit_rate=1_200_000)


def prepare(work: str, videos: int, frames: int, endpoint: str) -> tuple[str, str, float]:
    """Write the source AVIs and ingest them to S3; returns (source dir, shard root, ingest s)."""
    from dynamonet.data.ingest import IngestOptions, run_ingest

    src = os.path.join(work, "src")
    for i in range(videos):
        os.makedirs(os.path.join(src, f"class{i % 4}"), exist_ok=True)
        with open(os.path.join(src, f"class{i % 4}", f"v_{i:03d}.avi"), "wb") as fh:
            fh.write(ucf_like_video(i, frames))
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    t0 = time.perf_counter()
    run_ingest(IngestOptions(source="folder", input=src, output="s3://bench/ucf-like", videos_per_shard=8,
                             transcode=TranscodeSettings(short_side=SHORT, gop=16), endpoint=endpoint),
               executor="ray", progress=False, verbose=False)
    return src, "s3://bench/ucf-like", time.perf_counter() - t0


def replicate(root: str, factor: int, endpoint: str, videos_per_shard: int = 64) -> tuple[str, list[dict]]:
    """A longer epoch without a longer ingest: ``factor`` copies of every shard row under new
    video ids (the decoding work per row is unchanged), in shards of ``videos_per_shard`` rows like
    a real ingest. Returns (new root, the rows in memory)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dynamonet.data.shards import SplitInfo, read_manifest, write_manifest
    from dynamonet.storage import resolve_filesystem, write_bytes_atomic

    m = read_manifest(root, endpoint)
    tables = []
    for uri in m.shard_uris("train"):
        fs, path = resolve_filesystem(uri, endpoint)
        tables.append(pq.read_table(path, filesystem=fs))
    base = pa.concat_tables(tables).combine_chunks().replace_schema_metadata(None)
    n = base.num_rows
    copies = [base.set_column(0, "video_id", pc.binary_join_element_wise(base.column("video_id"), f"#{r}", ""))
                  .set_column(1, "video_index", pc.add(base.column("video_index"), r * n)) for r in range(factor)]
    big, shards, new_root = pa.concat_tables(copies), [], f"{root}-x{factor}"
    for i, lo in enumerate(range(0, big.num_rows, videos_per_shard)):
        sink = pa.BufferOutputStream()
        pq.write_table(big.slice(lo, videos_per_shard), sink, row_group_size=16)
        shards.append(f"train/shard-{i:05d}.parquet")
        write_bytes_atomic(f"{new_root}/{shards[-1]}", sink.getvalue().to_pybytes(), endpoint)
    frames = {k: v * factor for k, v in m.splits["train"].frame_counts.items()}
    m.splits, m.root = {"train": SplitInfo(shards, n * factor, frames)}, new_root
    write_manifest(m, endpoint)
    return new_root, big.select(["video", "num_frames", "source"]).to_pylist()


# ------------------------------------------------------------------------------------------
# The four paths
# ------------------------------------------------------------------------------------------

def _rusage_cpu() -> float:
    """CPU seconds of this whole process so far, every thread (decord's helper thread included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_decord(rows: list[tuple[bytes, int]], clips_per_video: int, seed: int) -> dict[str, float]:
    """(a) in this process: open each video once, decode the K windows with one contiguous get_batch each."""
    import decord

    rng = np.random.default_rng(seed)
    clips, t0, c0 = 0, time.perf_counter(), _rusage_cpu()
    for data, num_frames in rows:
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
        starts = train_starts(num_frames, T, 1, clips_per_video, rng)
        for idx in window_indices(starts, num_frames, T, 1):
            vr.get_batch(idx.tolist()).asnumpy()
            clips += 1
    wall, cpu = time.perf_counter() - t0, _rusage_cpu() - c0
    return {"clips_per_s": clips / wall, "cores": cpu / wall, "clips": clips}


def raw_only(rows_file: str, clips_per_video: int, seed: int) -> dict[str, object]:
    """The body of the clean (a) process (``--raw-only``): load the rows, then decode; says how clean it was."""
    with open(rows_file, "rb") as fh:
        rows = pickle.load(fh)
    clean = {"ray_imported": "ray" in sys.modules, "os_threads_before": len(os.listdir("/proc/self/task"))}
    return raw_decord(rows, clips_per_video, seed) | clean


def raw_decord_clean(rows_file: str, clips_per_video: int, seed: int) -> dict[str, object]:
    """(a) in a separate process that runs only decord (no Ray, no Ray threads) over the canonical
    shard bytes in ``rows_file``. Rate and cores are of its decoding loop (getrusage of that
    process); ``process_cpu_s`` is its whole CPU including start-up, from wait4 (a cross-check)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--raw-only", rows_file,
           "--clips-per-video", str(clips_per_video), "--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"the raw decord process exited with {proc.returncode}")
    return json.loads(out) | {"process_cpu_s": usage.ru_utime + usage.ru_stime}


def _timed_epoch(batch_sizes: Iterator[int], exclude: frozenset[int]) -> dict[str, float]:
    """Consume an epoch (the sizes of its batches, produced lazily): whole-epoch clips/s and cores,
    and the same from the first batch on (``steady_*``, no start-up)."""
    clips = first_n = 0
    with Meter(exclude) as m:
        for n in batch_sizes:
            if not clips:
                m._sample()
                first, c_first, first_n = time.perf_counter(), m.cpu_now(), n
            clips += n
    steady_wall = m.t0 + m.wall - first
    return {"clips_per_s": clips / m.wall, "cores": m.cores, "startup_s": first - m.t0,
            "steady_clips_per_s": (clips - first_n) / steady_wall, "steady_cores": (m.cpu - c_first) / steady_wall,
            "clips": clips}


def stream_config(root: str, endpoint: str, clips_per_video: int, actors: int, pool: str = "tasks") -> DataConfig:
    """The data settings of (b), which (c') decodes with too: ``resize_short`` = the shards' short
    side, so the frames are decoded at the stored size, like (a) (the recipes' 122 would add a
    resize that (a) does not do)."""
    return DataConfig(root=root, s3_endpoint=endpoint, clip_len=T, crop_size=CROP, resize_short=SHORT,
                      clips_per_video=clips_per_video, decode_actors=actors, decode_cpus=1.0, val_split="",
                      decode_pool=pool)


def ray_stream(cfg: DataConfig, exclude: frozenset[int]) -> dict[str, float]:
    """(b) one epoch of build_clip_dataset from S3, consumed in batches of 32 by the driver."""
    from dynamonet.data import build_clip_dataset
    from dynamonet.data.dataset import publish_epoch

    ds, info = build_clip_dataset(cfg, "train", training=True, seed=0)
    publish_epoch(info.epoch_key, 0)  # what each training consumer does before an epoch
    result = _timed_epoch((len(b["clip"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy")), exclude)
    assert result["clips"] == info.num_clips, (result["clips"], info.num_clips)
    return result


class ShardClips:
    """(c') one item = one canonical shard of the same bucket as (b), read and decoded by the
    project's own per-shard code (``ShardSource.read``: one GET + Parquet parse; ``ClipDecoder``:
    windows, crops, flips), with (b)'s settings, seed and epoch: the same work as one decode task
    of (b), in a DataLoader worker process instead."""

    def __init__(self, cfg: DataConfig, seed: int = 0) -> None:
        from dynamonet.data.shards import read_manifest
        from dynamonet.storage import uri_path

        manifest = read_manifest(cfg.root, cfg.s3_endpoint)
        self.root, self.endpoint, self.seed = cfg.root, cfg.s3_endpoint, seed
        self.paths = tuple(uri_path(u) for u in manifest.shard_uris("train"))
        flip_map = manifest.flip_label_map() if cfg.hflip else None
        self.decoder_kwargs = {"clip_len": cfg.clip_len, "frame_stride": cfg.frame_stride, "crop_size": cfg.crop_size,
                               "resize_short": cfg.resize_short, "training": True,
                               "clips_per_video": cfg.clips_per_video, "seed": seed, "epoch": 0,
                               "hflip": flip_map is not None, "hflip_label_map": flip_map}
        self._source = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, object]:
        import torch

        from dynamonet.data.dataset import ShardSource
        from dynamonet.data.decode import ClipDecoder
        from dynamonet.storage import resolve_filesystem

        if self._source is None:  # the S3 client is made in the worker process that uses it
            self._source = ShardSource(self.paths, resolve_filesystem(self.root, self.endpoint)[0], self.seed)
        rows = ClipDecoder(**self.decoder_kwargs)(self._source.read(self.paths[i]))
        return {"clip": torch.from_numpy(rows["clip"]), "label": torch.from_numpy(rows["label"])}


def build_shard_loader(cfg: DataConfig, workers: int) -> DataLoader:
    """(c') a torch DataLoader over (b)'s shards: one shard per item, ``workers`` spawned processes
    kept across epochs (like (b)'s warm task workers), shards shuffled."""
    import torch

    return torch.utils.data.DataLoader(ShardClips(cfg), batch_size=None, shuffle=True, num_workers=workers,
                                       multiprocessing_context="spawn", persistent_workers=True,
                                       worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(0))


def dataloader_shards(loader: DataLoader, exclude: frozenset[int]) -> dict[str, float]:
    """(c') one epoch of the shard DataLoader, consumed in batches of 32 like (b)."""
    def sizes() -> Iterator[int]:
        for shard in loader:
            n = len(shard["clip"])
            yield from (len(shard["clip"][lo:lo + 32]) for lo in range(0, n, 32))
    return _timed_epoch(sizes(), exclude)


class SourceClips:
    """(c) the baseline Dataset: decord on the original file per item, resize + crop + flip in the worker."""

    def __init__(self, paths: list[str], clips_per_video: int) -> None:
        self.items = [p for p in paths for _ in range(clips_per_video)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> object:
        import decord
        import torch
        import torch.nn.functional as F

        rng = np.random.default_rng(i)
        vr = decord.VideoReader(self.items[i], num_threads=1)
        start = int(rng.integers(0, len(vr) - T))
        frames = torch.from_numpy(vr.get_batch(list(range(start, start + T + 1))).asnumpy())   # (T+1, H, W, 3)
        h, w = frames.shape[1:3]
        size = (SHORT, round(w * SHORT / h)) if h <= w else (round(h * SHORT / w), SHORT)
        frames = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False)
        y, x = int(rng.integers(0, size[0] - CROP + 1)), int(rng.integers(0, size[1] - CROP + 1))
        clip = frames[:, :, y:y + CROP, x:x + CROP]
        if rng.random() < 0.5:
            clip = clip.flip(-1)
        return clip.round().clamp(0, 255).to(torch.uint8)


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def dataloader_baseline(src: str, clips_per_video: int, workers: int, exclude: frozenset[int]) -> dict[str, float]:
    """(c) a DataLoader over the source AVIs (forked workers, made per epoch)."""
    import torch

    paths = sorted(str(p) for p in Path(src).rglob("*.avi"))
    loader = torch.utils.data.DataLoader(SourceClips(paths, clips_per_video), batch_size=8, shuffle=True,
                                         num_workers=workers, worker_init_fn=_worker_init)
    clips = 0
    with Meter(exclude) as m:
        for batch in loader:
            clips += len(batch)
    return {"clips_per_s": clips / m.wall, "cores": m.cores, "clips": clips}


def decode_cost(data: bytes | str, reps: int, seed: int) -> dict[str, float]:
    """ms for a random 16-frame clip (seek + decode) vs 16 frames decoded sequentially."""
    import decord

    vr = decord.VideoReader(io.BytesIO(data) if isinstance(data, bytes) else data, num_threads=1)
    n, rng = len(vr), np.random.default_rng(seed)
    t0 = time.process_time()
    for _ in range(reps):
        s = int(rng.integers(0, n - 16))
        vr.get_batch(list(range(s, s + 16))).asnumpy()
    clip_ms = (time.process_time() - t0) / reps * 1e3
    vr.seek(0)
    t0 = time.process_time()
    for _ in range(n):
        vr.next()
    seq16_ms = (time.process_time() - t0) / n * 16 * 1e3
    return {"clip16_ms": clip_ms, "sequential16_ms": seq16_ms, "ratio": clip_ms / seq16_ms}


# ------------------------------------------------------------------------------------------

A_LABEL = "raw decord in a separate clean process (no Ray), canonical shard bytes: the limit"
B_LABEL = "Ray Data stream from S3 (moto on loopback): decode tasks + crops + flips, batches of 32"
C_PRIME_LABEL = ("torch DataLoader over the same canonical shards from the same S3, the project's shard read + "
                 "ClipDecoder per shard, as many worker processes as (b) has decode tasks: isolates the stream")
C_LABEL = ("torch DataLoader over the source files (320x240 MPEG-4 AVI, GOP 250), resize + crop + flip per item: "
           "source files, includes the transcode difference")


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _summary(runs: list[dict[str, object]], label: str) -> dict[str, object]:
    """Spreads of the float readings over the repeats; the other fields of the first repeat as they are."""
    first = runs[0]
    return ({"label": label} | {k: v for k, v in first.items() if not isinstance(v, float)}
            | {k: _spread([r[k] for r in runs]) for k, v in first.items() if isinstance(v, float)})


def _ratios(a: dict, b: dict, cp: dict, c: dict) -> dict[str, float]:
    """One repeat's ratios (unrounded)."""
    def per_core(r: dict, steady: bool = False) -> float:
        return r["steady_clips_per_s"] / r["steady_cores"] if steady else r["clips_per_s"] / r["cores"]
    return {"b_over_a_per_core": per_core(b) / per_core(a),
            "b_over_a_per_core_steady": per_core(b, True) / per_core(a),
            "b_over_c_prime_per_core": per_core(b) / per_core(cp),
            "b_over_c_prime_per_core_steady": per_core(b, True) / per_core(cp, True),
            "b_over_c_prime": b["clips_per_s"] / cp["clips_per_s"],
            "b_over_c": b["clips_per_s"] / c["clips_per_s"]}


TARGETS = (("(b) / (a) per core >= 0.85, whole epoch; (a) in a clean process", "b_over_a_per_core", 0.85),
           ("(b) / (c') per core >= 1.0, whole epoch, same shards, same storage, equal worker processes",
            "b_over_c_prime_per_core", 1.0),
           ("(b) / (c) clips/s >= 1.5: transcode + stream (source files, includes the transcode difference)",
            "b_over_c", 1.5))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=48, help="source videos (320x240 MPEG-4 AVI)")
    p.add_argument("--frames", type=int, default=150, help="frames per source video (25 fps)")
    p.add_argument("--clips-per-video", type=int, default=1, help="K: clips per video per epoch")
    p.add_argument("--replicas", type=int, default=64, help="copies of every shard row: epoch = videos x "
                                                             "replicas x K clips (the same decoding work per row)")
    p.add_argument("--rate-clips", type=int, default=1024,
                   help="clips measured for (a) and (c), which have no per-epoch start-up (steady rates)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each path (interleaved)")
    p.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="(b) decoders at once, 1 CPU each")
    p.add_argument("--decode-pool", choices=("tasks", "actors"), default="tasks",
                   help="(b) data.decode_pool: Ray Data task pool (the default) or actor pool")
    p.add_argument("--shard-workers", type=int, default=0,
                   help="(c') DataLoader worker processes (0 = --actors, as many as (b)'s decoders)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="(c) DataLoader workers")
    p.add_argument("--raw-only", metavar="ROWS_FILE", default="",
                   help="internal: be the clean (a) process over the pickled (bytes, num_frames) rows, print JSON")
    p.add_argument("--seed", type=int, default=0, help="with --raw-only: seed of the clip windows")
    return p


def _report(args: argparse.Namespace, setup: dict, runs: dict[str, list], cost: dict) -> dict[str, object]:
    ratios = [_ratios(*x) for x in zip(runs["a"], runs["b"], runs["c_prime"], runs["c"], strict=True)]
    median = {k: statistics.median(r[k] for r in ratios) for k in ratios[0]}
    return {
        "setup": setup,
        "a_raw_decord_clean_process": _summary(runs["a"], A_LABEL),
        "b_ray_data_s3": _summary(runs["b"], B_LABEL),
        "c_prime_dataloader_shards_s3": _summary(runs["c_prime"], C_PRIME_LABEL),
        "c_dataloader_source": _summary(runs["c"], C_LABEL),
        "ratios": {k: _spread([r[k] for r in ratios]) for k in ratios[0]},
        **summarize([check(name, median[key], ">=", goal) for name, key, goal in TARGETS]),
        "decode_cost_16_frames": {k: {m: round(v, 2) for m, v in d.items()} for k, d in cost.items()},
    }


def _direct_children() -> frozenset[int]:
    """Pids whose parent is this process (here: moto and Ray's own processes)."""
    return frozenset(int(p) for p in os.listdir("/proc") if p.isdigit() and (st := _stat(int(p))) and st[0] == os.getpid())


def measure(args: argparse.Namespace, work: str, endpoint: str, moto_pid: int) -> dict[str, object]:
    """Ingest, replicate, then the four paths interleaved ``args.repeats`` times; the JSON report."""
    src, root, ingest_s = prepare(work, args.videos, args.frames, endpoint)
    root, rows = replicate(root, args.replicas, endpoint)
    rows_file = os.path.join(work, "raw_rows.pkl")
    with open(rows_file, "wb") as fh:
        pickle.dump([(r["video"], r["num_frames"]) for r in rows[:args.rate_clips]], fh)
    cfg = stream_config(root, endpoint, args.clips_per_video, args.actors, args.decode_pool)
    shard_workers = args.shard_workers or args.actors
    background = _direct_children()  # Ray's processes and moto: not part of (c) or (c')
    loader = build_shard_loader(cfg, shard_workers)
    runs: dict[str, list] = {"a": [], "b": [], "c_prime": [], "c": []}
    for r in range(args.repeats):
        runs["a"].append(raw_decord_clean(rows_file, args.clips_per_video, seed=r))
        runs["b"].append(ray_stream(cfg, frozenset({moto_pid})))
        runs["c_prime"].append(dataloader_shards(loader, background))
        runs["c"].append(dataloader_baseline(src, args.rate_clips // args.videos, args.workers, background))
    del loader
    first_avi = str(sorted(Path(src).rglob("*.avi"))[0])
    cost = {"canonical_h264_128px_gop16": decode_cost(rows[0]["video"], 40, 0),
            "source_mpeg4_240px_gop250": decode_cost(first_avi, 40, 0)}
    setup = {"videos": args.videos, "frames_per_video": args.frames, "clips_per_video": args.clips_per_video,
             "epoch_clips": len(rows) * args.clips_per_video, "replicas": args.replicas,
             "rate_clips": args.rate_clips, "clip": [T + 1, CROP, CROP, 3], "canonical_short_side": SHORT,
             "repeats": args.repeats, "machine_cores": os.cpu_count(), "ingest_s": round(ingest_s, 2),
             "ingest_videos_per_s": round(args.videos / ingest_s, 2), "b_decode_tasks": args.actors,
             "b_decode_pool": args.decode_pool, "c_prime_workers": shard_workers, "c_workers": args.workers}
    return _report(args, setup, runs, cost)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.raw_only:  # the clean (a) process: nothing else runs in it
        print(json.dumps(raw_only(args.raw_only, args.clips_per_video, args.seed)))
        return 0
    import ray

    from dynamonet.cluster.processes import kill_all
    from dynamonet.cluster.rehearsal import start_s3_server

    with tempfile.TemporaryDirectory(prefix="dynamonet-bench-") as work:
        endpoint, moto_pid = start_s3_server(work)  # moto in its own process (excluded from the CPU counts)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)
        try:
            ray.init(address="local", num_cpus=2 * (os.cpu_count() or 1), include_dashboard=False,
                     log_to_driver=False)  # never attach to another Ray on the machine
            ray.data.DataContext.get_current().enable_progress_bars = False
            result = measure(args, work, endpoint, moto_pid)
        finally:
            ray.shutdown()
            kill_all([moto_pid])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
