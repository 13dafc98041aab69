"""Clip sampling in time (paper §4.3): which frames of a video form each clip.

A clip carries T+1 frames, ``frame_stride`` apart: the network sees the first T and predicts
frames 2..T+1 (paper §3.1), so a clip spans ``span = T * stride + 1`` source frames.

Training: K random windows per video per epoch, start uniform in ``[0, n - span]``.

Evaluation ("every non-overlapping clip", §4.3 Testing): window w starts at ``w * T * stride``.
The T *input* frames of consecutive windows never overlap; window w's extra target frame is
window w+1's first frame. A video of n >= span frames has ``1 + (n - span) // (T * stride)``
windows; they tile frames ``[0, W * T * stride]`` and leave fewer than ``T * stride`` frames at the
end unused. ``max_eval_clips = M > 0`` keeps M windows evenly spread over the W.

Short videos (n < span): one window whose indices wrap around (the video is looped), in training
and evaluation alike. Indices are always reduced modulo n, so they never exceed the decodable
frame count counted at ingest.

    frames  0 1 2 3 4 5 6 7 8 9 ...      T=4, stride=1, span=5
    eval    [0 1 2 3|4]                  window 0: inputs 0-3, target 4
                    [4 5 6 7|8]          window 1: inputs 4-7, target 8
"""

from __future__ import annotations

import numpy as np


def clip_span(clip_len: int, frame_stride: int = 1) -> int:
    """Source frames spanned by a clip of ``clip_len + 1`` frames ``frame_stride`` apart."""
    return clip_len * frame_stride + 1


def window_indices(starts: np.ndarray, num_frames: int, clip_len: int, frame_stride: int = 1) -> np.ndarray:
    """Frame indices ``(len(starts), T+1)`` of windows starting at ``starts``; looped modulo ``num_frames``."""
    offsets = np.arange(clip_len + 1, dtype=np.int64) * frame_stride
    return (np.asarray(starts, dtype=np.int64)[:, None] + offsets[None, :]) % max(1, num_frames)


def train_starts(num_frames: int, clip_len: int, frame_stride: int, clips_per_video: int,
                 rng: np.random.Generator) -> np.ndarray:
    """K uniformly random window starts ``(K,)`` (all 0 for a short video, which is looped)."""
    last = num_frames - clip_span(clip_len, frame_stride)
    if last <= 0:
        return np.zeros(clips_per_video, dtype=np.int64)
    return rng.integers(0, last + 1, size=clips_per_video, dtype=np.int64)


def num_eval_windows(num_frames: int, clip_len: int, frame_stride: int = 1, max_clips: int = 0) -> int:
    """Number of evaluation windows of a video of ``num_frames`` frames (>= 1)."""
    span, hop = clip_span(clip_len, frame_stride), clip_len * frame_stride
    count = 1 if num_frames < span else 1 + (num_frames - span) // hop
    return min(count, max_clips) if max_clips > 0 else count


def eval_starts(num_frames: int, clip_len: int, frame_stride: int = 1, max_clips: int = 0) -> np.ndarray:
    """Starts ``(W,)`` of the non-overlapping evaluation windows (evenly thinned to ``max_clips``)."""
    hop = clip_len * frame_stride
    full = num_eval_windows(num_frames, clip_len, frame_stride)
    keep = num_eval_windows(num_frames, clip_len, frame_stride, max_clips)
    if keep == full:
        chosen = np.arange(full, dtype=np.int64)
    elif keep == 1:
        chosen = np.array([(full - 1) // 2], dtype=np.int64)
    else:
        chosen = np.round(np.linspace(0, full - 1, keep)).astype(np.int64)
    return chosen * hop


def total_eval_windows(frame_counts: dict[int, int], clip_len: int, frame_stride: int = 1,
                       max_clips: int = 0) -> int:
    """Evaluation windows of a whole split from its ``{num_frames: videos}`` histogram."""
    return sum(n_videos * num_eval_windows(n, clip_len, frame_stride, max_clips) for n, n_videos in frame_counts.items())
