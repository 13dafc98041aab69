"""The Ray Data clip stream from S3 (moto on loopback): shapes, crops, the exactly-K epoch rule
with 2 consumers, evaluation windows, corrupt rows, and one-line configuration errors (§4.3)."""

from __future__ import annotations

import collections
import math
import os
import threading
import zlib
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FlakyProxy, crop_center, frame_index, position_frames, write_video

from dynamonet.config import DataConfig
from dynamonet.data import STATUS_CORRUPT, STATUS_OK, STATUS_PADDING, build_clip_dataset, open_dataset
from dynamonet.data.dataset import publish_epoch
from dynamonet.data.decode import ClipDecoder
from dynamonet.data.encode import TranscodeSettings
from dynamonet.data.ingest import IngestOptions, run_ingest
from dynamonet.data.sampling import num_eval_windows
from dynamonet.data.shards import read_manifest, read_split_columns
from dynamonet.data.subset import select_holdout_by_class, select_labeled
from dynamonet.data.transforms import crop_origin
from dynamonet.storage import resolve_filesystem, write_bytes_atomic

pytestmark = pytest.mark.ray
TRAIN_FRAMES, VAL_FRAMES = [20, 24, 28, 32, 36], [17, 25, 40]
T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread: its result or exception, or a test failure if it hangs past ``seconds``."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(fn())
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert results or errors, f"hung for more than {seconds} s"
    if errors:
        raise errors[0]
    return results[0]


@pytest.fixture(scope="module")
def position_dataset(tmp_path_factory, s3_server, ray_local):
    """5 train + 3 val videos whose pixels encode (x, y, t), ingested to S3 at 64x80."""
    raw = tmp_path_factory.mktemp("raw")
    for split, lengths in (("train", TRAIN_FRAMES), ("val", VAL_FRAMES)):
        for i, n in enumerate(lengths):
            write_video(os.path.join(raw, split, f"c{i % 2}", f"v{i}.mp4"), position_frames(n, 64, 80), crf=0)
    out = s3_server.make_bucket("clips") + "/shards"
    run_ingest(IngestOptions(source="folder", input=str(raw), output=out, videos_per_shard=2,
                             transcode=TranscodeSettings(short_side=64, gop=8, crf=0)), executor="ray", progress=False)
    return out


def config(root, **kw):
    base = dict(root=root, clip_len=4, frame_stride=2, clips_per_video=3, crop_size=32, resize_short=64,
                decode_actors=2, decode_cpus=0.5, batch_size=4)
    return DataConfig(**{**base, **kw})


def consume_split(ds, n, epochs, epoch_key, first_epoch=0):
    """Iterate streaming_split(n, equal=True) with n concurrent consumers for `epochs` epochs, each
    consumer publishing the epoch first, as the training loop does."""
    splits = ds.streaming_split(n, equal=True)
    got = [[[] for _ in range(n)] for _ in range(epochs)]

    def run(i):
        for e in range(epochs):
            publish_epoch(epoch_key, first_epoch + e)
            for b in splits[i].iter_batches(batch_size=4, batch_format="numpy"):
                got[e][i].append(b)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a consumer hung"
    return got


@pytest.mark.parametrize("pool, part_bytes", [("tasks", None), ("actors", 50_000)], ids=["tasks", "actors-parts"])
def test_training_epochs_two_consumers_exactly_k(position_dataset, monkeypatch, pool, part_bytes):
    if part_bytes:  # 3 clips of 15 KB per video: one video per decoder output block
        monkeypatch.setattr("dynamonet.data.dataset.TARGET_BATCH_BYTES", part_bytes)
    cfg = config(position_dataset, decode_pool=pool)
    ds, info = build_clip_dataset(cfg, "train", training=True, num_consumers=2, seed=3)
    assert (info.num_videos, info.num_clips, info.num_padding, info.clip_shape) == (5, 15, 1, (5, 32, 32, 3))
    epochs = consume_split(ds, 2, epochs=2, epoch_key=info.epoch_key)
    starts = []
    for batches in epochs:
        per_consumer = [sum(len(b["clip"]) for b in bs) for bs in batches]
        assert per_consumer == [8, 8] and [len(bs) for bs in batches] == [2, 2]   # same rows and batches
        rows = [b for bs in batches for b in bs]
        status = np.concatenate([b["status"] for b in rows])
        keys = [(v, k) for b in rows for v, k, s in zip(b["video_index"], b["clip_index"], b["status"], strict=True)
                if s == STATUS_OK]
        assert sorted(keys) == [(v, k) for v in range(5) for k in range(3)]     # every video exactly K times
        assert list(status).count(STATUS_PADDING) == 1
        for b in rows:
            assert b["clip"].dtype == np.uint8 and b["clip"].shape[1:] == (5, 32, 32, 3)
            assert b["label"].dtype == np.int64 and b["clip_index"].dtype == np.int32
            for clip, s, start in zip(b["clip"], b["status"], b["start"], strict=True):
                if s == STATUS_OK:
                    assert list(frame_index(clip)) == [start + 2 * i for i in range(5)]
        starts.append(sorted((v, k, st) for b in rows for v, k, st in zip(b["video_index"], b["clip_index"],
                                                                          b["start"], strict=True)))
    assert starts[0] != starts[1]                                               # new windows every epoch


