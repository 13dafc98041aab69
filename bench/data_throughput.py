"""Clip throughput of the data pipeline against the decoder's limit and a DataLoader baseline.

    python bench/data_throughput.py [--videos 48] [--clips-per-video 8] [--repeats 3]

On the same UCF101-like source videos (320x240 MPEG-4 AVI, 25 fps, long GOP), in one run:

  (a) raw decord: a single process decoding exactly the frames of each clip from the canonical
      shard bytes (open + one contiguous get_batch), no augmentation, no transport: the limit;
  (b) the Ray Data stream of build_clip_dataset from S3 on loopback (moto in its own process),
      one decode task per shard reading it itself (data.decode_pool, default tasks;
      --decode-pool actors) + crops + flips, consumed as batches of 32 by the driver like a
      Train worker;
  (c) a torch DataLoader baseline of the kind PySlowFast/MMAction2 users run: decord on the
      original AVI per item, resize short side 128 + random 112 crop + flip in the worker.

Cores used are measured, not assumed: CPU seconds of the whole process tree (driver, Ray's
processes and workers, or DataLoader workers; the S3 server excluded) divided by wall time.
Also reported: the decode cost of a 16-frame clip against 16 sequentially decoded frames, on the
canonical format and on the source format. Prints one JSON object (medians, spread = min/max).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dynamonet.config import DataConfig
from dynamonet.data.encode import TranscodeSettings, encode_video
from dynamonet.data.sampling import train_starts, window_indices
from dynamonet.data.synthetic import random_canvas

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
# The three paths
# ------------------------------------------------------------------------------------------

def raw_decord(rows: list[dict], clips_per_video: int, seed: int) -> dict[str, float]:
    """(a) open each video once, decode the K windows with one contiguous get_batch each."""
    import decord

    rng = np.random.default_rng(seed)
    clips, t0, c0 = 0, time.perf_counter(), time.process_time()
    for r in rows:
        vr = decord.VideoReader(io.BytesIO(r["video"]), num_threads=1)
        starts = train_starts(r["num_frames"], T, 1, clips_per_video, rng)
        for idx in window_indices(starts, r["num_frames"], T, 1):
            vr.get_batch(idx.tolist()).asnumpy()
            clips += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"clips_per_s": clips / wall, "cores": cpu / wall, "clips": clips}


def ray_stream(root: str, endpoint: str, clips_per_video: int, actors: int, exclude: frozenset[int],
               pool: str = "tasks") -> dict[str, float]:
    """(b) one epoch of build_clip_dataset from S3, consumed in batches of 32 by the driver."""
    from dynamonet.data import build_clip_dataset
    from dynamonet.data.dataset import publish_epoch

    cfg = DataConfig(root=root, s3_endpoint=endpoint, clip_len=T, crop_size=CROP, resize_short=122,
                     clips_per_video=clips_per_video, decode_actors=actors, decode_cpus=1.0, val_split="",
                     decode_pool=pool)
    ds, info = build_clip_dataset(cfg, "train", training=True, seed=0)
    publish_epoch(info.epoch_key, 0)  # what each training consumer does before an epoch
    clips, first = 0, None
    with Meter(exclude) as m:
        for batch in ds.iter_batches(batch_size=32, batch_format="numpy"):
            if first is None:
                m._sample()
                first, c_first = time.perf_counter(), m.cpu_now()
            clips += len(batch["clip"])
    assert clips == info.num_clips, (clips, info.num_clips)
    steady_wall = m.t0 + m.wall - first
    steady_cpu = m.cpu - c_first
    n_steady = clips - 32
    return {"clips_per_s": clips / m.wall, "cores": m.cores, "startup_s": first - m.t0,
            "steady_clips_per_s": n_steady / steady_wall, "steady_cores": steady_cpu / steady_wall, "clips": clips}


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


def dataloader_baseline(src: str, clips_per_video: int, workers: int) -> dict[str, float]:
    import torch

    paths = sorted(str(p) for p in Path(src).rglob("*.avi"))
    loader = torch.utils.data.DataLoader(SourceClips(paths, clips_per_video), batch_size=8, shuffle=True,
                                         num_workers=workers, worker_init_fn=_worker_init)
    clips = 0
    with Meter() as m:
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

def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def _summary(runs: list[dict[str, float]]) -> dict[str, object]:
    return {k: _spread([r[k] for r in runs]) for k in runs[0] if k != "clips"} | {"clips": runs[0]["clips"]}


def start_moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def _ratios(a: dict, b: dict, c: dict) -> dict[str, float]:
    a_core = a["clips_per_s"] / a["cores"]
    return {"b_over_a_per_core": b["clips_per_s"] / b["cores"] / a_core,
            "b_over_a_per_core_steady": b["steady_clips_per_s"] / b["steady_cores"] / a_core,
            "b_over_c": b["clips_per_s"] / c["clips_per_s"]}


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
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="(c) DataLoader workers")
    return p


def _report(args: argparse.Namespace, epoch_clips: int, ingest_s: float, a: list, b: list, c: list,
            cost: dict) -> dict[str, object]:
    ratios = [_ratios(*x) for x in zip(a, b, c, strict=True)]
    median = {k: statistics.median(r[k] for r in ratios) for k in ratios[0]}
    return {
        "setup": {"videos": args.videos, "frames_per_video": args.frames, "clips_per_video": args.clips_per_video,
                  "epoch_clips": epoch_clips, "replicas": args.replicas, "rate_clips": args.rate_clips,
                  "clip": [T + 1, CROP, CROP, 3], "canonical_short_side": SHORT, "repeats": args.repeats,
                  "machine_cores": os.cpu_count(), "ingest_s": round(ingest_s, 2),
                  "ingest_videos_per_s": round(args.videos / ingest_s, 2)},
        "a_raw_decord": _summary(a), "b_ray_data_s3": _summary(b), "c_dataloader_source": _summary(c),
        "ratios": {k: _spread([r[k] for r in ratios]) for k in ratios[0]},
        "targets": [{"name": name, "value": round(median[key], 2), "target": goal, "pass": median[key] >= goal}
                    for name, key, goal in (("(b) >= 0.85 x (a) per core, whole epoch", "b_over_a_per_core", 0.85),
                                            ("(b) >= 1.5 x (c)", "b_over_c", 1.5))],
        "decode_cost_16_frames": {k: {m: round(v, 2) for m, v in d.items()} for k, d in cost.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    moto = start_moto(port)
    try:
        ray.init(address="local", num_cpus=2 * (os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False)  # never attach to another Ray on the machine
        ray.data.DataContext.get_current().enable_progress_bars = False
        with tempfile.TemporaryDirectory(prefix="dynamonet-bench-") as work:
            src, root, ingest_s = prepare(work, args.videos, args.frames, endpoint)
            root, rows = replicate(root, args.replicas, endpoint)
            a, b, c = [], [], []
            for r in range(args.repeats):
                a.append(raw_decord(rows[:args.rate_clips], args.clips_per_video, seed=r))
                b.append(ray_stream(root, endpoint, args.clips_per_video, args.actors, frozenset({moto.pid}),
                                    args.decode_pool))
                c.append(dataloader_baseline(src, args.rate_clips // args.videos, args.workers))
            first_avi = str(sorted(Path(src).rglob("*.avi"))[0])
            cost = {"canonical_h264_128px_gop16": decode_cost(rows[0]["video"], 40, 0),
                    "source_mpeg4_240px_gop250": decode_cost(first_avi, 40, 0)}
    finally:
        ray.shutdown()
        moto.terminate()
        moto.wait(timeout=30)
    result = _report(args, len(rows) * args.clips_per_video, ingest_s, a, b, c, cost)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
