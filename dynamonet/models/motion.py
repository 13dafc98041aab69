"""Dynamic motion filters: the filter-generating branch and the batched filtering op (paper §3.1).

DynamoNet predicts frame t+1 from frame t with a per-clip, per-frame s×s kernel
(eq. 1, ``x̂_{t+1} = F_{Θ,t}(x_t)``). Two pieces live here:

* :class:`FilterGenerator` — from the deep (last-stage) backbone features: 2 conv layers of
  ``head_channels`` (64) + BN + ReLU → global average pool → FC → ``T·s·s`` logits → softmax
  over the s·s taps of each frame → filters ``(B, T, s, s)`` (paper §3.1, §4.1). The convs are
  (3, 3, 3), or (1, 3, 3) when the last stage has a single time step (clips of ≤ 16 frames),
  where temporal taps would only ever see zero padding. In ``joint``/``no_fp`` models its conv
  layers are computed together with the AR branch's (:func:`conv_pair` with ``branches=2``).
* :func:`apply_dynamic_filters` — frame t filtered by filter t, the same kernel for every
  channel and position, batched over samples and frames.

Orientation and borders (see docs/model.md): the op is a **cross-correlation** with **zero
padding** and "same" output size,

    out[b, c, t, y, x] = Σ_{i,j} F[b, t, i, j] · frame[b, c, t, y + i − r, x + j − r],  r = (s − 1) // 2,

exactly ``F.conv2d(frame, F, padding="same")`` per (sample, frame). A delta at tap (r, r)
returns the frame; a delta one tap *left* of it (``j = r − 1``) reads the pixel to the left, so
the content moves one pixel to the **right** (and a delta one tap above moves it down). For odd
s (3, 5, 7) tap r is the centre and the padding is r on every side. For even s (4, 6; §3.1 tried
s = 3…7) there is no centre: tap r is the one above-left of the middle, the taps reach r pixels
up/left and s − 1 − r = r + 1 down/right, and the zero padding is r before and r + 1 after, in
both dimensions (PyTorch's ``padding="same"`` rule).

Implementation: the B·C·T frame planes are the channels of one depthwise ``conv2d``
(``groups = B·C·T``, plane (b, c, t) filtered by ``F[b, t]``), no loop over samples or frames.
On CPU the backward is hand-written with the same depthwise forward convolution, because
PyTorch's native depthwise weight gradient takes a slow im2col path there (≈ 56 ms against
≈ 8 ms at the benchmark shape, see docs/model.md):

* frame gradient — the correlation of the output gradient with the flipped kernels (the adjoint
  of a zero-padded correlation);
* filter gradient — the output gradient used as the *kernel*:
  ``dF[b, t, i, j] = Σ_c (x_c ⋆ g_c)[i, j] = Σ_{c,y,x} g[b,c,t,y,x] · x_pad[b,c,t,y+i,x+j]``,
  a depthwise conv of the frames with a H×W kernel and an s×s output, summed over colours.

oneDNN runs all three on its blocked layout with its own (fast) layout conversions. On CUDA
the op is the same grouped convolution with native autograd (cuDNN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["FilterGenerator", "apply_dynamic_filters", "apply_dynamic_filters_reference", "conv_pair"]


class FilterGenerator(nn.Module):
    """Motion branch: deep features → per-frame softmax filters (paper §3.1, §4.1).

    Args:
        in_channels: channels of the last backbone stage.
        clip_len: T, the number of frames (one filter per frame).
        kernel_size: s, spatial size of each filter (3..7; even sizes: see the module docstring).
        head_channels: channels of the two conv layers (paper: 64).
        temporal_kernel: temporal extent of those convs (3, or 1 when the features have T' = 1).
        with_convs: False when the conv layers live in a shared :func:`conv_pair` (joint models);
            then call :meth:`from_pooled` with the pooled conv features.
    """

    def __init__(self, in_channels: int, clip_len: int, kernel_size: int, head_channels: int = 64,
                 temporal_kernel: int = 3, with_convs: bool = True) -> None:
        super().__init__()
        self.clip_len, self.kernel_size = clip_len, kernel_size
        if with_convs:
            self.convs = conv_pair(in_channels, head_channels, temporal_kernel)
        self.fc = nn.Linear(head_channels, clip_len * kernel_size * kernel_size)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Map features ``(B, C4, T4, H4, W4)`` to filters ``(B, T, s, s)`` (each sums to 1)."""
        return self.from_pooled(self.convs(feats).mean(dim=(2, 3, 4)))

    def from_pooled(self, h: torch.Tensor) -> torch.Tensor:
        """Pooled conv features ``(B, head_channels)`` → FC → softmax over taps → ``(B, T, s, s)``."""
        logits = self.fc(h).view(-1, self.clip_len, self.kernel_size**2)  # (B, T, s·s)
        return logits.softmax(dim=-1).view(-1, self.clip_len, self.kernel_size, self.kernel_size)


def conv_pair(in_channels: int, channels: int, temporal_kernel: int = 3, branches: int = 1) -> nn.Sequential:
    """Two ``(kt, 3, 3)`` conv + BN + ReLU layers (the heads' "2 conv layers of 64 filters", §4.1).

    With ``branches = n`` it is n independent such pairs on the same input, computed together:
    layer 1 is one conv with ``n·channels`` outputs (branch k = channels ``[k·c, (k+1)·c)``), the
    BN is per channel anyway, and layer 2 is a grouped conv (``groups = n``: branch k sees only
    its own layer-1 channels). Same parameters and the same function as n separate pairs, with
    half the operator calls. Input ``(B, C, T', H', W')`` → ``(B, n·channels, T', H', W')``.
    """
    k, pad, width = (temporal_kernel, 3, 3), (temporal_kernel // 2, 1, 1), channels * branches
    return nn.Sequential(
        _HeadConv(in_channels, width, k, padding=pad, bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
        _HeadConv(width, width, k, padding=pad, bias=False, groups=branches),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class _HeadConv(nn.Conv3d):
    """A ``Conv3d`` that runs a (1, kh, kw) kernel on a single time step as the identical ``conv2d``
    (oneDNN's 2-D kernels are ≈ 20 % faster on the heads' tiny (B, C, 1, 2, 2) maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size[0] != 1 or x.shape[2] != 1 or self.padding_mode != "zeros":
            return super().forward(x)
        y = F.conv2d(x.squeeze(2), self.weight.squeeze(2), self.bias, self.stride[1:], self.padding[1:],
                     self.dilation[1:], self.groups)
        return y.unsqueeze(2)  # (B, out, 1, H', W')


def apply_dynamic_filters(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Filter frame t of every clip with its own s×s kernel t (cross-correlation, zero padding).

    Args:
        frames: ``(B, C, T, H, W)`` float frames (any strides).
        filters: ``(B, T, s, s)`` kernels, 2 ≤ s; shared by all C channels and all positions.

    Returns:
        ``(B, C, T, H, W)`` contiguous:
        ``out[b, c, t] = Σ_ij filters[b, t, i, j] · frames[b, c, t, y+i−r, x+j−r]``, r = (s−1)//2,
        with zeros outside the frame (even s: see the module docstring). Differentiable w.r.t.
        both arguments (first order).
    """
    if frames.dim() != 5 or filters.dim() != 4:
        raise ValueError(f"frames must be (B, C, T, H, W) and filters (B, T, s, s); got {tuple(frames.shape)} "
                         f"and {tuple(filters.shape)}")
    B, C, T, H, W = frames.shape
    s = filters.shape[-1]
    if filters.shape != (B, T, s, s) or s < 2:
        raise ValueError(f"filters: expected (B={B}, T={T}, s, s) with s >= 2, got {tuple(filters.shape)}")
    filters = filters.to(frames.dtype)
    if frames.is_cuda:
        return _grouped_conv(frames, filters)
    with torch.autocast("cpu", enabled=False):  # the convs run in the frames' dtype
        return _DepthwiseFilter.apply(frames, filters)


def apply_dynamic_filters_reference(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The same op as a grouped ``conv2d`` with PyTorch's native autograd (CUDA path, cross-check)."""
    return _grouped_conv(frames, filters.to(frames.dtype))


def _plane_kernels(filters: torch.Tensor, C: int) -> torch.Tensor:
    """``(B, T, s, s)`` → one kernel per plane ``(B·C·T, 1, s, s)``, plane order (b, c, t)."""
    B, T, s, _ = filters.shape
    return filters.unsqueeze(1).expand(B, C, T, s, s).reshape(B * C * T, 1, s, s)


def _pads(s: int) -> tuple[int, int]:
    """Zero padding (before, after) of an s-tap "same" correlation: r = (s − 1) // 2 and s − 1 − r."""
    return (s - 1) // 2, s - 1 - (s - 1) // 2


def _same_conv(x: torch.Tensor, w: torch.Tensor, before: int, after: int, groups: int) -> torch.Tensor:
    """Depthwise ``conv2d`` of ``x`` (1, P, H, W) with ``before``/``after`` zeros on both dimensions
    (one ``padding`` argument when they are equal, an explicit pad for even kernels)."""
    if before == after:
        return F.conv2d(x, w, padding=before, groups=groups)
    return F.conv2d(F.pad(x, (before, after, before, after)), w, groups=groups)


def _grouped_conv(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = frames.shape
    planes = frames.reshape(1, B * C * T, H, W)  # (1, P, H, W), one group per plane
    return _same_conv(planes, _plane_kernels(filters, C), *_pads(filters.shape[-1]), B * C * T).view(B, C, T, H, W)


class _DepthwiseFilter(torch.autograd.Function):
    """CPU op: forward and both gradients as depthwise forward convolutions (module docstring).

    Saves the frame planes (a view of the input when it is contiguous) and the per-plane kernels.
    """

    @staticmethod
    def forward(ctx, frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        B, C, T, H, W = frames.shape
        s = filters.shape[-1]
        planes = frames.reshape(1, B * C * T, H, W)  # (1, P, H, W)
        kernels = _plane_kernels(filters, C)  # (P, 1, s, s)
        ctx.save_for_backward(planes, kernels)
        ctx.sizes = (B, C, T)
        return _same_conv(planes, kernels, *_pads(s), B * C * T).view(B, C, T, H, W)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        planes, kernels = ctx.saved_tensors
        (B, C, T), (_, P, H, W), s = ctx.sizes, planes.shape, kernels.shape[-1]
        g = grad.reshape(1, P, H, W)
        grad_frames = grad_filters = None
        before, after = _pads(s)
        if ctx.needs_input_grad[1]:  # the output gradient as the kernel: (1, P, s, s) tap sums
            taps = _same_conv(planes, g.view(P, 1, H, W), before, after, P)
            grad_filters = taps.view(B, C, T, s, s).sum(1)
        if ctx.needs_input_grad[0]:  # adjoint of a zero-padded correlation: the flipped kernel, pads swapped
            grad_frames = _same_conv(g, kernels.flip(-1, -2), after, before, P).view(B, C, T, H, W)
        return grad_frames, grad_filters