def _draws(epochs):
    return [sorted((int(v), int(k), int(st), int(c), bool(f)) for bs in consumers for b in bs
                   for v, k, st, c, f, s in zip(b["video_index"], b["clip_index"], b["start"], b["crop"], b["flip"],
                                                b["status"], strict=True) if s == STATUS_OK)
            for consumers in epochs]


def test_rebuilt_stream_continues_the_draws_of_the_epoch_it_is_told(position_dataset):
    """A resumed run rebuilds its datasets (Ray Data's own execution counter restarts at 0): the
    draws of epoch e depend on (seed, e, video, draw) only, so the rebuilt stream told "epoch 2"
    draws what the original drew in its third epoch, and the crop/flip columns describe the pixels."""
    cfg = config(position_dataset, clips_per_video=2)
    ds, info = build_clip_dataset(cfg, "train", training=True, num_consumers=2, seed=11)
    original = _draws(consume_split(ds, 2, epochs=3, epoch_key=info.epoch_key))
    again, info2 = build_clip_dataset(cfg, "train", training=True, num_consumers=2, seed=11)
    assert info2.epoch_key != info.epoch_key
    resumed = _draws(consume_split(again, 2, epochs=1, epoch_key=info2.epoch_key, first_epoch=2))
    assert resumed[0] == original[2] and original[2] != original[0] and original[1] != original[0]
    other, info3 = build_clip_dataset(cfg, "train", training=True, num_consumers=1, seed=12)
    assert _draws(consume_split(other, 1, epochs=1, epoch_key=info3.epoch_key))[0] != original[0]
    publish_epoch(info.epoch_key, 0)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for clip, c, f, s in zip(b["clip"], b["crop"], b["flip"], b["status"], strict=True):
            if s == STATUS_OK:
                cy, cx, flipped = crop_center(clip)
                oy, ox = crop_origin(64, 80, 32, int(c))
                assert abs(cy - oy - 15.5) < 1.5 and abs(cx - ox - 15.5) < 1.5 and flipped == bool(f)


def test_eval_windows_cover_every_video_with_centre_crops(position_dataset):
    cfg = config(position_dataset)
    ds, info = build_clip_dataset(cfg, "val", training=False)
    assert info.num_clips == sum(num_eval_windows(n, 4, 2) for n in VAL_FRAMES) == 9 and info.num_padding == 0
    names = sorted(f"val/c{i % 2}/v{i}" for i in range(3))
    by_video = collections.defaultdict(list)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for clip, vid, k, start in zip(b["clip"], b["video_id"], b["clip_index"], b["start"], strict=True):
            by_video[vid].append((k, start, list(frame_index(clip)), crop_center(clip)))
    assert sorted(by_video) == names
    for vid, windows in by_video.items():
        n = VAL_FRAMES[int(vid[-1])]
        windows.sort()
        assert [w[0] for w in windows] == list(range(num_eval_windows(n, 4, 2)))
        assert [w[2] for w in windows] == [[8 * k + 2 * i for i in range(5)] for k in range(len(windows))]
        assert n - 1 - windows[-1][2][-1] < 8                                   # tiled to the end
        assert all(abs(c[0] - 31.5) < 1.5 and abs(c[1] - 39.5) < 1.5 and not c[2] for *_, c in windows)


