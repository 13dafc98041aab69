"""DynamoNet losses (paper §3.1 eq. 2, §3.2 eq. 3): Huber frame prediction + cross-entropy.

    L_total = α · L_FP + β · L_CE,   α = 0.1, β = 1.0 (paper §4.3),   δ = 0.01 on pixels in [0, 1].

Huber formulation (``reduction``):

* ``"frame"`` (default) — eq. 2 as written, on the norms of each frame's difference
  ``d = x̂_{t+1} − x_{t+1}`` over channels and pixels: ``½‖d‖₂²`` if ``‖d‖₁ < δ`` else
  ``δ·‖d‖₁ − ½δ²``; mean over the T predicted frames of a clip, then over clips. With δ = 0.01
  almost every real frame is in the linear branch, so the gradient is ``δ·sign(d)`` per pixel: a
  sum-over-pixels L1 loss whose size grows with the frame area. On the embedded synthetic task
  this trains the motion branch much harder than the pixel mean and gave higher accuracy
  (docs/model.md, "Frame-prediction loss").
* ``"pixel"`` — elementwise Huber (``½e²`` if ``|e| < δ`` else ``δ·(|e| − δ/2)``, i.e.
  ``F.huber_loss``), mean over channels, frames and pixels of each clip, then over clips: the
  resolution-independent reading, whose scale is ≈ δ·mean|e| (≈ 1e-4), so α must be far larger.

Masking: ``weight`` ``(B,)`` (1 = real row, 0 = padding/corrupt row, any non-negative value
allowed) gives a weighted mean over clips, ``Σ w_b·l_b / Σ w_b``. Unlabeled clips (label −1)
add nothing to the cross-entropy. If every weight is 0 the loss is an exact 0 that is still a
function of the model outputs, so ``backward()`` runs on every DDP rank.
This module holds no model code and imports no Ray.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["LossTerms", "classification_loss", "compute_losses", "frame_prediction_loss"]


class LossTerms(NamedTuple):
    """Scalar loss tensors; a term that does not apply in a mode is a zero tensor."""

    total: torch.Tensor
    fp: torch.Tensor
    ce: torch.Tensor


def _weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``Σ w·l / Σ w`` over the batch; exactly 0 (and graph-connected) when ``Σ w = 0``."""
    if weight is None:
        return per_sample.mean()
    if weight.shape != per_sample.shape:
        raise ValueError(f"weight: expected shape {tuple(per_sample.shape)}, got {tuple(weight.shape)}")
    w = weight.to(per_sample.dtype)
    masked = torch.where(w > 0, per_sample, torch.zeros_like(per_sample))  # keeps the value finite
    total = w.sum()
    return (masked * w).sum() / torch.where(total > 0, total, torch.ones_like(total))


def frame_prediction_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 0.01,
                          weight: torch.Tensor | None = None, reduction: str = "frame") -> torch.Tensor:
    """Huber loss between predicted and true frames (paper eq. 2).

    Args:
        pred: ``(B, C, T, H, W)`` predicted frames 2..T+1.
        target: ``(B, C, T, H, W)`` true frames 2..T+1, same scale as ``pred`` ([0, 1]).
        delta: Huber threshold δ (paper: 0.01).
        weight: optional ``(B,)`` clip weights.
        reduction: ``"frame"`` (eq. 2 on per-frame norms, mean over T) or ``"pixel"``
            (elementwise, mean over C·T·H·W); see the module docstring.

    Returns:
        Scalar: the per-clip loss, weighted mean over clips.
    """
    if pred.shape != target.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} does not match pred {tuple(pred.shape)}")
    if delta <= 0:
        raise ValueError(f"delta: must be > 0, got {delta}")
    if reduction == "frame":
        d = pred - target.to(pred.dtype)  # (B, C, T, H, W)
        l1 = d.abs().sum(dim=(1, 3, 4), dtype=torch.float32)  # (B, T) ‖d‖₁ per frame
        l2 = d.pow(2).sum(dim=(1, 3, 4), dtype=torch.float32)  # (B, T) ‖d‖₂²
        per_frame = torch.where(l1 < delta, 0.5 * l2, delta * l1 - 0.5 * delta * delta)  # (B, T)
        return _weighted_mean(per_frame.mean(dim=1), weight)
    if reduction != "pixel":
        raise ValueError(f"reduction: must be 'frame' or 'pixel', got {reduction!r}")
    if weight is None:
        return F.huber_loss(pred, target.to(pred.dtype), reduction="mean", delta=delta)
    per_elem = F.huber_loss(pred, target.to(pred.dtype), reduction="none", delta=delta)
    # per-clip sums, 1/N folded into the (B,) weights: no full-size division in the backward
    per_clip = per_elem.flatten(1).sum(dim=1) / per_elem[0].numel()  # (B,)
    return _weighted_mean(per_clip, weight)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over labelled clips.

    Args:
        logits: ``(B, K)``.
        labels: ``(B,)`` int64 class indices; −1 marks an unlabeled clip (no contribution).
        weight: optional ``(B,)`` clip weights.

    Returns:
        Scalar weighted mean over labelled clips (0 if none).
    """
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels: expected shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.long()
    per_sample = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")  # (B,)
    labelled = (labels >= 0).to(per_sample.dtype)
    w = labelled if weight is None else labelled * weight.to(per_sample.dtype)
    return _weighted_mean(per_sample, w)


def compute_losses(out: tuple, target: torch.Tensor, labels: torch.Tensor, *, alpha: float = 0.1, beta: float = 1.0,
                   delta: float = 0.01, weight: torch.Tensor | None = None,
                   fp_reduction: str = "frame") -> LossTerms:
    """``α·FP + β·CE`` for a :class:`~dynamonet.models.DynamoOutput` (paper eq. 3).

    Args:
        out: the model output ``(logits | None, pred | None, filters | None)``.
        target: ``(B, 3, T, H, W)`` frames 2..T+1 (``clip[:, :, 1:]`` of a T+1-frame clip).
        labels: ``(B,)`` class indices, −1 = unlabeled.
        alpha: weight of the frame-prediction term (0 for the ``no_fp`` ablation).
        beta: weight of the classification term.
        delta: Huber δ.
        weight: optional ``(B,)`` mask/weights of the rows (padding and corrupt rows = 0).
        fp_reduction: ``"frame"`` | ``"pixel"``, see :func:`frame_prediction_loss`.

    Returns:
        :class:`LossTerms` ``(total, fp, ce)``; a term without its output (``pred`` in
        ``backbone`` mode, ``logits`` in ``pretrain``) is a zero tensor.
    """
    logits, pred = out[0], out[1]
    ref = pred if pred is not None else logits
    if ref is None:
        raise ValueError("out: neither logits nor pred is present")
    zero = ref.new_zeros((), dtype=torch.float32)
    fp = frame_prediction_loss(pred, target, delta, weight, fp_reduction).float() if pred is not None else zero
    ce = classification_loss(logits, labels, weight) if logits is not None else zero
    return LossTerms(alpha * fp + beta * ce, fp, ce)
