"""Clip decoder: video rows (encoded bytes) → augmented uint8 clip rows (paper §4.3).

    shard rows {video bytes, num_frames, crc32, ...}        (one per video)
        │ crc32 check                       mismatch → status 2, decord never called
        │ decord VideoReader(BytesIO(bytes), num_threads=1[, width, height: short side resize_short,
        │                    unless stored at it])
        │ windows (sampling.py) → get_batch(contiguous indices): one seek, consecutive frames
        │ crop + flip into the preallocated output (transforms.py)
        ▼
    clip rows {clip uint8 (T+1,S,S,3), label, video_id, video_index, clip_index, status, start, crop, flip}

Every frame is resized to short side ``resize_short`` (paper: 122) before the crop, in training
and evaluation, whatever the shards' stored short side (canonical shards: 128); a row stored at
``resize_short`` is decoded as stored (see :func:`dynamonet.data.transforms.decode_size`).

Each video yields a fixed number of rows — K in training, its evaluation window count otherwise —
whatever happens, so epoch sizes are known in advance. A row that cannot be decoded yields the
same number of rows with ``status = 2`` and zero clips, and one warning line.

decord guards:
  * decord#373: ``get_batch`` can loop forever when the container over-reports the frame count.
    Shard rows carry ``num_frames`` counted by actually decoding at ingest, and the crc32 of the
    bytes; indices are clamped to ``min(num_frames, len(reader)) - 1``, and bytes whose crc32 does
    not match never reach decord.
  * decord#336: for frame widths 16, 24, 48 and 72 decord returns row-padded RGB buffers and
    ``get_batch`` fails ("The size must exactly match"). For those widths the clip is read with
    one seek and ``next()`` per frame, and the padding is sliced off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zlib
from collections.abc import Iterator

import decord
import numpy as np
import torch

from dynamonet.data.sampling import eval_starts, num_eval_windows, train_starts, window_indices
from dynamonet.data.transforms import CENTER, crop_into, decode_size, random_crop_params

logger = logging.getLogger("dynamonet.data")

STATUS_OK, STATUS_PADDING, STATUS_CORRUPT = 0, 1, 2
DECORD_PADDED_WIDTHS = frozenset({16, 24, 48, 72})
INPUT_COLUMNS = ("video_id", "video_index", "label", "video", "num_frames", "height", "width", "crc32")


def open_reader(data: bytes, size: tuple[int, int] | None = None, num_threads: int = 1) -> decord.VideoReader:
    """A decord reader over in-memory bytes, resizing to ``size = (height, width)`` if given."""
    height, width = size if size is not None else (-1, -1)
    return decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height,
                              num_threads=num_threads)


def _read_stepwise(reader: decord.VideoReader, indices: np.ndarray) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` via seek + next() (decord#336 widths); padding sliced off."""
    frames = None
    pos = -1
    for i, index in enumerate(indices.tolist()):
        if index < pos or pos < 0:
            reader.seek_accurate(index)
        elif index > pos:
            reader.skip_frames(index - pos)
        frame = reader.next().asnumpy()                             # (H, W, c), rows padded
        pos = index + 1
        height, width = frame.shape[:2]
        if frames is None:
            frames = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        frames[i] = frame.reshape(height, -1)[:, : width * 3].reshape(height, width, 3)
    return frames