def test_a_corrupt_row_is_skipped_and_counted(position_dataset, s3_server):
    m = read_manifest(position_dataset)
    out = s3_server.make_bucket("corrupt") + "/shards"
    for info in m.splits.values():
        for rel in info.shards:
            fs, path = resolve_filesystem(f"{position_dataset}/{rel}")
            table = pq.read_table(path, filesystem=fs)
            if rel == m.splits["train"].shards[0]:
                videos = table.column("video").to_pylist()
                videos[0] = videos[0][:100] + bytes(len(videos[0]) - 100)      # zeroed tail, stale crc32
                table = table.set_column(table.schema.get_field_index("video"), "video",
                                         pa.array(videos, type=pa.binary()))
                corrupt_id = table.column("video_id")[0].as_py()
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            write_bytes_atomic(f"{out}/{rel}", sink.getvalue().to_pybytes())
    write_bytes_atomic(f"{out}/manifest.json", m.to_json().encode())
    ds, info = build_clip_dataset(config(out), "train", training=True, num_consumers=1, seed=0)
    publish_epoch(info.epoch_key, 0)
    rows = [r for b in ds.iter_batches(batch_size=None, batch_format="numpy")
            for r in zip(b["video_id"], b["status"], b["clip"].reshape(len(b["clip"]), -1).max(1), strict=True)]
    assert len(rows) == info.num_clips == 15
    bad = [r for r in rows if r[1] == STATUS_CORRUPT]
    assert len(bad) == 3 and {r[0] for r in bad} == {corrupt_id} and all(r[2] == 0 for r in bad)


def test_configuration_errors_are_one_line_naming_the_field(position_dataset, tmp_path):
    def error(cfg, **kw):
        with pytest.raises(ValueError) as e:
            m = open_dataset(cfg)
            build_clip_dataset(cfg, kw.get("split", cfg.train_split), training=True, manifest=m)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error(config(str(tmp_path / "nope"))).startswith("data.root: directory")
    empty = position_dataset.rsplit("/", 1)[0] + "/elsewhere"
    assert error(config(empty)).startswith(f"data.root: no manifest.json at {empty}/manifest.json")
    server = FlakyProxy(target_port=0)  # nothing behind it: in a lasting outage it resets every
    server.outage(math.inf)              # connection at once and counts it, one per try of the client
    try:
        msg = within(120, lambda: error(config(position_dataset, s3_endpoint=f"127.0.0.1:{server.port}")))
    finally:
        server.close()
    assert msg.startswith(f"data.s3_endpoint: cannot reach the S3 endpoint http://127.0.0.1:{server.port} ")
    assert server.refused == 1                   # one try: the probe does not ride the streaming retry policy
    assert error(config(position_dataset, clip_len=24)).startswith("data.clip_len: a clip spans 49 frames")
    assert error(config(position_dataset, val_split="test")).startswith("data.val_split: split 'test'")


def test_crc_guard_matches_ingest(position_dataset):
    m = read_manifest(position_dataset)
    fs, path = resolve_filesystem(m.shard_uris("val")[0])
    t = pq.read_table(path, filesystem=fs, columns=["video", "crc32"])
    assert all(zlib.crc32(v) == c for v, c in zip(t.column("video").to_pylist(), t.column("crc32").to_pylist(),
                                                  strict=True))


def test_label_fraction_streams_the_stratified_subset_exactly_k_times(position_dataset):
    """data.label_fraction=0.5 (paper Table 2): the training epoch holds exactly the labeled
    selection (c0: 2 of 3, c1: 1 of 2), K rows each, padded for 2 consumers, with the draws of the
    full split (video_index unchanged); label_subset=unlabeled streams the complement."""
    m = read_manifest(position_dataset)
    cols = read_split_columns(m, "train", ("video_index", "video_id", "label"))
    index_of = dict(zip(cols["video_id"], cols["video_index"], strict=True))
    labeled = select_labeled(cols["video_id"], cols["label"], 0.5, seed=0)
    expected = {"labeled": labeled, "unlabeled": set(cols["video_id"]) - labeled}
    assert len(labeled) == 3
    for subset, padding in (("labeled", 1), ("unlabeled", 0)):
        cfg = config(position_dataset, label_fraction=0.5, label_subset=subset)
        ds, info = build_clip_dataset(cfg, "train", training=True, num_consumers=2, manifest=m, seed=5)
        n = len(expected[subset])
        assert (info.num_videos, info.num_clips, info.num_padding) == (n, 3 * n, padding)
        assert info.selection.video_ids == expected[subset] and info.selection.split_videos == 5
        (consumers,) = consume_split(ds, 2, epochs=1, epoch_key=info.epoch_key)
        assert [sum(len(b["clip"]) for b in bs) for bs in consumers] == [info.rows_per_consumer] * 2
        rows = [r for bs in consumers for b in bs
                for r in zip(b["video_id"], b["video_index"], b["status"], b["start"], b["crop"], b["flip"],
                             strict=True)]
        assert len(rows) == info.num_clips + info.num_padding
        assert [r[2] for r in rows].count(STATUS_PADDING) == padding
        real = [r for r in rows if r[2] == STATUS_OK]
        assert collections.Counter(r[0] for r in real) == {v: 3 for v in expected[subset]}
        decoder = ClipDecoder(clip_len=4, frame_stride=2, crop_size=32, resize_short=64,
                              training=True, clips_per_video=3, seed=5, epoch=0, hflip=info.hflip)
        for vid in expected[subset]:                     # the draws of the video's index in the full split
            got = sorted((int(st), int(c), bool(f)) for v, i, _, st, c, f in real if v == vid and i == index_of[vid])
            starts, crops, flips = decoder.draws(index_of[vid], TRAIN_FRAMES[int(vid[-1])])
            assert got == sorted(zip(starts.tolist(), crops.tolist(), flips.tolist(), strict=True))
    with pytest.raises(ValueError, match=r"^data\.label_fraction: 0\.9 leaves no unlabeled video"):
        build_clip_dataset(config(position_dataset, label_fraction=0.9, label_subset="unlabeled"), "train",
                           training=True, manifest=m)
    _, val_info = build_clip_dataset(config(position_dataset, label_fraction=0.5), "val", training=False, manifest=m)
    assert val_info.selection is None and val_info.num_videos == 3              # evaluation is never subset


