"""The ingest at Kinetics scale with the Ray executor: counts, driver memory, one-line output, resume.

    python bench/ingest_scale.py [--videos 10000] [--small 1000] [--missing 0.07] [--num-cpus N]
                                 [--keep DIR] [--quick] [--s3] [--s3-videos 1000]

Generates Kinetics-style datasets in a temp work dir (``--keep DIR`` keeps them): ``annotations/
train.csv`` + ``val.csv`` (about 10 % of the entries; header ``label,youtube_id,time_start,time_end,
split``, 20 labels with spaces) and files ``<root>/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``.
A seeded ``--missing`` fraction of the CSV entries has no file. The videos are tiny real H.264
files (64x48, 8 frames): 32 distinct clips encoded once and copied to every path (the ingest still
decodes and re-encodes each file). The small and the large dataset are separate trees.

Then runs the real CLI (``pipelines/prepare_data.py --source kinetics --executor ray``, short side
32, 64 videos per shard) as a subprocess in its own session, through a wrapper that reports the
driver's own peak RSS (``ru_maxrss``):

  (a) ``--small`` entries, full run: driver peak RSS at the small size;
  (b) ``--videos`` entries, full run into a fresh output: driver peak RSS, wall time, videos/s;
  (c) the same into another fresh output, SIGKILLed (the whole process group: the driver and the
      local Ray it started) once half of the planned shards exist; the shards present then and
      their mtimes are recorded;
  (d) the same command again: it must finish, reusing every shard present at the kill untouched;
  (s3) with ``--s3``: two runs with input and output on one moto S3 server on loopback, each in its
      own bucket, of two datasets with the same ``--s3-videos`` entries (same CSVs, same paths, same
      missing entries) that differ only in the size of the source files:
      (s3_small) the tiny clips above;
      (s3_large) 320x240 H.264 clips of 8 noisy frames at crf 16, about 250 KB each (32 distinct
      clips; about 230 MB of sources at 1000 entries).
      Each dataset is uploaded with ``dynamonet.storage.upload_dir``, then ingested from S3.
      The S3 client libraries make an S3 run's driver bigger than a local one's, so the two S3 runs
      are compared with each other: a driver that held the sources (or a fixed fraction of them)
      would peak higher by that much with the large files.

Checked with bench/_verdict.py: manifest counts (videos, per split, rejected) and the shards'
video_ids equal to the generated dataset's for (a), (b), (d) and both S3 runs; rejected.jsonl lists
exactly the missing entries, every reason starting with "missing"; the CLI's output is a few lines
whatever the number of missing files ((b) at most 40 lines, at most 11 of them progress lines, and at
most 2 other lines more than (a)) and its summary line states the rejected count; driver peak RSS at
``--videos`` / at ``--small`` <= 1.25; resume reused at least the shards present at the kill and left
them untouched; with ``--s3``: both S3 runs' outputs as above, every (s3_large) source file >= 200 KB,
and the driver's peak RSS growth from (s3_small) to (s3_large) at most 10 % of the growth of the
source bytes, in MB (no copy of the sources on the driver). The moto server is stopped at the end,
also on errors (and on SIGTERM). Prints one JSON object on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import check, summarize

from dynamonet.cluster.processes import alive, descendants
from dynamonet.data.encode import encode_video
from dynamonet.data.synthetic import random_canvas

REPO = Path(__file__).resolve().parents[1]

LABELS = ("abseiling", "air drumming", "answering questions", "applauding", "archery", "arm wrestling",
          "arranging flowers", "assembling computer", "bartending", "bee keeping", "blowing glass",
          "bowling", "building cabinet", "catching fish", "cleaning windows", "dancing ballet",
          "playing guitar", "riding a bike", "shooting goal (soccer)", "tying tie")
ID_CHARS = string.ascii_letters + string.digits + "_-"
PER_SHARD, SHORT_SIDE, CLIPS, FRAMES, HEIGHT, WIDTH = 64, 32, 32, 8, 48, 64
MAX_LINES, MAX_EXTRA_LINES, MAX_PEAK_RATIO = 40, 2, 1.25
# (s3-large): noisy 320x240 clips at a low crf, about 250 KB each; the driver may grow by at most
# S3_MAX_GROWTH of the extra source bytes
BIG_CLIPS, BIG_FRAMES, BIG_HEIGHT, BIG_WIDTH, BIG_CRF, BIG_NOISE = 32, 8, 240, 320, 16, 40
BIG_MIN_BYTES, S3_MAX_GROWTH = 200_000, 0.10
SHARD_RE = re.compile(r"^shard-\d{5}\.parquet$")

# The CLI in a subprocess; the driver reports its own peak RSS after the ingest.
WRAPPER = f"""
import json, resource, sys
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "pipelines")!r}]
import prepare_data
rc = prepare_data.main(sys.argv[1:])
print("DRIVER_PEAK " + json.dumps({{"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}),
      flush=True)
sys.exit(rc)
"""


def log(msg: str) -> None:
    print(f"[ingest_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A generated Kinetics-style tree and what a correct ingest of it must produce."""

    root: str
    entries: int
    present: dict[str, int]                  # split -> entries with a file
    missing: dict[str, int]                  # split -> entries without one
    video_ids: set[str] = field(default_factory=set)             # <split>/<label>/<stem>
    missing_sources: set[tuple[str, str]] = field(default_factory=set)  # (<stem>.mp4, split)
    source_bytes: int = 0
    source_min_bytes: int = 0                                    # the smallest source file

    @property
    def planned_shards(self) -> int:
        return sum(math.ceil(n / PER_SHARD) for n in self.present.values())

    def describe(self) -> dict[str, object]:
        return {"entries": self.entries, "present": sum(self.present.values()),
                "missing": sum(self.missing.values()), "present_per_split": dict(sorted(self.present.items())),
                "missing_per_split": dict(sorted(self.missing.items())), "planned_shards": self.planned_shards,
                "source_bytes": self.source_bytes, "source_mb": round(self.source_bytes / 2**20, 2),
                "source_min_bytes": self.source_min_bytes}


def make_clips(seed: int) -> list[bytes]:
    """:data:`CLIPS` distinct tiny H.264 mp4 files: a random canvas panned 2 px per frame."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(CLIPS):
        canvas = (random_canvas(rng, 96) * 255).astype(np.uint8)
        y, x = int(rng.integers(0, 96 - HEIGHT)), int(rng.integers(0, 96 - WIDTH - 2 * FRAMES))
        frames = [canvas[y:y + HEIGHT, x + 2 * t:x + 2 * t + WIDTH] for t in range(FRAMES)]
        clips.append(encode_video(frames, fps=25.0))
    return clips


def make_big_clips(seed: int) -> list[bytes]:
    """:data:`BIG_CLIPS` distinct large H.264 mp4 files: a panned random canvas plus per-frame noise
    (hard to compress) at crf :data:`BIG_CRF`, so each file is about 250 KB."""
    rng = np.random.default_rng(seed)
    size = max(BIG_HEIGHT, BIG_WIDTH) + 2 * BIG_FRAMES
    clips = []
    for _ in range(BIG_CLIPS):
        canvas = (random_canvas(rng, size) * 255).astype(np.int16)
        frames = [np.clip(canvas[2 * t:2 * t + BIG_HEIGHT, 2 * t:2 * t + BIG_WIDTH]
                          + rng.integers(-BIG_NOISE, BIG_NOISE + 1, (BIG_HEIGHT, BIG_WIDTH, 3)), 0, 255).astype(np.uint8)
                  for t in range(BIG_FRAMES)]
        clips.append(encode_video(frames, fps=25.0, crf=BIG_CRF))
    return clips


def generate(root: str, entries: int, missing: float, clips: list[bytes], seed: int) -> Dataset:
    """Write ``root/annotations/{train,val}.csv`` and the files of the entries that are not missing."""
    rng = np.random.default_rng(seed)
    n_val = round(entries * 0.1)
    splits = ["train"] * (entries - n_val) + ["val"] * n_val
    ids: set[str] = set()
    while len(ids) < entries:
        ids.add("".join(rng.choice(list(ID_CHARS), 11)))
    absent = set(rng.choice(entries, round(entries * missing), replace=False).tolist())
    ds = Dataset(root, entries, {"train": 0, "val": 0}, {"train": 0, "val": 0})
    rows: dict[str, list[list[object]]] = {"train": [], "val": []}
    for i, (yid, split) in enumerate(zip(sorted(ids), splits, strict=True)):
        label = LABELS[int(rng.integers(len(LABELS)))]
        start = int(rng.integers(0, 290))
        stem = f"{yid}_{start:06d}_{start + 10:06d}"
        rows[split].append([label, yid, start, start + 10, split])
        if i in absent:
            ds.missing[split] += 1
            ds.missing_sources.add((f"{stem}.mp4", split))
            continue
        folder = os.path.join(root, split, label)
        os.makedirs(folder, exist_ok=True)
        data = clips[i % len(clips)]
        with open(os.path.join(folder, f"{stem}.mp4"), "wb") as fh:
            fh.write(data)
        ds.present[split] += 1
        ds.video_ids.add(f"{split}/{label}/{stem}")
        ds.source_bytes += len(data)
        ds.source_min_bytes = min(ds.source_min_bytes or len(data), len(data))
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, split_rows in rows.items():
        with open(os.path.join(root, "annotations", f"{split}.csv"), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows(split_rows)
    return ds


# ------------------------------------------------------------------------------------------
# Running the CLI
# ------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One CLI run: exit status, wall time, its output and the driver's peak RSS."""

    rc: int
    wall_s: float
    stdout: str
    stderr: str
    driver_peak_mb: float | None

    @property
    def lines(self) -> int:
        """Lines of stdout + stderr, without the wrapper's DRIVER_PEAK line."""
        out = [ln for ln in self.stdout.splitlines() if not ln.startswith("DRIVER_PEAK ")]
        return len(out) + len(self.stderr.splitlines())

    @property
    def progress_lines(self) -> int:
        """The CLI's progress lines (``ingest [###...]``, one per 10 % when stderr is not a TTY)."""
        return sum(ln.startswith("ingest [") for ln in self.stderr.splitlines())

    @property
    def ingest_s(self) -> float | None:
        """The ingest's own time from its summary line (without interpreter and Ray start-up)."""
        m = re.match(r"ingest done in ([0-9.]+) s", self.summary_line)
        return float(m.group(1)) if m else None

    @property
    def summary_line(self) -> str:
        return next((ln for ln in reversed(self.stdout.splitlines()) if ln.startswith("ingest ")), "")

    @property
    def reused(self) -> int | None:
        m = re.search(r"\((\d+) reused from an earlier run\)", self.summary_line)
        return int(m.group(1)) if m else None


def cli_command(ds_root: str, annotations: str, output: str, num_cpus: int, endpoint: str = "") -> list[str]:
    args = ["--source", "kinetics", "--input", ds_root, "--annotations", annotations, "--output", output,
            "--executor", "ray", "--num-cpus", str(num_cpus), "--videos-per-shard", str(PER_SHARD),
            "--short-side", str(SHORT_SIDE)]
    if endpoint:
        args += ["--s3-endpoint", endpoint]
    return [sys.executable, "-c", WRAPPER, *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | (extra or {})


def kill_tree(proc: subprocess.Popen, tree: set[int]) -> int:
    """SIGKILL the process group of ``proc`` and any process of ``tree`` outside it; wait until they
    are gone. Returns how many of them were still alive 10 s later."""
    tree = tree | descendants([proc.pid])
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.1)
    return sum(alive(p) for p in tree)


def _finish(proc: subprocess.Popen, t0: float, out_path: str, err_path: str) -> Run:
    wall = time.perf_counter() - t0
    stdout, stderr = Path(out_path).read_text(errors="replace"), Path(err_path).read_text(errors="replace")
    peak = None
    for ln in stdout.splitlines():
        if ln.startswith("DRIVER_PEAK "):
            peak = float(json.loads(ln[len("DRIVER_PEAK "):])["maxrss_mb"])
    return Run(proc.returncode, wall, stdout, stderr, peak)


def run_cli(cmd: list[str], env: dict[str, str], logs: str, timeout_s: float) -> Run:
    """Run the CLI to the end (killed with its process group after ``timeout_s``)."""
    out_path, err_path = f"{logs}.stdout", f"{logs}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log(f"timeout after {timeout_s:.0f} s: killing {proc.pid} and its process group")
            kill_tree(proc, set())
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no driver or Ray behind
            kill_tree(proc, set())
            raise
    return _finish(proc, t0, out_path, err_path)


def shard_files(out: str) -> dict[str, int]:
    """``{<split>/shard-NNNNN.parquet: st_mtime_ns}`` of the finished shards under ``out``."""
    found = {}
    if not os.path.isdir(out):
        return found
    for split in os.listdir(out):
        d = os.path.join(out, split)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if SHARD_RE.match(name):
                    try:
                        found[f"{split}/{name}"] = os.stat(os.path.join(d, name)).st_mtime_ns
                    except FileNotFoundError:
                        pass
    return found


def run_killed(cmd: list[str], env: dict[str, str], logs: str, out: str, kill_at: int, timeout_s: float
               ) -> tuple[Run, dict[str, object], dict[str, int]]:
    """Run the CLI until ``kill_at`` shards exist, then SIGKILL its process group; the shards then."""
    out_path, err_path = f"{logs}.stdout", f"{logs}.stderr"
    tree: set[int] = set()
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
                                start_new_session=True)
        finished_first = False
        while len(shard_files(out)) < kill_at:
            if proc.poll() is not None:
                finished_first = True
                break
            if time.perf_counter() - t0 > timeout_s:
                break
            tree |= descendants([proc.pid])
            time.sleep(0.2)
        kill_s = time.perf_counter() - t0
        leftover = kill_tree(proc, tree) if proc.poll() is None else 0
    run = _finish(proc, t0, out_path, err_path)
    at_kill = shard_files(out)
    info = {"kill_after_s": round(kill_s, 2), "kill_at_shards": kill_at, "shards_at_kill": len(at_kill),
            "finished_before_kill": finished_first, "rc": run.rc, "processes_left_after_kill": leftover,
            "manifest_at_kill": os.path.exists(os.path.join(out, "manifest.json")),
            "temp_files_at_kill": len(temp_files(out))}
    return run, info, at_kill


def temp_files(out: str) -> list[str]:
    return [str(p) for p in Path(out).rglob("*.tmp-*")] if os.path.isdir(out) else []


# ------------------------------------------------------------------------------------------
# Checking an output
# ------------------------------------------------------------------------------------------

def check_output(out: str, ds: Dataset, endpoint: str = "") -> dict[str, object]:
    """Compare ``out``'s manifest, shards and rejected.jsonl with what ``ds`` must give."""
    import pyarrow.parquet as pq

    from dynamonet.data.shards import read_manifest
    from dynamonet.storage import read_bytes, resolve_filesystem

    m = read_manifest(out, endpoint)
    fs, root = resolve_filesystem(out, endpoint)
    ids: list[str] = []
    for info in m.splits.values():
        for rel in info.shards:
            ids += pq.read_table(f"{root}/{rel}", filesystem=fs, columns=["video_id"]).column("video_id").to_pylist()
    rejected = [json.loads(ln) for ln in read_bytes(fs, f"{root}/rejected.jsonl").decode().splitlines() if ln.strip()]
    present = sum(ds.present.values())
    missing = sum(ds.missing.values())
    per_split = {k: v for k, v in ds.present.items() if v}
    checks = {
        "manifest_videos": m.counts.get("videos") == present,
        "manifest_per_split": m.counts.get("per_split") == per_split,
        "manifest_rejected": m.rejected == missing and m.counts.get("rejected") == missing,
        "shard_rows": len(ids) == present,
        "shard_video_ids": len(set(ids)) == len(ids) and set(ids) == ds.video_ids,
        "rejected_jsonl_entries": len(rejected) == missing
        and {(r.get("source"), r.get("split")) for r in rejected} == ds.missing_sources,
        "rejected_reasons_start_with_missing": all(str(r.get("reason", "")).startswith("missing") for r in rejected),
    }
    reasons = sorted({str(r.get("reason", "")) for r in rejected})
    return {"manifest_videos": m.counts.get("videos"), "manifest_per_split": m.counts.get("per_split"),
            "manifest_rejected": m.rejected, "shard_rows": len(ids), "rejected_lines": len(rejected),
            "rejected_reasons": reasons[:3], "checks": checks, "ok": all(checks.values())}


def describe_run(run: Run, videos: int) -> dict[str, object]:
    """A run's figures: ``wall_s``/``videos_per_s`` of the whole process (Python and Ray start-up
    included), ``ingest_s``/``ingest_videos_per_s`` from the CLI's summary line."""
    return {"rc": run.rc, "wall_s": round(run.wall_s, 2),
            "videos_per_s": round(videos / run.wall_s, 1) if run.wall_s > 0 else None,
            "ingest_s": run.ingest_s, "ingest_videos_per_s": round(videos / run.ingest_s, 1) if run.ingest_s else None,
            "driver_peak_mb": None if run.driver_peak_mb is None else round(run.driver_peak_mb, 1),
            "output_lines": run.lines, "progress_lines": run.progress_lines,
            "other_lines": run.lines - run.progress_lines, "summary_line": run.summary_line, "reused": run.reused}


def flag(name: str, ok: bool) -> dict[str, object]:
    """A pass/fail check as a target (1 = pass)."""
    return check(name, 1.0 if ok else 0.0, ">=", 1.0)


def fail_tail(run: Run) -> str:
    return "\n".join((run.stdout + run.stderr).splitlines()[-15:])


# ------------------------------------------------------------------------------------------
# S3
# ------------------------------------------------------------------------------------------

def s3_part(args: argparse.Namespace, work: str, clips: list[bytes]
            ) -> tuple[dict[str, dict[str, object]], dict[str, Dataset], dict[str, object]]:
    """(s3-small) and (s3-large): the same ``--s3-videos`` entries with tiny and with large source
    files, each uploaded to its own bucket of one moto S3 server on loopback and ingested from there
    (output in the same bucket). Returns the runs, the datasets and ``{"generation_s", "wall_s",
    "moto_stopped"}``; the server is stopped before returning, also on errors."""
    import boto3

    from dynamonet.cluster.processes import kill_all
    from dynamonet.cluster.rehearsal import start_s3_server
    from dynamonet.storage import upload_dir

    n = args.s3_videos
    t0 = time.perf_counter()
    big = make_big_clips(args.seed + 4)
    # the same seed: the same CSVs, paths and missing entries; only the files' content differs
    sets = {"s3_small": generate(os.path.join(work, f"s3_small_k{n}"), n, args.missing, clips, args.seed + 3),
            "s3_large": generate(os.path.join(work, f"s3_large_k{n}"), n, args.missing, big, args.seed + 3)}
    gen_s = time.perf_counter() - t0
    log(f"s3: generated 2 x {n} entries ({sets['s3_small'].source_bytes / 2**20:.1f} + "
        f"{sets['s3_large'].source_bytes / 2**20:.1f} MiB of sources) in {gen_s:.1f} s")

    endpoint, moto_pid = start_s3_server(work)
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in [*aws, "AWS_SESSION_TOKEN"]}
    os.environ.update(aws)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    runs: dict[str, dict[str, object]] = {}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for tag, ds in sets.items():
            bucket = tag.replace("_", "-")
            client.create_bucket(Bucket=bucket)
            t1 = time.perf_counter()
            upload_dir(ds.root, f"s3://{bucket}/k", endpoint)
            files = sum(1 for p in Path(ds.root).rglob("*") if p.is_file())
            upload_s = time.perf_counter() - t1
            log(f"({tag}) uploaded {files} files, {ds.source_bytes / 2**20:.1f} MiB of sources, in {upload_s:.1f} s;"
                " ingesting from S3")
            out = f"s3://{bucket}/shards"
            cmd = cli_command(f"s3://{bucket}/k", f"s3://{bucket}/k/annotations", out, args.num_cpus, endpoint)
            run = run_cli(cmd, cli_env(aws), os.path.join(work, f"run_{tag}"), args.timeout)
            log(f"({tag}) rc {run.rc} in {run.wall_s:.1f} s, driver peak {run.driver_peak_mb} MB: {run.summary_line}")
            if run.rc != 0:
                log(f"({tag}) failed:\n{fail_tail(run)}")
            result = check_output(out, ds, endpoint) if run.rc == 0 else {"ok": False}
            runs[tag] = {"input": f"s3://{bucket}/k", "files_uploaded": files, "upload_s": round(upload_s, 2),
                         "source_bytes": ds.source_bytes, "source_mb": round(ds.source_bytes / 2**20, 2),
                         "source_min_bytes": ds.source_min_bytes,
                         **describe_run(run, sum(ds.present.values())), "output": result}
    finally:
        kill_all([moto_pid])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    stopped = not alive(moto_pid)
    if not stopped:
        log(f"s3: the moto server {moto_pid} is still alive after SIGKILL")
    return runs, sets, {"generation_s": round(gen_s, 2), "wall_s": round(time.perf_counter() - t0, 1),
                        "moto_stopped": stopped}


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=10000, help="CSV entries of the large dataset (runs b, c, d)")
    p.add_argument("--small", type=int, default=1000, help="CSV entries of the small dataset (run a)")
    p.add_argument("--missing", type=float, default=0.07, help="fraction of CSV entries without a file")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="--num-cpus of the CLI's local Ray")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated datasets")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to each CLI run")
    p.add_argument("--keep", default="", help="work dir to keep (datasets, outputs, logs); default: a temp dir")
    p.add_argument("--quick", action="store_true", help="smoke run: --videos 600 --small 200 (--s3-videos 600)")
    p.add_argument("--s3", action="store_true",
                   help="also ingest two --s3-videos datasets, tiny and large source files, from a moto S3 server "
                   "and check that the driver's peak RSS does not grow with the source bytes")
    p.add_argument("--s3-videos", type=int, default=None,
                   help="CSV entries of each S3 dataset (s3-small, s3-large); default 1000, 600 with --quick")
    return p


