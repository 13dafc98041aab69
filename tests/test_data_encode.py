"""PyAV transcode to the canonical format, and rejection of bad inputs."""

from __future__ import annotations

import io

import av
import decord
import numpy as np
import pytest
from helpers import noise_frames, write_audio_only, write_bad_files

from dynamonet.data.encode import TranscodeSettings, VideoRejected, canonical_size, encode_video, transcode


@pytest.fixture(scope="module")
def ucf_like_avi():
    """320x240 MPEG-4 part 2 AVI with a long GOP, like UCF101's files."""
    return encode_video(noise_frames(40, 240, 320), 25, codec="mpeg4", container_format="avi", gop=250,
                        bit_rate=1_000_000)


def test_canonical_format_short_side_gop_no_bframes(ucf_like_avi):
    t = transcode(ucf_like_avi, TranscodeSettings(short_side=128, gop=8))
    assert (t.height, t.width, t.num_frames, t.fps) == (128, 170, 40, 25.0)
    with av.open(io.BytesIO(t.data)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.format.name == "yuv420p"
        packets = [p for p in c.demux(s) if p.size]
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keyframes == list(range(0, 40, 8))
    assert all(p.pts == p.dts for p in packets)                   # decode order == display order
    assert len(decord.VideoReader(io.BytesIO(t.data))) == t.num_frames


def test_fps_resampling_and_sizes(ucf_like_avi):
    assert transcode(ucf_like_avi, TranscodeSettings(short_side=64, fps=12.5)).num_frames == 20
    assert transcode(ucf_like_avi, TranscodeSettings(short_side=64, fps=50)).num_frames == 80
    assert canonical_size(240, 320, 128) == (128, 170) and canonical_size(320, 240, 128) == (170, 128)
    assert canonical_size(101, 99, 0) == (100, 98)


def test_bad_inputs_are_rejected_with_a_reason(tmp_path, ucf_like_avi):
    expected = write_bad_files(str(tmp_path), ucf_like_avi)
    for name, reason in expected.items():
        with pytest.raises(VideoRejected, match=reason):
            transcode(str(tmp_path / name))
    with pytest.raises(VideoRejected, match="no video stream"):
        transcode(write_audio_only(str(tmp_path / "a.avi")))


def test_encode_video_roundtrip_mp4():
    frames = noise_frames(6, 32, 64)
    vr = decord.VideoReader(io.BytesIO(encode_video(frames, crf=0)))
    assert len(vr) == 6 and np.abs(vr[2].asnumpy().astype(int) - frames[2]).mean() < 6   # yuv420p chroma subsampling
