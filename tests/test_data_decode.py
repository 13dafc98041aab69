"""ClipDecoder on real H.264 bytes: windows, crops, flips, corrupt rows, decord guards (§4.3)."""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
from helpers import crop_center, frame_index, position_frames

from dynamonet.data.decode import STATUS_CORRUPT, STATUS_OK, ClipDecoder
from dynamonet.data.encode import TranscodeSettings, encode_video, transcode
from dynamonet.data.transforms import crop_origin


def make_row(num_frames=30, height=64, width=80, video_index=7, short_side=64):
    raw = encode_video(position_frames(num_frames, height, width), crf=0)
    t = transcode(raw, TranscodeSettings(short_side=short_side, gop=8, crf=0))
    return {"video_id": "cls/vid", "video_index": video_index, "label": 3, "video": t.data, "num_frames": t.num_frames,
            "height": t.height, "width": t.width, "crc32": zlib.crc32(t.data)}


def batch_of(*rows):
    return {k: np.array([r[k] for r in rows], dtype=object if k in ("video", "video_id") else None) for k in rows[0]}


def decoder(training, **kw):
    args = dict(clip_len=4, frame_stride=2, crop_size=32, resize_short=64,
                training=training, clips_per_video=3, seed=1, epoch=0)
    return ClipDecoder(**{**args, **kw})


@pytest.fixture(scope="module")
def row():
    return make_row()


def test_training_clips_shapes_windows_crops_and_flips(row):
    seen_pos, seen_flip = set(), set()
    for epoch in range(12):
        out = decoder(True, epoch=epoch)(batch_of(row))
        assert out["clip"].shape == (3, 5, 32, 32, 3) and out["clip"].dtype == np.uint8
        assert list(out["clip_index"]) == [0, 1, 2] and set(out["status"]) == {STATUS_OK}
        assert out["label"].dtype == np.int64 and out["video_index"][0] == 7 and out["video_id"][0] == "cls/vid"
        for clip, start in zip(out["clip"], out["start"], strict=True):
            assert list(frame_index(clip)) == [start + 2 * i for i in range(5)]   # T+1 frames, stride 2
            cy, cx, flipped = crop_center(clip)
            candidates = [tuple(np.add(crop_origin(64, 80, 32, p), 15.5)) for p in range(5)]
            pos = int(np.argmin([abs(cy - y) + abs(cx - x) for y, x in candidates]))
            assert abs(cy - candidates[pos][0]) < 1.5 and abs(cx - candidates[pos][1]) < 1.5
            seen_pos.add(pos)
            seen_flip.add(flipped)
    assert seen_pos == {0, 1, 2, 3, 4} and seen_flip == {False, True}


def test_no_flips_when_disabled(row):
    for epoch in range(8):
        out = decoder(True, epoch=epoch, hflip=False)(batch_of(row))
        assert not any(crop_center(clip)[2] for clip in out["clip"])


def test_flipped_clips_take_the_mirror_class_label(row):
    # a left-right flip turns "move right" (class 3 here) into "move left" (class 1)
    mirror = [0, 3, 2, 1]
    labels = {False: set(), True: set()}
    for epoch in range(8):
        out = decoder(True, epoch=epoch, hflip_label_map=mirror)(batch_of(row))
        for clip, label in zip(out["clip"], out["label"], strict=True):
            labels[bool(crop_center(clip)[2])].add(int(label))
    assert labels == {False: {3}, True: {1}}


def test_draws_depend_on_seed_epoch_and_video_only(row):
    a = decoder(True, epoch=3)(batch_of(row))
    b = decoder(True, epoch=3)(batch_of(make_row(video_index=8), row))
    assert np.array_equal(a["clip"], b["clip"][3:])               # same video, same epoch: same clips
    c = decoder(True, epoch=4)(batch_of(row))
    assert not np.array_equal(a["start"], c["start"]) or not np.array_equal(a["clip"], c["clip"])


def test_eval_windows_cover_the_video_with_centre_crops(row):
    out = decoder(False)(batch_of(row))                            # n=30, T=4, stride 2: hop 8 → 3 windows
    assert list(out["start"]) == [0, 8, 16] and list(out["clip_index"]) == [0, 1, 2]
    for clip, start in zip(out["clip"], out["start"], strict=True):
        assert list(frame_index(clip)) == [start + 2 * i for i in range(5)]
        cy, cx, flipped = crop_center(clip)
        assert abs(cy - 31.5) < 1.5 and abs(cx - 39.5) < 1.5 and not flipped


def test_corrupt_rows_cost_their_rows_only(row, caplog):
    bad_crc = {**row, "video_id": "cls/bad", "crc32": row["crc32"] ^ 1}
    junk = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    bad_bytes = {**row, "video_id": "cls/junk", "video": junk, "crc32": zlib.crc32(junk)}
    with caplog.at_level(logging.WARNING, logger="dynamonet.data"):
        out = decoder(True)(batch_of(row, bad_crc, bad_bytes))
    assert list(out["status"]) == [STATUS_OK] * 3 + [STATUS_CORRUPT] * 6
    assert not out["clip"][3:].any() and out["clip"][:3].any()
    assert "cls/bad" in caplog.text and "crc32 mismatch" in caplog.text and "cls/junk" in caplog.text