def read_frames(reader: decord.VideoReader, indices: np.ndarray, width: int) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` uint8 at ``indices``: one ``get_batch`` (one seek for a contiguous
    window), or the step-wise path for the widths decord#336 mishandles."""
    if width in DECORD_PADDED_WIDTHS:
        return _read_stepwise(reader, indices)
    return reader.get_batch(indices.tolist()).asnumpy()


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run the enclosed torch ops (the flips of :func:`crop_into`) on one intra-op thread, and
    restore the process's setting after. A decoder is single-threaded by design; with a larger
    OpenMP pool each small parallel region costs more CPU (helper threads spinning between clips)
    than it saves: measured ≈ 20 ms instead of ≈ 9 ms of CPU per clip with 2 threads."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


class ClipDecoder:
    """``map_batches`` callable turning shard rows into clip rows (no Ray import here).

    Args:
        clip_len: T; each clip carries T+1 frames.
        frame_stride: temporal stride between the frames of a clip.
        crop_size: S, the side of the square crop.
        resize_short: short side the frames are resized to before the crop (paper: 122), in
            training and evaluation; rows stored at this short side are decoded as stored.
        training: K random windows, random corner/centre crop and flip; else every
            non-overlapping window, centre crop.
        clips_per_video: K (training).
        max_eval_clips: cap on evaluation windows per video (0 = all).
        seed, epoch: training draw k of video v comes from ``(seed, epoch, v, k)`` only (see
            :meth:`draws`), whichever actor or batch decodes the row.
        hflip: random horizontal flips in training (off for direction-dependent labels).
        hflip_label_map: class of the mirrored clip for each class (flipping "move right" makes
            "move left"); a flipped clip gets ``hflip_label_map[label]``. None: labels unchanged.
        num_threads: decord decoding threads per reader.
    """

    def __init__(self, *, clip_len: int, frame_stride: int, crop_size: int, resize_short: int,
                 training: bool, clips_per_video: int = 1, max_eval_clips: int = 0,
                 seed: int = 0, epoch: int = 0, num_threads: int = 1, hflip: bool = True,
                 hflip_label_map: list[int] | None = None) -> None:
        self.clip_len, self.frame_stride, self.crop_size = clip_len, frame_stride, crop_size
        self.resize_short = resize_short
        self.training, self.clips_per_video, self.max_eval_clips = training, clips_per_video, max_eval_clips
        self.seed, self.epoch, self.num_threads, self.hflip = seed, epoch, num_threads, hflip
        self.flip_labels = np.asarray(hflip_label_map, dtype=np.int64) if hflip_label_map is not None else None

    def rows_for(self, num_frames: int) -> int:
        """Clip rows a video of ``num_frames`` frames yields."""
        if self.training:
            return self.clips_per_video
        return num_eval_windows(num_frames, self.clip_len, self.frame_stride, self.max_eval_clips)

    def draws(self, video_index: int, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window starts ``(R,)``, crop positions ``(R,)`` and flips ``(R,)`` of a video's R rows.

        Training draw k of video v comes from its own generator seeded with
        ``(seed, epoch, v, k)``: it depends on nothing else (not on K, the batch, the decoder, or
        how many times Ray executed the dataset), so an interrupted and resumed run draws exactly
        what an uninterrupted one draws in the same epoch. Evaluation has no randomness: every
        non-overlapping window, centre crop, no flip.
        """
        if not self.training:
            starts = eval_starts(num_frames, self.clip_len, self.frame_stride, self.max_eval_clips)
            return starts, np.full(len(starts), CENTER), np.zeros(len(starts), dtype=bool)
        k = self.clips_per_video
        starts, positions, flips = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64), np.empty(k, dtype=bool)
        for i in range(k):
            rng = np.random.default_rng([self.seed, self.epoch, video_index, i])
            starts[i] = train_starts(num_frames, self.clip_len, self.frame_stride, 1, rng)[0]
            (positions[i],), (flips[i],) = random_crop_params(rng, 1)
        return starts, positions, flips & self.hflip

    def _decode_video(self, row: dict, out: np.ndarray, starts: np.ndarray, positions: np.ndarray,
                      flips: np.ndarray) -> None:
        data, num_frames = row["video"], int(row["num_frames"])
        if num_frames <= 0:
            raise ValueError(f"num_frames is {num_frames}")
        if zlib.crc32(data) != int(row["crc32"]):
            raise ValueError("crc32 mismatch (bytes damaged in storage or transit)")
        size = decode_size(int(row["height"]), int(row["width"]), self.resize_short, self.crop_size)
        reader = open_reader(data, size, self.num_threads)
        last = min(num_frames, len(reader)) - 1                     # decord#373 guard
        width = size[1] if size is not None else int(row["width"])
        windows = np.minimum(window_indices(starts, num_frames, self.clip_len, self.frame_stride), last)
        for k in range(len(starts)):
            crop_into(out[k], read_frames(reader, windows[k], width), int(positions[k]), bool(flips[k]))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode a batch of shard rows (numpy batch format) into clip rows."""
        counts = [self.rows_for(int(n)) for n in batch["num_frames"]]
        total, s, t1 = sum(counts), self.crop_size, self.clip_len + 1
        out = {"clip": np.zeros((total, t1, s, s, 3), dtype=np.uint8),
               "label": np.empty(total, dtype=np.int64), "video_id": np.empty(total, dtype=object),
               "video_index": np.empty(total, dtype=np.int64), "clip_index": np.empty(total, dtype=np.int32),
               "status": np.zeros(total, dtype=np.uint8), "start": np.empty(total, dtype=np.int32),
               "crop": np.empty(total, dtype=np.uint8), "flip": np.empty(total, dtype=bool)}
        with single_threaded_torch():
            self._decode_rows(batch, counts, out)
        return out

    def _decode_rows(self, batch: dict[str, np.ndarray], counts: list[int], out: dict[str, np.ndarray]) -> None:
        j = 0
        for i, count in enumerate(counts):
            row = {k: batch[k][i] for k in INPUT_COLUMNS}
            starts, positions, flips = self.draws(int(row["video_index"]), int(row["num_frames"]))
            sl = slice(j, j + count)
            try:
                self._decode_video(row, out["clip"][sl], starts, positions, flips)
            except Exception as e:  # any failure on untrusted bytes costs this row only
                out["clip"][sl] = 0
                out["status"][sl] = STATUS_CORRUPT
                logger.warning("corrupt video %s (video_index %d): %s: %s; %d clip rows marked status=2",
                               row["video_id"], int(row["video_index"]), type(e).__name__, e, count)
            out["label"][sl], out["video_id"][sl] = int(row["label"]), str(row["video_id"])
            if self.flip_labels is not None and int(row["label"]) >= 0:  # a mirrored clip shows the mirror class
                out["label"][sl] = np.where(flips, self.flip_labels[int(row["label"])], int(row["label"]))
            out["video_index"][sl], out["clip_index"][sl] = int(row["video_index"]), np.arange(count)
            out["start"][sl], out["crop"][sl], out["flip"][sl] = starts, positions, flips
            j += count
