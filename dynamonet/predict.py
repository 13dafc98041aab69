"""Predict the action of one video file, and draw its frame predictions (paper §4.3, Fig. 3).

    video file (local or s3://) ──► the ingest transcode (canonical short side of the checkpoint's dataset)
               ──► the evaluation ClipDecoder (every non-overlapping clip, centre crop)
               ──► DynamoNet ──► mean of the clip softmax scores ──► top-k classes

The same code path as ``evaluate.py`` on shards, so a prediction here is what evaluation scores.
The figure shows, for the first clip, ground-truth frames 2..T+1, the frames predicted by the
dynamic motion filters from frames 1..T, and their absolute difference (paper Fig. 3).
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dynamonet import storage
from dynamonet.data.decode import STATUS_OK, ClipDecoder
from dynamonet.data.encode import TranscodeSettings, VideoRejected, transcode
from dynamonet.eval import build_eval_model, load_for_eval
from dynamonet.train.engine import prepare_batch


def read_video_source(path: str, endpoint: str = "") -> str | bytes:
    """A local video path as is, or the bytes of an ``s3://`` object (checked: one-line errors)."""
    if not storage.is_remote(path):
        if not os.path.isfile(path):
            raise ValueError(f"VIDEO: no such file: {path}")
        return path
    fs, p = storage.resolve_filesystem(path, endpoint)
    try:
        return storage.read_bytes(fs, p)
    except FileNotFoundError:
        raise ValueError(f"VIDEO: no such object: {path}") from None


def decode_video_clips(path: str, cfg: Any, transcode_info: dict[str, Any], endpoint: str = "") -> np.ndarray:
    """Every evaluation clip of a video file (local or ``s3://``): uint8 (N, T+1, S, S, 3)."""
    short = int(transcode_info.get("short_side") or cfg.data.resize_short)
    settings = TranscodeSettings(short_side=short, fps=float(transcode_info.get("fps") or 0.0),
                                 gop=int(transcode_info.get("gop") or cfg.data.clip_len))
    src = read_video_source(path, endpoint)
    try:
        tc = transcode(src, settings)
    except VideoRejected as e:
        raise ValueError(f"VIDEO: {path}: {e}") from None
    decoder = ClipDecoder(clip_len=cfg.data.clip_len, frame_stride=cfg.data.frame_stride, crop_size=cfg.data.crop_size,
                          resize_short=cfg.data.resize_short, training=False)
    row = {"video_id": np.array([os.path.basename(path)], dtype=object), "video_index": np.array([0]),
           "label": np.array([-1]), "video": np.array([tc.data], dtype=object),
           "num_frames": np.array([tc.num_frames]), "height": np.array([tc.height]),
           "width": np.array([tc.width]), "crc32": np.array([zlib.crc32(tc.data)])}
    out = decoder(row)
    if (out["status"] != STATUS_OK).any():
        raise ValueError(f"VIDEO: {path}: could not be decoded after transcoding")
    return out["clip"]


@torch.no_grad()
def predict_video(path: str, checkpoint: str, *, topk: int = 5, device: str = "cpu",
                  save_figure: str = "", endpoint: str = "") -> dict[str, Any]:
    """Top-k classes of a video (mean of its clip scores); optionally save the Fig. 3 style figure.

    ``endpoint`` is the S3 endpoint of an ``s3://`` checkpoint ("" = ``AWS_ENDPOINT_URL`` or AWS).
    """
    cfg, state = load_for_eval(checkpoint, endpoint=endpoint)
    clips = decode_video_clips(path, cfg, state.get("transcode") or {}, endpoint)
    dev = torch.device(device)
    model = build_eval_model(cfg, state, dev)
    n = len(clips)
    batch = {"clip": torch.from_numpy(clips), "label": torch.full((n,), -1), "status": torch.zeros(n, dtype=torch.uint8),
             "video_index": torch.zeros(n, dtype=torch.long)}
    b = prepare_batch(batch, dev)
    out = model(b.x)
    result: dict[str, Any] = {"video": path, "clips": n}
    if out.logits is not None:
        names = state["class_names"]
        probs = F.softmax(out.logits.float(), dim=1).mean(0)  # (K,) video-level score, paper §4.3
        top = probs.topk(min(topk, len(probs)))
        result["top"] = [(names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
    if out.pred is not None:
        result["fp_mae"] = float((out.pred.clamp(0, 1) - b.target).abs().mean())
        result["copy_last_mae"] = float((b.x - b.target).abs().mean())
        if save_figure:
            save_prediction_figure(b.target[0].cpu(), out.pred[0].clamp(0, 1).cpu(), save_figure, endpoint)
            result["figure"] = save_figure
    return result


def save_prediction_figure(target: torch.Tensor, pred: torch.Tensor, path: str, endpoint: str = "",
                           max_frames: int = 8) -> None:
    """Rows: ground truth, prediction, |difference|; columns: frames 2..T+1. Inputs (3, T, H, W) in
    [0, 1]. ``path`` is a local PNG or an ``s3://`` URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = min(max_frames, target.shape[1])
    cols = np.linspace(0, target.shape[1] - 1, t).round().astype(int)
    diff = (target - pred).abs()
    diff = diff / diff.max().clamp(min=1e-6)  # stretched so small errors stay visible
    rows = [("ground truth", target), ("predicted", pred), ("|difference|", diff)]
    fig, axes = plt.subplots(3, t, figsize=(1.6 * t, 5.2), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for c, ti in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(frames[:, ti].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {ti + 2}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue(), endpoint)
