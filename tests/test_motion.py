"""Dynamic filtering op and filter generator (paper §3.1): against a naive reference written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamonet.models.motion import FilterGenerator, apply_dynamic_filters, apply_dynamic_filters_reference


def naive_filter(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """out[b,c,t,y,x] = Σ_ij F[b,t,i,j] · frame[b,c,t,y+i−r,x+j−r], r = (s−1)//2, zeros outside: plain loops."""
    B, C, T, H, W = frames.shape
    s = filters.shape[-1]
    r = (s - 1) // 2
    padded = F.pad(frames, (r, s - 1 - r, r, s - 1 - r))  # zero padding of H and W (even s: one more after)
    out = torch.zeros_like(frames)
    for b in range(B):
        for t in range(T):
            for i in range(s):
                for j in range(s):
                    out[b, :, t] = out[b, :, t] + filters[b, t, i, j] * padded[b, :, t, i : i + H, j : j + W]
    return out


CASES = [(2, 3, 3, 9, 11, 5), (1, 2, 2, 7, 6, 3), (2, 3, 2, 13, 8, 7), (2, 3, 4, 32, 32, 5), (1, 1, 1, 1, 1, 3),
         (2, 3, 3, 9, 11, 4), (1, 2, 2, 7, 6, 6), (1, 1, 1, 2, 3, 4)]   # even s (§3.1 tried 3…7)


@pytest.mark.parametrize(("B", "C", "T", "H", "W", "s"), CASES)
def test_forward_matches_naive(B: int, C: int, T: int, H: int, W: int, s: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, C, T, H, W, generator=g)
    f = torch.rand(B, T, s, s, generator=g).softmax(-1)
    torch.testing.assert_close(apply_dynamic_filters(x, f), naive_filter(x, f), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("B", "C", "T", "H", "W", "s"), CASES)
