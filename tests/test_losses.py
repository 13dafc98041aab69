"""Losses against hand-computed values (paper eq. 2 and 3), masks and unlabeled clips."""

from __future__ import annotations

import math

import pytest
import torch

from dynamonet.losses import LossTerms, classification_loss, compute_losses, frame_prediction_loss
from dynamonet.models import DynamoOutput


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips of 4 values each: clip 0 differs by 0.005 (quadratic branch), clip 1 by 0.03 (linear)."""
    target = torch.full((2, 1, 1, 2, 2), 0.5)
    pred = target.clone()
    pred[0] += 0.005
    pred[1] -= 0.03
    return pred, target


QUAD = 0.5 * 0.005**2  # 1.25e-5
LIN = 0.01 * (0.03 - 0.5 * 0.01)  # 2.5e-4


def test_huber_pixel_hand_computed() -> None:
    pred, target = _pair()
    assert frame_prediction_loss(pred, target, reduction="pixel").item() == pytest.approx((QUAD + LIN) / 2, rel=1e-5)
    # mixed within one clip: mean over its elements
    p = target.clone()
    p[0, ..., 0, 0] += 0.005
    p[0, ..., 1, 1] += 0.03
    assert frame_prediction_loss(p[:1], target[:1], reduction="pixel").item() == pytest.approx((QUAD + LIN) / 4,
                                                                                             rel=1e-5)


def test_huber_frame_norms_hand_computed() -> None:
    """Eq. 2 on per-frame norms: ½‖d‖₂² when ‖d‖₁ < δ, else δ‖d‖₁ − ½δ²; mean over frames, then clips."""
    target = torch.full((2, 1, 2, 2, 2), 0.5)  # 2 clips, 2 frames of 2×2 pixels
    pred = target.clone()
    pred[0, :, 0] += 0.001  # ‖d‖₁ = 0.004 < δ: quadratic, ½·4·1e-6
    pred[0, :, 1] -= 0.03  # ‖d‖₁ = 0.12: linear, 0.01·0.12 − ½·1e-4
    pred[1, :, :, 0, 0] += 0.02  # one pixel per frame: ‖d‖₁ = 0.02, linear in both frames
    quad, lin, one = 2e-6, 0.01 * 0.12 - 0.5e-4, 0.01 * 0.02 - 0.5e-4
    clip0, clip1 = (quad + lin) / 2, one
    assert frame_prediction_loss(pred, target).item() == pytest.approx((clip0 + clip1) / 2, rel=1e-5)
    assert frame_prediction_loss(pred, target, weight=torch.tensor([3.0, 1.0])).item() == pytest.approx(
        (3 * clip0 + clip1) / 4, rel=1e-5)
    # scale: linear frames give the gradient δ·sign(d) per pixel, divided by B·T
    pred.requires_grad_()
    frame_prediction_loss(pred, target).backward()
    assert pred.grad[1, 0, 0, 0, 0].item() == pytest.approx(0.01 / 4, rel=1e-5)
    assert pred.grad[0, 0, 0, 0, 0].item() == pytest.approx(0.001 / 4, rel=1e-4)  # quadratic: d / (B·T)
    with pytest.raises(ValueError, match="reduction"):
        frame_prediction_loss(pred, target, reduction="clip")


def test_huber_weighted_and_all_masked() -> None:
    pred, target = _pair()
    px = {"reduction": "pixel"}
    assert frame_prediction_loss(pred, target, weight=torch.tensor([1.0, 0.0]), **px).item() == pytest.approx(
        QUAD, rel=1e-5)
    assert frame_prediction_loss(pred, target, weight=torch.tensor([1.0, 3.0]), **px).item() == pytest.approx(
        (QUAD + 3 * LIN) / 4, rel=1e-5)
    pred.requires_grad_()
    for reduction in ("pixel", "frame"):
        pred.grad = None
        zero = frame_prediction_loss(pred, target, weight=torch.zeros(2), reduction=reduction)
        assert zero.item() == 0.0 and zero.requires_grad
        zero.backward()
        assert torch.count_nonzero(pred.grad) == 0


def test_cross_entropy_hand_computed_and_unlabeled() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    labels = torch.tensor([0, 0, -1])  # the third clip is unlabeled
    want = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert classification_loss(logits, labels, weight=torch.tensor([0.0, 1.0, 1.0])).item() == pytest.approx(
        math.log(4.0 / 3.0), rel=1e-6)
    none = classification_loss(logits.requires_grad_(), torch.full((3,), -1))
    assert none.item() == 0.0 and none.requires_grad


def test_compute_losses_joint_total() -> None:
    pred, target = _pair()
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    terms = compute_losses(DynamoOutput(logits, pred, None), target, torch.tensor([0, 0]), alpha=0.1, beta=1.0,
                           fp_reduction="pixel")
    assert isinstance(terms, LossTerms)
    fp, ce = (QUAD + LIN) / 2, (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert terms.fp.item() == pytest.approx(fp, rel=1e-5)
    assert terms.ce.item() == pytest.approx(ce, rel=1e-6)
    assert terms.total.item() == pytest.approx(0.1 * fp + ce, rel=1e-6)
    masked = compute_losses(DynamoOutput(logits, pred, None), target, torch.tensor([0, 0]),
                            weight=torch.tensor([0.0, 1.0]), fp_reduction="pixel")
    assert masked.total.item() == pytest.approx(0.1 * LIN + math.log(4.0 / 3.0), rel=1e-5)


def test_compute_losses_modes_and_all_zero_weights() -> None:
    pred, target = _pair()
    logits = torch.zeros(2, 3, requires_grad=True)
    pre = compute_losses(DynamoOutput(None, pred, None), target, torch.tensor([0, 1]), fp_reduction="pixel")
    assert pre.ce.item() == 0.0 and pre.total.item() == pytest.approx(0.1 * (QUAD + LIN) / 2, rel=1e-5)
    # default: eq. 2 on frame norms (clip 0: ‖d‖₁ = 0.02, clip 1: 0.12, both linear)
    frame = compute_losses(DynamoOutput(None, pred, None), target, torch.tensor([0, 1]))
    want = ((0.01 * 0.02 - 0.5e-4) + (0.01 * 0.12 - 0.5e-4)) / 2
    assert frame.total.item() == pytest.approx(0.1 * want, rel=1e-5)
    base = compute_losses(DynamoOutput(logits, None, None), target, torch.tensor([0, 1]))
    assert base.fp.item() == 0.0 and base.total.item() == pytest.approx(math.log(3.0), rel=1e-6)
    pred.requires_grad_()
    dead = compute_losses(DynamoOutput(logits, pred, None), target, torch.tensor([0, 1]), weight=torch.zeros(2))
    assert dead.total.item() == 0.0 and dead.total.requires_grad
    dead.total.backward()  # still connected, as DDP needs on every rank
    assert pred.grad is not None and logits.grad is not None


def test_shape_mismatch_raises() -> None:
    pred, target = _pair()
    with pytest.raises(ValueError, match="target"):
        frame_prediction_loss(pred, target[:, :, :, :1])
    with pytest.raises(ValueError, match="labels"):
        classification_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        frame_prediction_loss(pred, target, weight=torch.ones(3))