def test_holdout_validation_is_carved_from_the_training_split(position_dataset):
    """data.val_split=holdout (paper protocol, no test split in the loop): the validation stream holds
    the videos held out of the training split (c0: 1 of 3, c1: 1 of 2), every window of each, with
    their video_index there; the training stream holds the rest, K rows each. Disjoint, together
    the whole split. A split without UCF101 groups refuses holdout_by=group in one line."""
    cfg = config(position_dataset, val_split="holdout", holdout_fraction=0.34, holdout_seed=1)
    m = open_dataset(cfg)
    cols = read_split_columns(m, "train", ("video_index", "video_id", "label"))
    index_of = dict(zip(cols["video_id"], cols["video_index"], strict=True))
    held = select_holdout_by_class(cols["video_id"], cols["label"], 0.34, seed=1)
    assert len(held) == 2 and len({int(v[-1]) % 2 for v in held}) == 2          # one of each class
    train, tinfo = build_clip_dataset(cfg, cfg.train_split, training=True, manifest=m, seed=2)
    val, vinfo = build_clip_dataset(cfg, cfg.val_split, training=False, manifest=m)
    assert tinfo.holdout.video_ids == vinfo.holdout.video_ids == held and tinfo.selection is None
    assert (tinfo.num_videos, tinfo.num_clips) == (3, 9)
    held_frames = [TRAIN_FRAMES[int(v[-1])] for v in held]
    assert vinfo.num_videos == 2 and vinfo.num_clips == sum(num_eval_windows(n, 4, 2) for n in held_frames)
    publish_epoch(tinfo.epoch_key, 0)
    trained = collections.Counter(v for b in train.iter_batches(batch_size=None, batch_format="numpy")
                                  for v, st in zip(b["video_id"], b["status"], strict=True) if st == STATUS_OK)
    val_rows = [(v, i, st) for b in val.iter_batches(batch_size=None, batch_format="numpy")
                for v, i, st in zip(b["video_id"], b["video_index"], b["status"], strict=True)]
    validated = {v for v, _, _ in val_rows}
    assert len(val_rows) == vinfo.num_clips and all(st == STATUS_OK for _, _, st in val_rows)
    assert all(i == index_of[v] for v, i, _ in val_rows)                       # indices of the training split
    assert trained == {v: 3 for v in set(cols["video_id"]) - held}               # every training video K times
    assert validated == held and not validated & set(trained)
    assert validated | set(trained) == set(cols["video_id"])
    _, both = build_clip_dataset(config(position_dataset, val_split="holdout", holdout_fraction=0.34,
                                        holdout_seed=1, label_fraction=0.5), "train", training=True, manifest=m)
    assert both.num_videos == 2 and both.selection.split_videos == 3             # labels share the rest only
    assert not both.selection.video_ids & held
    with pytest.raises(ValueError, match=r"^data\.holdout_by: group needs UCF101 file names .*'train/c0/v0'") as e:
        build_clip_dataset(config(position_dataset, val_split="holdout", holdout_fraction=0.34, holdout_by="group"),
                           "holdout", training=False, manifest=m)
    assert "\n" not in str(e.value)