def bench(args: argparse.Namespace, work: str) -> dict[str, object]:
    t0 = time.perf_counter()
    clips = make_clips(args.seed)
    small = generate(os.path.join(work, f"k{args.small}"), args.small, args.missing, clips, args.seed + 1)
    large = generate(os.path.join(work, f"k{args.videos}"), args.videos, args.missing, clips, args.seed + 2)
    gen_s = time.perf_counter() - t0
    log(f"generated {args.small} + {args.videos} entries in {gen_s:.1f} s under {work}")
    n_small, n_large = sum(small.present.values()), sum(large.present.values())
    runs: dict[str, dict[str, object]] = {}
    outputs: dict[str, dict[str, object]] = {}
    targets: list[dict[str, object]] = []

    def full(tag: str, ds: Dataset, out: str) -> Run:
        log(f"({tag}) ingest of {ds.entries} entries -> {out}")
        run = run_cli(cli_command(ds.root, os.path.join(ds.root, "annotations"), out, args.num_cpus), cli_env(),
                      os.path.join(work, f"run_{tag}"), args.timeout)
        log(f"({tag}) rc {run.rc} in {run.wall_s:.1f} s: {run.summary_line}")
        if run.rc != 0:
            log(f"({tag}) failed:\n{fail_tail(run)}")
        return run

    a = full("a", small, os.path.join(work, "out_a"))
    runs["a_small"] = describe_run(a, n_small)
    outputs["a_small"] = check_output(os.path.join(work, "out_a"), small) if a.rc == 0 else {"ok": False}

    b = full("b", large, os.path.join(work, "out_b"))
    runs["b_large"] = describe_run(b, n_large)
    outputs["b_large"] = check_output(os.path.join(work, "out_b"), large) if b.rc == 0 else {"ok": False}

    out_cd = os.path.join(work, "out_cd")
    cmd_cd = cli_command(large.root, os.path.join(large.root, "annotations"), out_cd, args.num_cpus)
    kill_at = math.ceil(large.planned_shards / 2)
    log(f"(c) ingest of {large.entries} entries, SIGKILL at {kill_at} of {large.planned_shards} shards")
    c, kill_info, at_kill = run_killed(cmd_cd, cli_env(), os.path.join(work, "run_c"), out_cd, kill_at, args.timeout)
    runs["c_killed"] = {"wall_s": round(c.wall_s, 2), **kill_info}
    log(f"(c) killed after {kill_info['kill_after_s']} s with {len(at_kill)} shards, rc {c.rc}")

    d = full("d", large, out_cd)
    after = shard_files(out_cd)
    untouched = [p for p, t in at_kill.items() if after.get(p) == t]
    runs["d_resumed"] = describe_run(d, n_large) | {
        "shards_at_kill_untouched": len(untouched), "temp_files_after": len(temp_files(out_cd))}
    outputs["d_resumed"] = check_output(out_cd, large) if d.rc == 0 else {"ok": False}

    s3_sets: dict[str, Dataset] = {}
    s3_info: dict[str, object] = {}
    if args.s3:
        s3_runs, s3_sets, s3_info = s3_part(args, work, clips)
        runs |= s3_runs

    # --- targets ---
    peak_s, peak_l = a.driver_peak_mb, b.driver_peak_mb
    ratio = peak_l / peak_s if peak_s and peak_l else None
    for tag, run in (("a", a), ("b", b), ("d", d)):
        targets.append(flag(f"run ({tag}) exits 0", run.rc == 0))
    targets.append(flag(f"(a) manifest, shards and rejected.jsonl match the {args.small}-entry dataset",
                        bool(outputs["a_small"]["ok"])))
    targets.append(flag(f"(b) manifest, shards and rejected.jsonl match the {args.videos}-entry dataset",
                        bool(outputs["b_large"]["ok"])))
    targets.append(check(f"(b) output lines (stdout+stderr) <= {MAX_LINES}", float(b.lines), "<=", MAX_LINES))
    targets.append(check(f"(b) non-progress output lines - (a)'s <= {MAX_EXTRA_LINES} "
                         f"({sum(large.missing.values())} vs {sum(small.missing.values())} missing files)",
                         float((b.lines - b.progress_lines) - (a.lines - a.progress_lines)), "<=", MAX_EXTRA_LINES))
    targets.append(check("(b) progress lines <= 11 (one per 10 %)", float(b.progress_lines), "<=", 11))
    targets.append(flag("(b) summary line states the rejected count",
                        f"{sum(large.missing.values())} rejected" in b.summary_line))
    targets.append(check(f"driver peak RSS at {args.videos} / at {args.small} entries <= {MAX_PEAK_RATIO} (flat)",
                         ratio, "<=", MAX_PEAK_RATIO))
    targets.append(flag("(c) killed before the end, no manifest.json at the kill",
                        not kill_info["finished_before_kill"] and not kill_info["manifest_at_kill"]
                        and 0 < len(at_kill) < large.planned_shards))
    targets.append(check(f"(d) shards reused >= shards present at the kill ({len(at_kill)})",
                         None if d.reused is None else float(d.reused), ">=", float(len(at_kill))))
    targets.append(flag("(d) every shard present at the kill untouched (same mtime_ns)",
                        bool(at_kill) and len(untouched) == len(at_kill)))
    targets.append(flag("(d) manifest, shards and rejected.jsonl match after the resume",
                        bool(outputs["d_resumed"]["ok"])))
    targets.append(flag("(d) no temp files left after the resume", not temp_files(out_cd)))
    s3_peaks: dict[str, object] = {}
    if args.s3:
        for tag, ds in s3_sets.items():
            r = runs.get(tag, {})
            targets.append(flag(f"({tag}) exits 0, manifest, shards and rejected.jsonl match the {ds.entries}-entry "
                                "dataset", r.get("rc") == 0 and bool(r.get("output", {}).get("ok"))))  # type: ignore[union-attr]
        small3, large3 = s3_sets["s3_small"], s3_sets["s3_large"]
        targets.append(flag(f"(s3_large) every source file >= {BIG_MIN_BYTES // 1000} KB "
                            f"(smallest: {large3.source_min_bytes / 1000:.0f} KB)",
                            large3.source_min_bytes >= BIG_MIN_BYTES))
        p_s3s, p_s3l = runs.get("s3_small", {}).get("driver_peak_mb"), runs.get("s3_large", {}).get("driver_peak_mb")
        extra_mb = (large3.source_bytes - small3.source_bytes) / 2**20
        growth = None if p_s3s is None or p_s3l is None else float(p_s3l) - float(p_s3s)  # type: ignore[arg-type]
        targets.append(check(f"(s3) driver peak grows by <= {S3_MAX_GROWTH:.0%} of the extra source bytes (no copy "
                             "on the driver): driver peak RSS (s3_large) - (s3_small), MB, <= "
                             f"{S3_MAX_GROWTH} x ({large3.source_bytes / 2**20:.1f} - "
                             f"{small3.source_bytes / 2**20:.1f}) MB of sources", growth, "<=", S3_MAX_GROWTH * extra_mb))
        s3_peaks = {"driver_peak_mb_s3_small": p_s3s, "driver_peak_mb_s3_large": p_s3l,
                    "s3_growth_mb": None if growth is None else round(growth, 1),
                    "s3_extra_source_mb": round(extra_mb, 1), "s3_growth_limit_mb": round(S3_MAX_GROWTH * extra_mb, 1),
                    "s3_growth_per_extra_source_mb": None if growth is None or extra_mb <= 0
                    else round(growth / extra_mb, 4)}
    return {
        "bench": "ingest_scale",
        "settings": {"videos": args.videos, "small": args.small, "missing": args.missing, "num_cpus": args.num_cpus,
                     "videos_per_shard": PER_SHARD, "short_side": SHORT_SIDE, "executor": "ray",
                     "source_video": f"{WIDTH}x{HEIGHT} H.264, {FRAMES} frames, {CLIPS} distinct clips",
                     "seed": args.seed, "s3": args.s3, "s3_videos": args.s3_videos if args.s3 else None,
                     "s3_large_source_video": f"{BIG_WIDTH}x{BIG_HEIGHT} H.264 crf {BIG_CRF}, {BIG_FRAMES} frames, "
                     f"noise +-{BIG_NOISE}, {BIG_CLIPS} distinct clips"},
        "machine": {"cpu_count": os.cpu_count()},
        "dataset": {"small": small.describe(), "large": large.describe(), "generation_s": round(gen_s, 2),
                    **{tag: ds.describe() for tag, ds in s3_sets.items()}},
        **({"s3": s3_info} if args.s3 else {}),
        "runs": runs,
        "outputs": outputs,
        "driver_peak": {f"driver_peak_mb_{args.small}": peak_s, f"driver_peak_mb_{args.videos}": peak_l,
                        "diff_mb": None if ratio is None else round(peak_l - peak_s, 1),
                        "ratio": None if ratio is None else round(ratio, 4), **s3_peaks},
        **summarize(targets),
    }


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally clauses: the moto server, the CLI, the temp dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.quick:
        args.videos, args.small = 600, 200
    if args.s3_videos is None:
        args.s3_videos = 600 if args.quick else 1000
    t0 = time.perf_counter()
    if args.keep:
        if os.path.isdir(args.keep) and os.listdir(args.keep):
            print(f"--keep: {args.keep} is not empty (the runs need fresh outputs)", file=sys.stderr)
            return 2
        os.makedirs(args.keep, exist_ok=True)
        work = args.keep
    else:
        work = tempfile.mkdtemp(prefix="dynamonet-ingest-scale-")
    try:
        result = bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
