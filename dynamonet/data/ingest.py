"""Ingest: raw videos + annotations → canonical Parquet shards + manifest (DESIGN.md "Shards").

    parse_source (sources.py)  →  plan_ingest: deterministic shard assignment
        │                          (per split: sort by video_id → video_index; seeded permutation
        │                           → shards of `videos_per_shard`, so every shard mixes classes)
        ▼
    process_shard × N  (one Ray task per shard, at most 2 × the cluster's CPUs submitted at once,
        │   or in-process for the synthetic dataset)
        │   skip if the shard exists and was written by the same plan (resume after a kill)
        │   an s3:// source is read by the task, whole, in one GET (never by the driver)
        │   transcode each video (encode.py); a bad file becomes a rejection record, never an error
        │   write the shard atomically, its summary in the Parquet footer metadata
        ▼
    rejected.jsonl, then manifest.json last (a reader that finds the manifest finds every shard)

The plan id hashes the entries, their shard assignment and the transcode settings: a re-run with
the same inputs only does the shards that are missing, and a re-run with different inputs rewrites
every shard it plans (never mixing rows of two plans). Ray is imported lazily, by the Ray runner
only, so that the synthetic dataset (synthetic.py) can use this module without Ray.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamonet.data.encode import Transcoded, TranscodeSettings, VideoRejected, transcode
from dynamonet.data.shards import MANIFEST_NAME, REJECTED_NAME, SHARD_SCHEMA, Manifest, SplitInfo, write_manifest
from dynamonet.data.sources import SourceListing, VideoEntry, parse_source
from dynamonet.storage import (
    is_file,
    is_remote,
    is_s3,
    join_uri,
    read_bytes,
    resolve_filesystem,
    upload_dir,
    uri_path,
    write_bytes_atomic,
)

SHARD_META_KEY = b"dynamonet.shard"


@dataclass
class IngestOptions:
    """Everything ``pipelines/prepare_data.py`` passes to :func:`run_ingest`."""

    source: str
    input: str
    output: str
    annotations: str = ""
    split: int = 1
    transcode: TranscodeSettings = field(default_factory=TranscodeSettings)
    videos_per_shard: int = 64
    endpoint: str = ""
    seed: int = 0             # shard assignment permutation
    labels_hflip_invariant: bool = True   # recorded in the manifest; False disables training flips...
    hflip_label_map: list[int] | None = None  # ...unless this maps each class to its mirror image's class
    task_resources: dict[str, float] = field(default_factory=dict)  # Ray executor: e.g. {decode: 1} on a cluster
    task_memory_mb: int = 1024    # Ray executor: memory each shard task declares (sources, 64 encoded videos)
    task_max_retries: int = 3     # Ray executor: re-runs of a shard task whose worker died (OOM kill, lost node)


@dataclass
class ShardTask:
    """One shard to produce: its relative path and its entries (with their video_index)."""

    split: str
    path: str
    entries: list[tuple[int, VideoEntry]]


@dataclass
class ShardResult:
    """What a shard contains, recovered from its footer when the shard already existed."""

    path: str
    split: str
    num_videos: int = 0
    frame_counts: dict[int, int] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    reused: bool = False


def plan_ingest(listing: SourceListing, videos_per_shard: int, seed: int = 0
                ) -> tuple[list[ShardTask], list[dict[str, str]]]:
    """Deterministic shards for ``listing`` and the rejection records of duplicate lines."""
    by_split: dict[str, dict[str, VideoEntry]] = {}
    duplicates = []
    for e in listing.entries:
        split = by_split.setdefault(e.split, {})
        if e.video_id in split:
            duplicates.append({"source": e.source, "split": e.split, "reason": "duplicate annotation line"})
        else:
            split[e.video_id] = e
    tasks = []
    for split_name in sorted(by_split):
        entries = [by_split[split_name][k] for k in sorted(by_split[split_name])]
        order = np.random.default_rng([seed, zlib.crc32(split_name.encode())]).permutation(len(entries))
        for s, lo in enumerate(range(0, len(entries), videos_per_shard)):
            chunk = order[lo:lo + videos_per_shard].tolist()  # random row order: batches mix classes
            tasks.append(ShardTask(split_name, f"{split_name}/shard-{s:05d}.parquet",
                                   [(i, entries[i]) for i in chunk]))
    return tasks, duplicates


def plan_id(tasks: list[ShardTask], settings: TranscodeSettings, class_names: list[str]) -> str:
    """A hash of what the shards will contain (entries, assignment, labels, transcode settings)."""
    h = hashlib.sha256(json.dumps([asdict(settings), class_names]).encode())
    for t in tasks:
        h.update(t.path.encode())
        for i, e in t.entries:
            h.update(f"{i}\0{e.source}\0{e.label}\0{e.split}\n".encode())
    return h.hexdigest()[:20]


def _existing(uri: str, pid: str, endpoint: str) -> ShardResult | None:
    fs, path = resolve_filesystem(uri, endpoint)
    if not is_file(fs, path):
        return None
    with fs.open_input_file(path) as fh:
        meta = pq.read_schema(fh).metadata or {}
    summary = json.loads(meta.get(SHARD_META_KEY, b"{}"))
    if summary.get("plan_id") != pid:
        return None
    summary.pop("plan_id")
    summary["frame_counts"] = {int(k): v for k, v in summary["frame_counts"].items()}
    return ShardResult(**summary, reused=True)


def _source_reader(input_root: str, endpoint: str) -> Callable[[str], str | bytes]:
    """``rel -> source`` for :func:`transcode`: a local path as is, or the whole S3 object in one
    read (PyAV's small reads would be many GETs). One filesystem client serves a whole shard.

    A missing object is a rejection; any other storage error propagates, failing the shard
    (reported, re-done by the next run) instead of silently dropping a video.
    """
    fs, base = resolve_filesystem(input_root, endpoint)
    if not is_s3(input_root):
        return lambda rel: f"{base}/{rel}"

    def read(rel: str) -> bytes:
        try:
            return read_bytes(fs, f"{base}/{rel}")
        except FileNotFoundError:
            raise VideoRejected("missing: listed, but no such object in the input bucket") from None
    return read


def _row(index: int, e: VideoEntry, t: Transcoded) -> dict[str, object]:
    return {"video_id": e.video_id, "video_index": index, "label": e.label, "label_name": e.label_name,
            "split": e.split, "video": t.data, "num_frames": t.num_frames, "fps": t.fps, "height": t.height,
            "width": t.width, "source": e.source, "crc32": zlib.crc32(t.data)}


def _remove_stale_temp_files(uri: str) -> None:
    """Temp files of a killed earlier attempt at this shard (local output only)."""
    if not is_s3(uri):
        for stale in glob.glob(glob.escape(uri_path(uri)) + ".tmp-*"):
            os.remove(stale)


def process_shard(task: ShardTask, opts: IngestOptions, pid: str) -> ShardResult:
    """Produce one shard (or recover its summary if a previous run already wrote it)."""
    uri = join_uri(opts.output, task.path)
    done = _existing(uri, pid, opts.endpoint)
    if done is not None:
        return done
    _remove_stale_temp_files(uri)
    rows, result = [], ShardResult(path=task.path, split=task.split)
    source = _source_reader(opts.input, opts.endpoint)
    for index, e in task.entries:
        try:
            t = transcode(source(e.source), opts.transcode)
        except VideoRejected as err:
            result.rejected.append({"source": e.source, "split": e.split, "reason": str(err).splitlines()[0]})
            continue
        rows.append(_row(index, e, t))
    result.num_videos = len(rows)
    result.frame_counts = dict(Counter(int(r["num_frames"]) for r in rows))
    result.class_counts = dict(Counter(str(r["label_name"]) for r in rows))
    summary = {k: v for k, v in asdict(result).items() if k != "reused"}
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA).replace_schema_metadata(
        {SHARD_META_KEY: json.dumps({**summary, "plan_id": pid}).encode()})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=16, use_dictionary=["label_name", "split"],
                   compression={c: ("NONE" if c == "video" else "SNAPPY") for c in SHARD_SCHEMA.names})
    write_bytes_atomic(uri, buf.getvalue().to_pybytes(), opts.endpoint)
    return result


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------

class Progress:
    """A one-line progress display on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True, rejected: int = 0) -> None:
        """``rejected``: the records known before any shard ran (missing files, duplicate lines)."""
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.done = self.videos = self.reused = self.transcoded = 0
        self.rejected = rejected
        self._last_decile = -1

    def update(self, r: ShardResult) -> None:
        self.done += 1
        self.videos += r.num_videos
        self.rejected += len(r.rejected)
        self.reused += r.reused
        self.transcoded += 0 if r.reused else r.num_videos
        if not self.enabled:
            return
        # Rate and ETA from the shards transcoded by this run: reused ones cost a footer read.
        elapsed = time.perf_counter() - self.t0
        rate = self.transcoded / elapsed if elapsed > 0 else 0.0
        fresh = self.done - self.reused
        eta = elapsed / fresh * (self.total - self.done) if fresh else 0.0
        bar = "#" * (24 * self.done // self.total)
        line = (f"ingest [{bar:<24}] {self.done}/{self.total} shards ({self.reused} reused) | {self.videos} videos"
                f" | {self.rejected} rejected | {rate:.1f} videos/s | ETA {eta:.0f} s")
        if sys.stderr.isatty():
            print("\r" + line, end="\n" if self.done == self.total else "", file=sys.stderr, flush=True)
        elif (decile := 10 * self.done // self.total) != self._last_decile:
            self._last_decile = decile
            print(line, file=sys.stderr, flush=True)


def _run_local(tasks: list[ShardTask], opts: IngestOptions, pid: str, progress: Progress
               ) -> tuple[list[ShardResult], list[str]]:
    results = []
    for t in tasks:
        results.append(process_shard(t, opts, pid))
        progress.update(results[-1])
    return results, []


def _in_flight_limit(cluster_resources: dict[str, float]) -> int:
    """Shard tasks submitted at once: twice the cluster's CPUs (every core busy, and a backlog an
    autoscaler sees), at least 16. Not all of them: the driver holds each submitted task's spec
    and entries until it ends, and Kinetics-400 is thousands of shards."""
    return max(16, 2 * int(cluster_resources.get("CPU", 1)))


def _run_ray(tasks: list[ShardTask], opts: IngestOptions, pid: str, progress: Progress
             ) -> tuple[list[ShardResult], list[str]]:
    import ray

    # max_retries: Ray re-runs a task whose worker died (OOM kill, node loss), a bounded number of
    # times; bad input never raises. resources: {decode: 1} on a cluster keeps ingest on CPU nodes.
    remote = ray.remote(num_cpus=1, max_retries=opts.task_max_retries, memory=opts.task_memory_mb * 1024 * 1024,
                        resources=opts.task_resources or None)(process_shard)
    opts_ref = ray.put(opts)
    queue = iter(tasks)
    pending: dict[object, ShardTask] = {}
    results, failed = [], []
    limit, refresh_at = 0, 0.0
    while True:
        if time.monotonic() >= refresh_at:  # the cluster may grow (autoscaler) or shrink
            limit, refresh_at = _in_flight_limit(ray.cluster_resources()), time.monotonic() + 30.0
        while len(pending) < limit and (task := next(queue, None)) is not None:
            pending[remote.remote(task, opts_ref, pid)] = task
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in done:
            task = pending.pop(ref)
            try:
                results.append(ray.get(ref))
                progress.update(results[-1])
            except Exception as e:  # storage failure after the clients' retries: report, keep going
                failed.append(f"{task.path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return results, failed


def _run_threads(tasks: list[ShardTask], opts: IngestOptions, pid: str, progress: Progress
                   ) -> tuple[list[ShardResult], list[str]]:
    """A thread pool over this machine's cores (no Ray needed; PyAV codecs release the GIL)."""
    workers = max(1, min(len(tasks), os.cpu_count() or 1))
    results = []
    with ThreadPoolExecutor(workers) as pool:
        for r in pool.map(process_shard, tasks, [opts] * len(tasks), [pid] * len(tasks)):
            results.append(r)
            progress.update(r)
    return results, []


RUNNERS: dict[str, Callable[..., tuple[list[ShardResult], list[str]]]] = {
    "local": _run_local, "threads": _run_threads, "ray": _run_ray}


def for_cluster(opts: IngestOptions, generated: bool) -> IngestOptions:
    """On a multi-node cluster the shard tasks run on other nodes: they request `decode` (never a GPU
    node), the output must be object storage, and a local input is uploaded first when it was
    generated here (the synthetic set), refused otherwise."""
    from dynamonet.cluster.runtime import cluster_info, ingest_resources

    info = cluster_info()
    if not info.multinode:
        return opts
    if not is_remote(opts.output):
        raise ValueError(f"--output: {opts.output!r} is a local path, and the ingest tasks run on other nodes of this "
                         "multi-node cluster: write to s3://bucket/prefix")
    if not is_remote(opts.input):
        if not generated:
            raise ValueError(f"--input: {opts.input!r} is on this node only; the ingest tasks of a multi-node cluster "
                             "read their sources from object storage: copy them to s3:// first, or run with "
                             "--executor threads on the node that holds them")
        staged = opts.output.rstrip("/") + "-raw"
        print(f"uploading the generated videos to {staged} for the ingest tasks", flush=True)
        upload_dir(opts.input, staged, opts.endpoint)
        opts = replace(opts, input=staged)
    return replace(opts, task_resources=ingest_resources(info))


@dataclass
class IngestSummary:
    """The outcome of :func:`run_ingest`; ``manifest`` is None when some shards failed."""

    manifest: Manifest | None
    shards: int
    reused: int
    rejected: list[dict[str, str]]
    failed: list[str]
    seconds: float

    def describe(self) -> str:
        """The summary printed at the end of an ingest."""
        m = self.manifest
        if m is None:
            return (f"ingest INCOMPLETE: {len(self.failed)} of {self.shards} shards failed (re-run the same command "
                    f"to finish them; manifest.json not written):\n  " + "\n  ".join(self.failed))
        per_split = ", ".join(f"{k} {v.num_videos}" for k, v in sorted(m.splits.items()))
        reasons = Counter(r["reason"].split(":")[0] for r in self.rejected)
        why = "; ".join(f"{n} {r}" for r, n in reasons.most_common(4))
        return (f"ingest done in {self.seconds:.1f} s: {m.counts['videos']} videos ({per_split}), "
                f"{len(m.class_names)} classes, {self.shards} shards ({self.reused} reused from an earlier run), "
                f"{len(self.rejected)} rejected{f' ({why}; see {REJECTED_NAME})' if self.rejected else ''} -> {m.root}")


def build_manifest(listing: SourceListing, results: Iterable[ShardResult], rejected: int, opts: IngestOptions,
                   pid: str) -> Manifest:
    """The manifest of a complete ingest."""
    splits: dict[str, SplitInfo] = {}
    per_class: dict[str, Counter] = {}
    for r in sorted(results, key=lambda r: r.path):
        info = splits.setdefault(r.split, SplitInfo())
        if r.num_videos:
            info.shards.append(r.path)
        info.num_videos += r.num_videos
        for n, c in r.frame_counts.items():
            info.frame_counts[n] = info.frame_counts.get(n, 0) + c
        per_class.setdefault(r.split, Counter()).update(r.class_counts)
    splits = {k: v for k, v in splits.items() if v.num_videos}
    counts = {"videos": sum(s.num_videos for s in splits.values()), "rejected": rejected,
              "per_split": {k: v.num_videos for k, v in splits.items()},
              "per_class": {k: dict(sorted(per_class[k].items())) for k in splits}}
    source = {"kind": opts.source, "input": opts.input, "annotations": opts.annotations, "split": opts.split}
    return Manifest(class_names=listing.class_names, splits=splits, transcode=opts.transcode.describe(),
                    counts=counts, rejected=rejected, source=source, plan_id=pid, root=opts.output,
                    labels_hflip_invariant=opts.labels_hflip_invariant, hflip_label_map=opts.hflip_label_map)


def _invalidate_stale_manifest(opts: IngestOptions, pid: str) -> None:
    """A manifest of another plan must not describe shards this run is about to rewrite."""
    fs, path = resolve_filesystem(join_uri(opts.output, MANIFEST_NAME), opts.endpoint)
    if is_file(fs, path) and json.loads(read_bytes(fs, path)).get("plan_id") != pid:
        fs.delete_file(path)


def run_ingest(opts: IngestOptions, *, executor: str = "ray", progress: bool = True, verbose: bool = True,
               listing: SourceListing | None = None) -> IngestSummary:
    """Parse, plan, transcode and write shards, then ``rejected.jsonl`` and ``manifest.json`` (last).

    Args:
        opts: source, input, output and transcode settings.
        executor: ``"ray"`` (one task per shard; uses the current Ray cluster or starts a local one),
            ``"threads"`` (a thread pool on this machine) or ``"local"`` (in this process).
        progress: show a progress line on stderr.
        verbose: print the summary on stdout.
        listing: an already parsed source (default: :func:`~dynamonet.data.sources.parse_source`).

    Raises:
        ValueError: no usable video at all (after writing ``rejected.jsonl``).
    """
    t0 = time.perf_counter()
    listing = listing or parse_source(opts.source, opts.input, opts.annotations, opts.split, opts.endpoint)
    tasks, duplicates = plan_ingest(listing, opts.videos_per_shard, opts.seed)
    pid = plan_id(tasks, opts.transcode, listing.class_names)
    _invalidate_stale_manifest(opts, pid)
    known = len(listing.rejected) + len(duplicates)
    results, failed = RUNNERS[executor](tasks, opts, pid, Progress(len(tasks), progress, rejected=known))
    rejected = listing.rejected + duplicates + [r for res in results for r in res.rejected]
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected)
    write_bytes_atomic(join_uri(opts.output, REJECTED_NAME), lines.encode(), opts.endpoint)
    manifest = None
    if not failed:
        manifest = build_manifest(listing, results, len(rejected), opts, pid)
        if not manifest.splits:
            raise ValueError(f"--input: no usable video under {opts.input} ({len(rejected)} rejected, "
                             f"see {join_uri(opts.output, REJECTED_NAME)})")
        write_manifest(manifest, opts.endpoint)
    summary = IngestSummary(manifest, len(tasks), sum(r.reused for r in results), rejected, failed,
                            time.perf_counter() - t0)
    if verbose or failed:
        print(summary.describe(), flush=True)
    return summary