def test_overreported_frame_count_is_clamped(row):
    liar = {**row, "num_frames": row["num_frames"] * 3}          # decord#373: never index past the end
    out = decoder(False)(batch_of(liar))
    assert set(out["status"]) == {STATUS_OK}
    assert frame_index(out["clip"][-1]).max() == row["num_frames"] - 1


def test_rows_stored_at_another_short_side_are_resized_while_decoding():
    odd = make_row(height=64, width=80, short_side=0)              # stored at 64 px, canonical is 128
    out = decoder(False, resize_short=40)(batch_of(odd))
    assert out["clip"].shape[1:] == (5, 32, 32, 3) and set(out["status"]) == {STATUS_OK}
    cy, cx, _ = crop_center(out["clip"][0])                        # centre of a 40x50 frame, in 64x80 units
    assert abs(cy - 31.5) < 2.5 and abs(cx - 39.5) < 2.5


def decoded_sizes(monkeypatch):
    """The (N, H, W) of every frame array the decoder crops from, recorded as it decodes."""
    from dynamonet.data import decode as decode_mod

    seen = []
    real_crop = decode_mod.crop_into
    monkeypatch.setattr(decode_mod, "crop_into", lambda out, frames, *a: (seen.append(frames.shape[:3]),
                                                                          real_crop(out, frames, *a)))
    return seen


@pytest.mark.parametrize("training", [True, False], ids=["train-5crop-flip", "test-centre"])
@pytest.mark.parametrize("resize_short, decoded", [(122, (122, 152)), (128, (128, 160))], ids=["122", "as-stored"])
def test_canonical_128_rows_are_resized_to_resize_short_before_the_crop(monkeypatch, training, resize_short,
                                                                       decoded):
    """Paper §4.3 on canonical shards (short side 128): frames resized to 122, then the 112 crops;
    with resize_short = the stored short side, decoded as stored."""
    r = make_row(num_frames=12, height=128, width=160, short_side=128)
    seen = decoded_sizes(monkeypatch)
    out = decoder(training, crop_size=112, resize_short=resize_short)(batch_of(r))
    assert set(out["status"]) == {STATUS_OK} and out["clip"].shape[1:] == (5, 112, 112, 3)
    assert seen and set(seen) == {(5, *decoded)}


@pytest.mark.parametrize("training", [True, False], ids=["train-5crop-flip", "test-centre"])
def test_crops_are_cut_from_frames_resized_to_resize_short(row, monkeypatch, training):
    """Stored 64x80 (the canonical size), resize_short 56, crop 48: every crop is a crop of the
    56x70 frame, by size (what decord returned) and by content (position-encoded pixels: the crop's
    centre and the source pixels per crop pixel, 64/56 = 80/70 = 8/7, not 1 as stored)."""
    seen = decoded_sizes(monkeypatch)
    out = decoder(training, crop_size=48, resize_short=56)(batch_of(row))
    assert set(out["status"]) == {STATUS_OK} and out["clip"].shape[1:] == (5, 48, 48, 3)
    assert seen and set(seen) == {(5, 56, 70)}
    scale = 8 / 7
    positions = set()
    for clip, pos, flip in zip(out["clip"], out["crop"], out["flip"], strict=True):
        oy, ox = crop_origin(56, 70, 48, int(pos))
        cy, cx, flipped = crop_center(clip)
        assert flipped == bool(flip)
        assert abs(cy - ((oy + 24) * scale - 0.5)) < 1.5 and abs(cx - ((ox + 24) * scale - 0.5)) < 1.5
        inner = clip[:, 8:40, 8:40].astype(float)                        # G = 2y + 2, R = 2x + 2 (source)
        rows, cols = inner[..., 1].mean(axis=(0, 2)), inner[..., 0].mean(axis=(0, 1))
        assert abs(np.polyfit(np.arange(32), rows, 1)[0] / 2 - scale) < 0.05        # source rows per crop row
        assert abs(abs(np.polyfit(np.arange(32), cols, 1)[0]) / 2 - scale) < 0.05  # source columns per column
        positions.add(int(pos))
    assert positions <= ({0, 1, 2, 3, 4} if training else {0})


@pytest.mark.parametrize("width", [48, 72])
def test_widths_decord_pads_are_read_stepwise(width):
    r = make_row(num_frames=12, height=48, width=width, short_side=48)
    out = decoder(False, resize_short=48, crop_size=40, clip_len=3,
                  frame_stride=1)(batch_of(r))
    assert set(out["status"]) == {STATUS_OK}
    assert list(frame_index(out["clip"][1])) == [3, 4, 5, 6]
    assert crop_center(out["clip"][0])[2] is False


def test_decoding_runs_torch_single_threaded_and_restores_the_setting(row, monkeypatch):
    import torch

    from dynamonet.data import decode as decode_mod

    seen = []
    real_crop = decode_mod.crop_into
    monkeypatch.setattr(decode_mod, "crop_into", lambda *a: (seen.append(torch.get_num_threads()), real_crop(*a)))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = decoder(training=True)(batch_of(row))
        assert seen and set(seen) == {1}                     # every crop/flip ran on one intra-op thread
        assert torch.get_num_threads() == 2                  # and the process's setting is back
        assert (out["status"] == STATUS_OK).all()
    finally:
        torch.set_num_threads(previous)