def test_gradients_match_naive(B: int, C: int, T: int, H: int, W: int, s: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, C, T, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.rand(B, T, s, s, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.rand(B, C, T, H, W, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(apply_dynamic_filters(x, f), (x, f), up)
    want = torch.autograd.grad(naive_filter(x, f), (x, f), up)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_float32_gradients_and_filters_only() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 4, 16, 20, generator=g)
    f = torch.rand(2, 4, 5, 5, generator=g).requires_grad_()
    got = torch.autograd.grad(apply_dynamic_filters(x, f).square().sum(), f)[0]
    want = torch.autograd.grad(naive_filter(x, f).square().sum(), f)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("s", [3, 4])
def test_gradcheck(s: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.rand(1, 2, s, s, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(apply_dynamic_filters, (x, f))


def test_matches_grouped_conv_and_accepts_strided_frames() -> None:
    g = torch.Generator().manual_seed(4)
    clip = torch.rand(2, 5, 12, 12, 3, generator=g).permute(0, 4, 1, 2, 3)  # channels-last (B, 3, T+1, H, W)
    frames = clip[:, :, :4]  # a non-contiguous slice, as in training
    f = torch.rand(2, 4, 5, 5, generator=g).softmax(-1)
    out = apply_dynamic_filters(frames, f)
    torch.testing.assert_close(out, apply_dynamic_filters_reference(frames, f), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, naive_filter(frames.contiguous(), f), atol=1e-6, rtol=0)


def _delta(B: int, T: int, s: int, i: int, j: int) -> torch.Tensor:
    f = torch.zeros(B, T, s, s)
    f[:, :, i, j] = 1.0
    return f


@pytest.mark.parametrize("s", [3, 4, 5, 6, 7])
def test_anchor_delta_returns_frame(s: int) -> None:
    """Tap r = (s−1)//2: the centre for odd s, the one above-left of the middle for even s."""
    x = torch.rand(2, 3, 3, 10, 9)
    r = (s - 1) // 2
    torch.testing.assert_close(apply_dynamic_filters(x, _delta(2, 3, s, r, r)), x, atol=0, rtol=0)


@pytest.mark.parametrize("s", [4, 6])
def test_even_kernel_padding_is_pinned_by_delta_shifts(s: int) -> None:
    """Even s: taps reach r = (s−1)//2 pixels up/left and r + 1 down/right of the output pixel,
    with zeros beyond the frame (r before, r + 1 after: PyTorch's padding="same")."""
    r = (s - 1) // 2
    x = torch.rand(1, 2, 2, 9, 10)
    first = apply_dynamic_filters(x, _delta(1, 2, s, 0, 0))            # reads r up and r left: moves down-right by r
    torch.testing.assert_close(first[..., r:, r:], x[..., :-r, :-r], atol=0, rtol=0)
    assert torch.count_nonzero(first[..., :r, :]) == 0 and torch.count_nonzero(first[..., :, :r]) == 0
    last = apply_dynamic_filters(x, _delta(1, 2, s, s - 1, s - 1))     # reads r + 1 down/right: moves up-left
    torch.testing.assert_close(last[..., :-(r + 1), :-(r + 1)], x[..., r + 1:, r + 1:], atol=0, rtol=0)
    assert torch.count_nonzero(last[..., -(r + 1):, :]) == 0 and torch.count_nonzero(last[..., :, -(r + 1):]) == 0
    torch.testing.assert_close(first, apply_dynamic_filters_reference(x, _delta(1, 2, s, 0, 0)), atol=0, rtol=0)


def test_delta_left_of_centre_moves_content_right() -> None:
    s, r = 5, 2
    x = torch.rand(1, 3, 2, 8, 8)
    out = apply_dynamic_filters(x, _delta(1, 2, s, r, r - 1))
    torch.testing.assert_close(out[..., 1:], x[..., :-1], atol=0, rtol=0)  # one pixel to the right
    assert torch.count_nonzero(out[..., 0]) == 0  # zero padding enters at the left border


def test_delta_above_centre_moves_content_down() -> None:
    s, r = 5, 2
    x = torch.rand(1, 3, 2, 8, 8)
    out = apply_dynamic_filters(x, _delta(1, 2, s, r - 1, r))
    torch.testing.assert_close(out[..., 1:, :], x[..., :-1, :], atol=0, rtol=0)
    assert torch.count_nonzero(out[..., 0, :]) == 0


def test_each_frame_uses_its_own_filter() -> None:
    x = torch.rand(2, 3, 3, 6, 6)
    f = _delta(2, 3, 3, 1, 1)
    f[1, 2] = 0.0
    f[1, 2, 1, 0] = 1.0  # only sample 1, frame 2 shifts right
    out = apply_dynamic_filters(x, f)
    torch.testing.assert_close(out[:, :, :2], x[:, :, :2], atol=0, rtol=0)
    torch.testing.assert_close(out[0], x[0], atol=0, rtol=0)
    torch.testing.assert_close(out[1, :, 2, :, 1:], x[1, :, 2, :, :-1], atol=0, rtol=0)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="filters"):
        apply_dynamic_filters(torch.rand(1, 3, 2, 8, 8), torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="filters"):
        apply_dynamic_filters(torch.rand(1, 3, 2, 8, 8), torch.rand(1, 2, 4, 5))
    with pytest.raises(ValueError, match="frames"):
        apply_dynamic_filters(torch.rand(3, 2, 8, 8), torch.rand(1, 2, 5, 5))


def test_filter_generator_softmax_taps_sum_to_one() -> None:
    torch.manual_seed(0)
    gen = FilterGenerator(in_channels=16, clip_len=6, kernel_size=5, head_channels=8)
    filters = gen(torch.randn(3, 16, 1, 2, 2))
    assert filters.shape == (3, 6, 5, 5)
    assert (filters >= 0).all()
    torch.testing.assert_close(filters.sum(dim=(-1, -2)), torch.ones(3, 6))


def test_two_forwards_before_backward_use_their_own_frames() -> None:
    """The padded workspace is shared per thread: a second forward must not leak into the first's backward."""
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.rand(2, 3, 3, 10, 12, generator=g), torch.rand(2, 3, 3, 10, 12, generator=g)
    f1 = torch.rand(2, 3, 5, 5, generator=g).requires_grad_()
    f2 = torch.rand(2, 3, 5, 5, generator=g).requires_grad_()
    out1, out2 = apply_dynamic_filters(x1, f1), apply_dynamic_filters(x2, f2)
    (out1.sum() + 2 * out2.sum()).backward()
    want1 = torch.autograd.grad(naive_filter(x1, f1).sum(), f1)[0]
    want2 = torch.autograd.grad(2 * naive_filter(x2, f2).sum(), f2)[0]
    torch.testing.assert_close(f1.grad, want1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(f2.grad, want2, atol=1e-4, rtol=1e-5)
