"""Failures in the middle of a clip stream stay bounded.

* The S3 endpoint becomes unreachable for 20 s, from the stream's first shard read on: the stream
  carries on through the retries configured in pyarrow (no retry loop of ours), and no row is lost
  or duplicated. A throttling TCP proxy in front of moto plays the network (it resets every
  connection during the outage); moto keeps running.
* A decoder process is killed while it decodes a shard: the task is retried within
  ``data.decode_max_retries`` (nothing lost, nothing twice), or, past the bound, the epoch fails
  with one line naming the shard; within a time limit either way.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time

import pytest
from helpers import FlakyProxy, noise_frames, write_video

from dynamonet.config import DataConfig
from dynamonet.data import STATUS_OK, build_clip_dataset
from dynamonet.data.dataset import decoder_notes, describe_data_error, publish_epoch
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
        ds, info = build_clip_dataset(cfg, "train", training=False)   # reads the manifest: before the outage
        proxy.arm_outage(OUTAGE_S)   # the stream's first read of a shard starts it: no shard is read before
        before, t0 = proxy.connections, time.monotonic()
        seen: collections.Counter = collections.Counter()
        for b in ds.iter_batches(batch_size=1, batch_format="numpy"):
            assert time.monotonic() - t0 < 300                          # a hang guard only
            seen.update(zip(b["video_id"].tolist(), b["clip_index"].tolist(), b["status"].tolist(), strict=True))
        ended = time.monotonic()
    finally:
        proxy.close()
    expected = {(f"train/c{v % 3}/v{v:02d}", k, STATUS_OK)
                for v in range(12) for k in range(num_eval_windows(20 + v, 4))}
    assert info.num_clips == len(expected)
    assert set(seen) == expected and set(seen.values()) == {1}         # nothing lost, nothing twice
    assert proxy.outage_started.is_set() and proxy.refused >= 1       # reads were refused during the outage
    assert ended - proxy.outage_started_at >= OUTAGE_S and proxy.connections > before  # and resumed after it


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory):
    """8 shards of 2 videos, 80 frames each: a decode task takes long enough to be killed mid-shard."""
    root = tmp_path_factory.mktemp("long")
    for i in range(16):
        write_video(os.path.join(root, "raw", "train", f"c{i % 2}", f"v{i:02d}.mp4"), noise_frames(80, 96, 128, i))
    out = str(root / "shards")
    run_ingest(IngestOptions(source="folder", input=str(root / "raw"), output=out, videos_per_shard=2,
                             transcode=TranscodeSettings(short_side=96, gop=8, crf=18)), executor="threads",
               progress=False)
    return out


def _kill_next_decoder(killed: list, deadline_s: float = 120.0) -> None:
    """SIGKILL the first decode worker that starts a shard from now on (its note names the shard)."""
    before = decoder_notes()  # warm workers of earlier streams have notes already
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for worker, note in decoder_notes().items():
            if note != before.get(worker):
                os.kill(note["pid"], signal.SIGKILL)
                killed.append(note)
                return
        time.sleep(0.01)


@pytest.mark.parametrize("retries", [2, 0], ids=["retried", "exhausted"])
def test_a_killed_decoder_is_retried_within_the_bound_or_fails_naming_the_shard(long_shards, ray_local, retries):
    cfg = DataConfig(root=long_shards, clip_len=8, crop_size=64, resize_short=96, clips_per_video=8, decode_actors=2,
                     decode_cpus=0.5, val_split="", decode_max_retries=retries)
    ds, info = build_clip_dataset(cfg, "train", training=True, seed=0)
    publish_epoch(info.epoch_key, 0)
    killed: list = []
    killer = threading.Thread(target=_kill_next_decoder, args=(killed,), daemon=True)
    t0 = time.monotonic()
    killer.start()
    if retries:
        rows = collections.Counter((int(v), int(k)) for b in ds.iter_batches(batch_size=None, batch_format="numpy")
                                   for v, k in zip(b["video_index"], b["clip_index"], strict=True))
        assert killed and rows == {(v, k): 1 for v in range(16) for k in range(8)}  # retried: nothing lost or twice
    else:
        with pytest.raises(Exception) as err:
            for _ in ds.iter_batches(batch_size=None, batch_format="numpy"):
                pass
        message = describe_data_error(err.value)
        assert killed and "\n" not in message
        assert message.startswith(f"decoding shard {killed[0]['shard']} failed: its worker died"), message
    assert time.monotonic() - t0 < 180  # bounded: retried or failed, never a hang
