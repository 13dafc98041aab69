"""PyAV transcoding to the canonical training format, and a small video writer.

The canonical format (DESIGN.md "Shards") exists for the sampler of paper §4.3: a training clip is
T+1 consecutive frames at a random position, so random access must be cheap.

    source video (any container/codec PyAV reads)
        │ decode (one thread: ingest runs one task per core)  → optional fps resampling
        │ swscale to yuv420p, short side `short_side` (even dims), area filter
        ▼
    H.264 in mp4, closed GOP of `gop` frames (≈ one clip), no B-frames, no scene-cut keyframes
        → a clip costs one seek to the keyframe before it, then consecutive frames (decode order
          == display order), and decoding 128-px frames is several times cheaper than 240-px ones.

Bad input raises :class:`VideoRejected` with a one-line reason (unreadable, no video stream,
no decodable frame, truncated); the ingest records it in ``rejected.jsonl`` and carries on.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

# Errors that mean "this input is bad", as opposed to a bug in this module.
INPUT_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, UnicodeDecodeError, StopIteration)


class VideoRejected(Exception):
    """An input video that cannot be used; ``str(e)`` is the reason recorded in rejected.jsonl."""


@dataclass(frozen=True)
class TranscodeSettings:
    """Parameters of the canonical format (recorded in ``manifest.json["transcode"]``)."""

    short_side: int = 128     # 0 = keep the source size (rounded down to even)
    fps: float = 0.0          # 0 = keep the source frame rate
    gop: int = 16             # keyframe interval in frames (≈ one clip)
    crf: int = 23             # x264 constant rate factor (lower = better quality, bigger shards)
    preset: str = "veryfast"  # x264 speed/size trade-off at ingest
    tune: str = "fastdecode"  # no CABAC/deblocking: cheaper decoding at training time
    threads: int = 1          # codec threads per video (ingest parallelises across videos)

    def describe(self) -> dict[str, object]:
        """The manifest's ``transcode`` entry."""
        return {"short_side": self.short_side, "scaler": "area", "codec": "h264", "pix_fmt": "yuv420p", "container": "mp4",
                "gop": self.gop, "bframes": 0, "fps": self.fps, "crf": self.crf, "preset": self.preset,
                "tune": self.tune}


@dataclass
class Transcoded:
    """A canonical video and the metadata stored beside it in the shard row."""

    data: bytes
    num_frames: int
    fps: float
    height: int
    width: int


