"""Ingest to S3 (moto on loopback) through boto3 and pyarrow: every source layout, rejected files,
idempotent re-runs, and resume after a killed run."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import decord
import pyarrow.parquet as pq
import pytest
from helpers import make_folder, make_hmdb51, make_kinetics, make_ucf101, noise_frames, write_bad_files, write_video

from dynamonet.data.encode import TranscodeSettings
from dynamonet.data.ingest import IngestOptions, run_ingest
from dynamonet.data.shards import SHARD_SCHEMA, read_manifest
from dynamonet.storage import read_bytes, resolve_filesystem

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def shard_rows(manifest, split):
    rows = []
    for uri in manifest.shard_uris(split):
        fs, path = resolve_filesystem(uri)
        table = pq.read_table(path, filesystem=fs)
        assert table.schema.remove_metadata() == SHARD_SCHEMA
        rows += table.to_pylist()
    return rows


def rejected(out):
    fs, path = resolve_filesystem(out + "/rejected.jsonl")
    return [json.loads(line) for line in read_bytes(fs, path).decode().splitlines()]


def ingest(source, videos, out, annotations="", **kw):
    opts = IngestOptions(source=source, input=videos, output=out, annotations=annotations,
                         transcode=TranscodeSettings(short_side=32, gop=8), videos_per_shard=2, **kw)
    return run_ingest(opts, executor="ray", progress=False)


@pytest.mark.parametrize("source", ["ucf101", "hmdb51", "kinetics", "folder", "unlabeled"])
def test_ingest_each_source_layout_to_s3(source, tmp_path, s3_server, ray_local):
    layouts = {"ucf101": make_ucf101, "hmdb51": make_hmdb51, "kinetics": make_kinetics,
               "folder": lambda r: (make_folder(r), ""), "unlabeled": lambda r: (make_folder(r), "")}
    videos, ann = layouts[source](str(tmp_path))
    out = s3_server.make_bucket(source) + "/shards"
    summary = ingest(source, videos, out, ann)
    m = read_manifest(out)
    expected = {"ucf101": ({"train": 3, "test": 6}, 1), "hmdb51": ({"train": 4, "test": 2}, 2),
                "kinetics": ({"train": 3, "val": 2}, 1), "folder": ({"train": 4, "val": 4}, 0),
                "unlabeled": ({"unlabeled": 8}, 0)}[source]
    assert m.counts["per_split"] == expected[0] and m.rejected == expected[1] == len(summary.rejected)
    assert all("missing" in r["reason"] for r in rejected(out)) and m.labels_hflip_invariant
    shards = [f"shards/{rel}" for info in m.splits.values() for rel in info.shards]
    assert len(shards) == sum((n + 1) // 2 for n in expected[0].values())      # 2 videos per shard
    assert s3_server.keys(out) == sorted(["shards/manifest.json", "shards/rejected.jsonl", *shards])  # via boto3
    for split in m.splits:
        rows = shard_rows(m, split)
        assert sorted(r["video_index"] for r in rows) == list(range(len(rows)))
        for r in rows:
            assert r["crc32"] == zlib.crc32(r["video"]) and min(r["height"], r["width"]) == 32
            assert len(decord.VideoReader(io.BytesIO(r["video"]))) == r["num_frames"] == 20
            assert (r["label"] == -1) == (source == "unlabeled")
            if r["label"] >= 0:
                assert m.class_names[r["label"]] == r["label_name"]


def test_synthetic_source_through_the_cli(s3_server, ray_local):
    sys.path.insert(0, str(ROOT / "pipelines"))
    import prepare_data

    out = s3_server.make_bucket("syn") + "/synthetic"
    rc = prepare_data.main(["--source", "synthetic", "--output", out, "--no-progress", "--synthetic", "num_classes=13",
                            "--synthetic", "train_per_class=2", "--synthetic", "val_per_class=1",
                            "--synthetic", "num_frames=10", "--synthetic", "size=32"])
    m = read_manifest(out)
    assert rc == 0 and len(m.class_names) == 13 and m.counts["per_split"] == {"train": 26, "val": 13}
    assert m.transcode["short_side"] == 32 and m.splits["val"].frame_counts == {10: 13}
    assert m.labels_hflip_invariant is False


def test_bad_files_are_rejected_with_reasons_and_counted(tmp_path, s3_server, ray_local, capsys):
    raw = make_folder(str(tmp_path / "raw"), splits=False)
    good = open(os.path.join(raw, "jump", "jump0.mp4"), "rb").read()
    reasons = write_bad_files(os.path.join(raw, "jump"), good)
    out = s3_server.make_bucket("bad") + "/shards"
    summary = ingest("folder", raw, out)
    got = {os.path.basename(r["source"]): r["reason"] for r in rejected(out)}
    assert set(got) == set(reasons) and all(reasons[k] in got[k] for k in reasons)
    m = read_manifest(out)
    assert m.rejected == 4 and m.counts["videos"] == 4 and len(summary.rejected) == 4
    assert "4 rejected" in capsys.readouterr().out


def test_rerun_reuses_every_shard(tmp_path, s3_server, ray_local):
    raw = make_folder(str(tmp_path))
    out = s3_server.make_bucket("rerun") + "/shards"
    first = ingest("folder", raw, out)
    second = ingest("folder", raw, out)
    assert first.reused == 0 and second.reused == second.shards == 4
    assert second.manifest.to_json() == first.manifest.to_json()


def test_resume_after_the_ingest_is_killed(tmp_path, s3_server):
    raw = str(tmp_path / "raw")
    for i in range(24):
        write_video(os.path.join(raw, f"class{i % 3}", f"v{i:02d}.avi"), noise_frames(90, 240, 320, seed=i))
    out = s3_server.make_bucket("resume") + "/shards"
    cmd = [sys.executable, str(ROOT / "pipelines" / "prepare_data.py"), "--source", "folder", "--input", raw,
           "--output", out, "--videos-per-shard", "2", "--short-side", "64", "--num-cpus", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(k.endswith(".parquet") for k in s3_server.keys(out)):
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                          # the driver and its local Ray
    proc.wait(timeout=60)
    at_kill = [k for k in s3_server.keys(out) if k.endswith(".parquet")]
    assert 1 <= len(at_kill) < 12 and not any(k.endswith("manifest.json") for k in s3_server.keys(out))

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    reused = int(re.search(r"\((\d+) reused from an earlier run\)", done.stdout).group(1))
    assert len(at_kill) <= reused < 12                           # a PUT in flight at the kill may land
    m = read_manifest(out)
    rows = shard_rows(m, "train")
    assert sorted(r["source"] for r in rows) == sorted(f"class{i % 3}/v{i:02d}.avi" for i in range(24))
    assert sorted(r["video_index"] for r in rows) == list(range(24)) and m.counts["videos"] == 24


def _recording_s3_server(record_to: Path) -> tuple[subprocess.Popen, str]:
    """A moto server in its own process that logs every request it serves (moto's recorder)."""
    code = ("import sys; from moto.server import ThreadedMotoServer; "
            "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False); s.start(); "
            "print(s.get_host_and_port()[1], flush=True); sys.stdin.read(); s.stop()")
    env = {**os.environ, "MOTO_ENABLE_RECORDING": "1", "MOTO_RECORDER_FILEPATH": str(record_to)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def test_s3_input_each_source_is_read_once_whole_by_the_tasks(tmp_path, s3_server, ray_local):
    """--input s3://: every listed source object is fetched by one GET of the whole object (no
    ranged re-reads, no second copy), and a missing one is a "missing" rejection."""
    import boto3

    videos, csv_path = make_kinetics(str(tmp_path))
    big = sorted(Path(videos).rglob("*.mp4"))[0]     # larger than any single read PyAV would make
    write_video(str(big), noise_frames(20, 240, 320, seed=7))
    log = tmp_path / "requests.jsonl"
    server, endpoint = _recording_s3_server(log)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="raw")
        sources = {}
        for path in Path(videos).rglob("*.mp4"):
            key = f"k400/{path.relative_to(videos).as_posix()}"
            s3.upload_file(str(path), "raw", key)
            sources[key] = path.stat().st_size
        s3.upload_file(csv_path, "raw", "k400-annotations/train.csv")
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/recorder/reset-recording", method="POST"))
        summary = ingest("kinetics", "s3://raw/k400", "s3://raw/shards", "s3://raw/k400-annotations/train.csv",
                         endpoint=endpoint)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    assert summary.manifest.counts["videos"] == len(sources) == 5 and sources[f"k400/{big.relative_to(videos)}"] > 1 << 17
    assert [r["reason"].split(":")[0] for r in summary.rejected] == ["missing"]
    assert "1 rejected (1 missing; see rejected.jsonl)" in summary.describe()    # summed, not one line per file
    gets: dict[str, list[dict]] = {}
    for line in log.read_text().splitlines():
        req = json.loads(line)
        path = urllib.parse.urlsplit(req["url"]).path
        if req["method"] == "GET" and path.startswith("/raw/k400/"):
            gets.setdefault(urllib.parse.unquote(path[len("/raw/"):]), []).append(req["headers"])
    assert set(gets) == set(sources)                               # every source read, nothing else under it
    for key, headers in gets.items():
        assert len(headers) == 1, f"{key}: {len(headers)} GETs"
        ranged = {k.lower(): v for k, v in headers[0].items()}.get("range")
        assert ranged in (None, f"bytes=0-{sources[key] - 1}"), f"{key}: partial read {ranged}"
