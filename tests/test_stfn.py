"""STFN video-level fusion over clip sequences (seeds/stfn-summary.txt)."""

from __future__ import annotations

import pytest
import torch

from dynamonet.models import STFN


def _model() -> STFN:
    torch.manual_seed(0)
    return STFN(ar_dim=8, dmr_dim=6, num_classes=4, width=12, depth=2).eval()


def test_shapes_and_gradients() -> None:
    model = _model().train()
    ar, dmr = torch.randn(3, 5, 8), torch.randn(3, 5, 6)
    logits = model(ar, dmr)
    assert logits.shape == (3, 4)
    logits.sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_padding_with_mask_does_not_change_the_logits() -> None:
    model = _model()
    g = torch.Generator().manual_seed(1)
    ar, dmr = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 6, generator=g)
    want = model(ar, dmr)
    pad_ar = torch.cat([ar, torch.randn(1, 4, 8, generator=g)], dim=1)  # garbage in the padded clips
    pad_dmr = torch.cat([dmr, torch.randn(1, 4, 6, generator=g)], dim=1)
    mask = torch.tensor([[True, True, True, False, False, False, False]])
    torch.testing.assert_close(model(pad_ar, pad_dmr, mask), want, atol=1e-5, rtol=1e-5)


def test_variable_lengths_in_one_batch() -> None:
    model = _model()
    g = torch.Generator().manual_seed(2)
    ar, dmr = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 6, generator=g)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    both = model(ar, dmr, mask)
    torch.testing.assert_close(both[1:], model(ar[1:, :2], dmr[1:, :2]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[:1], model(ar[:1], dmr[:1]), atol=1e-5, rtol=1e-5)


def test_mismatched_inputs_raise() -> None:
    with pytest.raises(ValueError):
        _model()(torch.randn(2, 5, 8), torch.randn(2, 4, 6))