def canonical_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``short_side`` and both dimensions even
    (yuv420p needs them even); ``short_side <= 0`` keeps the size, rounded down to even."""
    if short_side <= 0:
        return max(2, height // 2 * 2), max(2, width // 2 * 2)
    if height <= width:
        return short_side // 2 * 2, max(2, round(width * short_side / height / 2) * 2)
    return max(2, round(height * short_side / width / 2) * 2), short_side // 2 * 2


def _x264_options(gop: int, crf: int, preset: str, tune: str, threads: int) -> dict[str, str]:
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0"
    opts = {"crf": str(crf), "preset": preset, "x264-params": params, "threads": str(threads)}
    if tune:
        opts["tune"] = tune
    return opts


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class _Writer:
    """Encode yuv420p/rgb frames to an in-memory container; the stream opens on the first frame."""

    def __init__(self, fps: float, codec: str, container_format: str, options: dict[str, str],
                 gop: int, bit_rate: int = 0) -> None:
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format=container_format)
        self.fps, self.codec, self.options, self.gop, self.bit_rate = fps, codec, options, gop, bit_rate
        self.stream: av.VideoStream | None = None
        self.frames = 0

    def _open(self, height: int, width: int) -> None:
        self.stream = self.container.add_stream(self.codec, rate=_fps_fraction(self.fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.gop_size = self.gop
        if self.bit_rate:
            self.stream.bit_rate = self.bit_rate
        if self.codec != "libx264":
            self.stream.codec_context.max_b_frames = 0
        self.stream.options = self.options

    def write(self, frame: av.VideoFrame) -> None:
        if self.stream is None:
            self._open(frame.height, frame.width)
        frame.pts = self.frames
        frame.time_base = Fraction(1) / _fps_fraction(self.fps)
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> bytes:
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buf.getvalue()


def encode_video(frames: Iterable[np.ndarray], fps: float = 25.0, *, codec: str = "libx264",
                 container_format: str = "mp4", gop: int = 16, crf: int = 18, preset: str = "veryfast",
                 tune: str = "", bit_rate: int = 0) -> bytes:
    """Encode RGB uint8 frames ``(H, W, 3)`` (even H, W) to a video file in memory.

    ``codec="libx264"`` writes H.264 without B-frames; ``codec="mpeg4"`` with
    ``container_format="avi"`` writes MPEG-4 part 2 AVI files like UCF101's (``bit_rate`` in bit/s).
    """
    options = _x264_options(gop, crf, preset, tune, threads=1) if codec == "libx264" else {}
    writer = _Writer(fps, codec, container_format, options, gop, bit_rate)
    try:
        for rgb in frames:
            writer.write(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
    finally:
        data = writer.close()
    return data


def _resample(frames: Iterator[av.VideoFrame], src_fps: float, dst_fps: float) -> Iterator[av.VideoFrame]:
    """Drop or repeat frames so that the output has ``dst_fps``: output frame j shows the source
    frame covering time ``(j + 0.5) / dst_fps`` (index-based: robust to bad timestamps)."""
    emitted = 0
    for i, frame in enumerate(frames):
        end = (i + 1) / src_fps               # source frame i covers [i, i+1) / src_fps
        while (emitted + 0.5) / dst_fps < end:
            yield frame
            emitted += 1


def _decoded(container: av.container.InputContainer, stream: av.VideoStream, stats: dict[str, int]
             ) -> Iterator[av.VideoFrame]:
    try:
        for frame in container.decode(stream):
            stats["decoded"] += 1
            yield frame
    except INPUT_ERRORS as e:
        stats["error"] = 1
        stats["message"] = f"{type(e).__name__}: {e}"  # type: ignore[assignment]


def _open_input(src: str | bytes | BinaryIO) -> av.container.InputContainer:
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise VideoRejected("zero-length file")
        src = io.BytesIO(src)
    elif isinstance(src, str) and os.path.isfile(src) and os.path.getsize(src) == 0:
        raise VideoRejected("zero-length file")
    try:
        return av.open(src, mode="r", metadata_errors="ignore")
    except INPUT_ERRORS as e:
        raise VideoRejected(f"unreadable: {type(e).__name__}: {e}") from None


def transcode(src: str | bytes | BinaryIO, settings: TranscodeSettings = TranscodeSettings()) -> Transcoded:
    """Transcode one video to the canonical format.

    Args:
        src: a local path, the file's bytes, or a readable binary file object.
        settings: the canonical format.

    Raises:
        VideoRejected: the input has no video stream, no decodable frame, or is truncated
            (a decode error, or fewer frames than its container reports).
    """
    container = _open_input(src)
    with container:
        if not container.streams.video:
            raise VideoRejected("no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = settings.threads
        src_fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        reported = int(stream.frames or 0)
        out_fps = settings.fps or src_fps
        stats: dict[str, int] = {"decoded": 0, "error": 0}
        frames = _decoded(container, stream, stats)
        if settings.fps:
            frames = _resample(frames, src_fps, settings.fps)
        writer = _Writer(out_fps, "libx264", "mp4", _x264_options(settings.gop, settings.crf, settings.preset,
                                                                  settings.tune, settings.threads), settings.gop)
        # One scaler for the whole video: `frame.reformat` builds a new swscale context (filter
        # tables included) for every frame, which cost about a quarter of the ingest's CPU.
        scaler = VideoReformatter()
        try:
            for frame in frames:
                if writer.stream is None:
                    height, width = canonical_size(frame.height, frame.width, settings.short_side)
                writer.write(scaler.reformat(frame, width=width, height=height, format="yuv420p",
                                             interpolation=Interpolation.AREA))
        finally:
            data = writer.close()
    _check_complete(stats, reported, writer.frames)
    return Transcoded(data=data, num_frames=writer.frames, fps=float(out_fps), height=height, width=width)


def _check_complete(stats: dict[str, int], reported: int, written: int) -> None:
    decoded = stats["decoded"]
    if written == 0 or decoded == 0:
        why = f" ({stats['message']})" if stats["error"] else ""
        raise VideoRejected(f"no decodable frame{why}")
    # A container that announces N frames but yields clearly fewer is truncated or corrupt.
    short = reported > 0 and decoded < reported - max(2, reported // 50)
    if stats["error"] and (reported == 0 or decoded < reported - 1):
        raise VideoRejected(f"truncated or corrupt: decode error after {decoded} of {reported or '?'} frames "
                            f"({stats['message']})")
    if short:
        raise VideoRejected(f"truncated: decoded {decoded} of {reported} frames")
