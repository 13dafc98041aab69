"""The S3 endpoint becomes unreachable for 20 s in the middle of a clip stream: the stream carries
on through the retries configured in pyarrow (no retry loop of ours), and no row is lost or
duplicated. A throttling TCP proxy in front of moto plays the network; moto keeps running."""

from __future__ import annotations

import collections
import os
import time

import pytest
from helpers import FlakyProxy, noise_frames, write_video

from dynamonet.config import DataConfig
from dynamonet.data import STATUS_OK, build_clip_dataset
from dynamonet.data.encode import TranscodeSettings
from dynamonet.data.ingest import IngestOptions, run_ingest
from dynamonet.data.sampling import num_eval_windows

pytestmark = pytest.mark.ray
OUTAGE_S = 20.0


def test_stream_survives_a_20s_outage_without_losing_or_duplicating_rows(tmp_path, s3_server, ray_local):
    for i in range(12):
        write_video(os.path.join(tmp_path, "train", f"c{i % 3}", f"v{i:02d}.mp4"), noise_frames(20 + i, 96, 128, i))
    out = s3_server.make_bucket("flaky") + "/shards"
    run_ingest(IngestOptions(source="folder", input=str(tmp_path), output=out, videos_per_shard=1,
                             transcode=TranscodeSettings(short_side=96, gop=8, crf=18)), executor="ray", progress=False)
    proxy = FlakyProxy(target_port=s3_server.port, rate=48_000)     # a slow link: reads spread over time
    try:
        cfg = DataConfig(root=out, s3_endpoint=f"http://127.0.0.1:{proxy.port}", clip_len=4, crop_size=64,
                         resize_short=96, decode_actors=2, decode_cpus=0.5, val_split="")
        ds, info = build_clip_dataset(cfg, "train", training=False)
        seen: collections.Counter = collections.Counter()
        t0, outage_at, connections_before = time.monotonic(), None, 0
        for b in ds.iter_batches(batch_size=1, batch_format="numpy"):
            assert time.monotonic() - t0 < 300
            seen.update(zip(b["video_id"].tolist(), b["clip_index"].tolist(), b["status"].tolist(), strict=True))
            if outage_at is None:                                      # first row delivered: pull the plug
                outage_at, connections_before = time.monotonic(), proxy.connections
                proxy.outage(OUTAGE_S)
        waited = time.monotonic() - outage_at
    finally:
        proxy.close()
    expected = {(f"train/c{v % 3}/v{v:02d}", k, STATUS_OK)
                for v in range(12) for k in range(num_eval_windows(20 + v, 4))}
    assert info.num_clips == len(expected)
    assert set(seen) == expected and set(seen.values()) == {1}         # nothing lost, nothing twice
    assert waited >= OUTAGE_S and proxy.connections > connections_before  # reads resumed after the outage
