"""Dynamic motion filters: the filter-generating branch and the batched filtering op (paper §3.1).

DynamoNet predicts frame t+1 from frame t with a per-clip, per-frame s×s kernel
(eq. 1, ``x̂_{t+1} = F_{Θ,t}(x_t)``). Two pieces live here:

* :class:`FilterGenerator` — from the deep (last-stage) backbone features: 2 conv layers of
  ``head_channels`` (64) + BN + ReLU → global average pool → FC → ``T·s·s`` logits → softmax
  over the s·s taps of each frame → filters ``(B, T, s, s)`` (paper §3.1, §4.1). The convs are
  (3, 3, 3), or (1, 3, 3) when the last stage has a single time step (clips of ≤ 16 frames),
  where temporal taps would only ever see zero padding.
* :func:`apply_dynamic_filters` — frame t filtered by filter t, the same kernel for every
  channel and position, batched over samples and frames.

Orientation and borders (see docs/model.md): the op is a **cross-correlation** with **zero
padding** and "same" output size,

    out[b, c, t, y, x] = Σ_{i,j} F[b, t, i, j] · frame[b, c, t, y + i − r, x + j − r],  r = s // 2,

exactly ``F.conv2d(frame, F, padding=r)`` per (sample, frame). A delta at the centre tap
returns the frame; a delta one tap *left* of centre (``j = r − 1``) reads the pixel to the left,
so the content moves one pixel to the **right** (and a delta one tap above moves it down).

CPU implementation (measured, see bench/dynamic_filter.py and docs/model.md): the frames are
copied once into a zero-bordered flat buffer whose rows have stride ``wp ≥ W + s − 1``; there
tap (i, j) is the constant offset ``i·wp + j``, so a block of K = 16 consecutive outputs is a
Toeplitz GEMM of the K + s − 1 inputs it needs, and the C planes of one (sample, frame) — same
kernel — form one tall operand. Each kernel row i is two BLAS-legal batched GEMMs (``baddbmm``
over strided views, batch B·T): no unfold, no Python loop over samples or frames, one output
allocation. The backward applies the flipped kernel the same way for the frame gradient and
gets the filter gradient from 2·s batched GEMMs ``Gᵀ·X`` whose band diagonals are the tap sums.
The padded buffers are per-thread workspace reused across calls (fresh 20 MB buffers page-fault
for ~3 ms each on the 2-core VM, which is what makes naive timings erratic).
On CUDA the op is a grouped (depthwise) ``conv2d`` with native autograd.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["FilterGenerator", "apply_dynamic_filters", "apply_dynamic_filters_reference", "conv_pair"]

_K_FWD = 16  # output block of the forward / frame-gradient Toeplitz GEMMs (AVX-512 width)
_K_GRAD = 8  # block of the filter-gradient GEMMs (measured faster than 16 on 2 cores); divides _K_FWD


class FilterGenerator(nn.Module):
    """Motion branch: deep features → per-frame softmax filters (paper §3.1, §4.1).

    Args:
        in_channels: channels of the last backbone stage.
        clip_len: T, the number of frames (one filter per frame).
        kernel_size: s, odd spatial size of each filter.
        head_channels: channels of the two conv layers (paper: 64).
        temporal_kernel: temporal extent of those convs (3, or 1 when the features have T' = 1).
    """

    def __init__(self, in_channels: int, clip_len: int, kernel_size: int, head_channels: int = 64,
                 temporal_kernel: int = 3) -> None:
        super().__init__()
        self.clip_len, self.kernel_size = clip_len, kernel_size
        self.convs = conv_pair(in_channels, head_channels, temporal_kernel)
        self.fc = nn.Linear(head_channels, clip_len * kernel_size * kernel_size)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Map features ``(B, C4, T4, H4, W4)`` to filters ``(B, T, s, s)`` (each sums to 1)."""
        h = self.convs(feats).mean(dim=(2, 3, 4))  # (B, head_channels)
        logits = self.fc(h).view(-1, self.clip_len, self.kernel_size**2)  # (B, T, s·s)
        return logits.softmax(dim=-1).view(-1, self.clip_len, self.kernel_size, self.kernel_size)


def conv_pair(in_channels: int, channels: int, temporal_kernel: int = 3) -> nn.Sequential:
    """Two ``(kt, 3, 3)`` conv + BN + ReLU layers (the heads' "2 conv layers of 64 filters", §4.1)."""
    k, pad = (temporal_kernel, 3, 3), (temporal_kernel // 2, 1, 1)
    return nn.Sequential(
        nn.Conv3d(in_channels, channels, k, padding=pad, bias=False),
        nn.BatchNorm3d(channels),
        nn.ReLU(inplace=True),
        nn.Conv3d(channels, channels, k, padding=pad, bias=False),
        nn.BatchNorm3d(channels),
        nn.ReLU(inplace=True),
    )


def apply_dynamic_filters(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Filter frame t of every clip with its own s×s kernel t (cross-correlation, zero padding).

    Args:
        frames: ``(B, C, T, H, W)`` float frames (any strides).
        filters: ``(B, T, s, s)`` kernels, s odd; shared by all C channels and all positions.

    Returns:
        ``(B, C, T, H, W)``: ``out[b, c, t] = Σ_ij filters[b, t, i, j] · frames[b, c, t, y+i−r, x+j−r]``
        with zeros outside the frame. On CPU the result is a strided view (row stride ≥ W + s − 1).
        Differentiable w.r.t. both arguments (first order).
    """
    if frames.dim() != 5 or filters.dim() != 4:
        raise ValueError(f"frames must be (B, C, T, H, W) and filters (B, T, s, s); got {tuple(frames.shape)} "
                         f"and {tuple(filters.shape)}")
    B, C, T, H, W = frames.shape
    s = filters.shape[-1]
    if filters.shape != (B, T, s, s) or s % 2 == 0:
        raise ValueError(f"filters: expected (B={B}, T={T}, s, s) with odd s, got {tuple(filters.shape)}")
    filters = filters.to(frames.dtype)
    if frames.is_cuda:
        return _grouped_conv(frames, filters)
    return _ToeplitzFilter.apply(frames, filters)


def apply_dynamic_filters_reference(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The same op as a grouped ``conv2d`` (native autograd; used on CUDA and as a cross-check)."""
    return _grouped_conv(frames, filters.to(frames.dtype))


def _grouped_conv(frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = frames.shape
    s = filters.shape[-1]
    planes = frames.reshape(1, B * C * T, H, W)  # (1, P, H, W), one group per plane
    weight = filters.unsqueeze(1).expand(B, C, T, s, s).reshape(B * C * T, 1, s, s)  # (P, 1, s, s)
    return F.conv2d(planes, weight, padding=s // 2, groups=B * C * T).view(B, C, T, H, W)


class _Geometry:
    """Flat padded layout shared by the three buffers (frames, grad, output).

    Planes are stored in (B, T, C) order with a common stride ``plane = hp·wp`` (rows of stride
    ``wp`` ≥ W + s − 1, zero borders r wide), so the C planes filtered by the same kernel are one
    tall GEMM operand: rows (c, block) have the uniform stride K. In that layout tap (i, j) is
    the offset ``i·wp + j`` from an output's own index.
    """

    def __init__(self, shape: torch.Size, s: int) -> None:
        self.B, self.C, self.T, self.H, self.W = shape
        self.N = self.B * self.T  # one GEMM batch entry per (sample, frame)
        self.s, self.r = s, s // 2
        self.hp = self.H + s - 1
        self.wp = self.W + s - 1
        while (self.hp * self.wp) % _K_FWD:  # blocks of K tile every plane exactly
            self.wp += 1
        self.plane = self.hp * self.wp
        self.stride = self.C * self.plane  # between (sample, frame) entries
        self.length = self.N * self.stride + s * self.wp + 2 * _K_FWD  # slack for the last blocks' windows

    def rows(self, block: int) -> int:
        return self.stride // block

    def frames_view(self, buf: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, hp, wp)`` view of a flat buffer (planes stored in (B, T, C) order)."""
        planes = buf[: self.N * self.stride].view(self.B, self.T, self.C, self.hp, self.wp)
        return planes.permute(0, 2, 1, 3, 4)


class _Workspace(threading.local):
    """Per-thread zero-bordered padded buffers, reused while the geometry stays the same.

    Fresh 20 MB buffers cost ~3 ms each in page faults and zeroing on the 2-core VM (and make
    timings erratic); a reused buffer keeps its zero borders, so a call only copies the interior.
    Holds at most two buffers (frames, grad) of the latest geometry per thread.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.buffers: dict[str, torch.Tensor] = {}
        self.writes = 0  # counts interior copies; a forward remembers the count of its own copy
        self.last: dict[str, int] = {}  # slot → write count of its latest copy

    def get(self, slot: str, g: _Geometry, like: torch.Tensor) -> torch.Tensor:
        key = (g.B, g.C, g.T, g.H, g.W, g.s, like.dtype, like.device)
        if key != self.key:
            self.key, self.buffers, self.last = key, {}, {}
        if slot not in self.buffers:
            self.buffers[slot] = like.new_zeros(g.length)
        return self.buffers[slot]


_WORKSPACE = _Workspace()


def release_workspace() -> int:
    """Free this thread's cached padded buffers; returns the bytes released."""
    freed = workspace_bytes()
    _WORKSPACE.key, _WORKSPACE.buffers, _WORKSPACE.last = None, {}, {}
    return freed


def workspace_bytes() -> int:
    """Bytes held by this thread's cached padded buffers."""
    return sum(b.numel() * b.element_size() for b in _WORKSPACE.buffers.values())


def _pad(src: torch.Tensor, g: _Geometry, slot: str, written: int | None = None) -> tuple[torch.Tensor, int]:
    """Copy ``(B, C, T, H, W)`` into the interior of the zero-bordered flat buffer ``slot``.

    Returns the buffer and the write count of the copy. With ``written`` (the count a forward
    recorded) the copy is skipped if nothing was copied into the slot since: the usual
    forward → backward sequence pads the frames once, while gradient accumulation, checkpointing
    or any other call in between makes the backward copy again.
    """
    buf = _WORKSPACE.get(slot, g, src)
    if written is None or _WORKSPACE.last.get(slot) != written:
        g.frames_view(buf)[..., g.r : g.r + g.H, g.r : g.r + g.W].copy_(src)
        _WORKSPACE.writes += 1
        _WORKSPACE.last[slot] = _WORKSPACE.writes
    return buf, _WORKSPACE.last[slot]


def _blocks(buf: torch.Tensor, g: _Geometry, offset: int, width: int, block: int) -> torch.Tensor:
    """``(N, rows, width)`` view: row a of entry n holds ``buf[n·stride + offset + a·block : … + width]``."""
    return buf.as_strided((g.N, g.rows(block), width), (g.stride, block, 1), buf.storage_offset() + offset)


def _toeplitz(filters: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """Banded matrices ``(N, s, K + s − 1, K)`` with ``M[n, i, k + j, k] = F[n, i, j]``."""
    s, K = g.s, _K_FWD
    mats = filters.new_zeros(g.N, s, K + s - 1, K)
    st = mats.stride()
    band = mats.as_strided((g.N, s, s, K), (st[0], st[1], st[2], st[2] + st[3]))  # [n, i, j, k] → M[n, i, k+j, k]
    band.copy_(filters.reshape(g.N, s, s, 1).expand(g.N, s, s, K))
    return mats


def _correlate(padded: torch.Tensor, mats: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """``out[q] = Σ_ij F[i, j] · padded[q + i·wp + j]`` for every q: 2·s GEMMs; returns flat ``(N·stride,)``."""
    K, s = _K_FWD, g.s
    out = padded.new_empty(g.N * g.stride)
    acc = out.view(g.N, g.rows(K), K)  # rows (c, block) of every (sample, frame)
    for i in range(s):
        head = _blocks(padded, g, i * g.wp, K, K)  # (N, rows, K): the block's own K inputs
        tail = _blocks(padded, g, i * g.wp + K, s - 1, K)  # (N, rows, s−1): the s−1 inputs after it
        if i == 0:
            torch.bmm(head, mats[:, i, :K], out=acc)
        else:
            acc.baddbmm_(head, mats[:, i, :K])
        acc.baddbmm_(tail, mats[:, i, K:])
    return out


def _as_frames(flat: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """Flat outputs → ``(B, C, T, H, W)`` view (output q = y·wp + x of each plane)."""
    return g.frames_view(flat)[..., : g.H, : g.W]


@functools.lru_cache(maxsize=32)
def _band_selectors(K: int, s: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 matrices summing the band diagonals: head ``(K·K, s)``, tail ``(K·(s−1), s)``."""
    k = torch.arange(K)
    head = torch.zeros(K, K, s, dtype=dtype)
    tail = torch.zeros(K, s - 1, s, dtype=dtype)
    for j in range(s):
        inside = k[k + j < K]
        head[inside, inside + j, j] = 1
        over = k[k + j >= K]
        tail[over, over + j - K, j] = 1
    return head.view(K * K, s).to(device), tail.view(K * (s - 1), s).to(device)


def _filter_grad(gpad: torch.Tensor, xpad: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """``dF[n, i, j] = Σ_{c,q} grad[n, c, q] · xpad[n, c, q + i·wp + j]``: 2·s GEMMs ``Gᵀ·X``; ``(N, s, s)``."""
    K, s = _K_GRAD, g.s
    # the grad aligned with the outputs (origin at the interior's top-left), zero outside the frame
    grad_t = gpad.as_strided((g.N, K, g.rows(K)), (g.stride, 1, K), gpad.storage_offset() + g.r * g.wp + g.r)
    sel_head, sel_tail = _band_selectors(K, s, str(gpad.device), gpad.dtype)
    out = xpad.new_empty(g.N, s, s)
    for i in range(s):
        head = torch.bmm(grad_t, _blocks(xpad, g, i * g.wp, K, K))  # (N, K, K)
        tail = torch.bmm(grad_t, _blocks(xpad, g, i * g.wp + K, s - 1, K))  # (N, K, s−1)
        torch.addmm(tail.view(g.N, -1) @ sel_tail, head.view(g.N, -1), sel_head, out=out[:, i])
    return out


class _ToeplitzFilter(torch.autograd.Function):
    """CPU dynamic filtering with a hand-written backward (see module docstring).

    Only the inputs are saved. The padded frames live in a per-thread workspace; the backward
    reuses them if no other copy went into that buffer since its forward, else pads again, so two
    forwards before one backward (gradient accumulation, checkpointing) stay correct.
    """

    @staticmethod
    def forward(ctx, frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = _Geometry(frames.shape, filters.shape[-1])
        xpad, ctx.written = _pad(frames, g, "frames")
        out = _correlate(xpad, _toeplitz(filters, g), g)
        ctx.save_for_backward(frames, filters)
        ctx.geometry = g
        return _as_frames(out, g)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        frames, filters = ctx.saved_tensors
        g: _Geometry = ctx.geometry
        gpad, _ = _pad(grad_out, g, "grad")
        grad_frames = grad_filters = None
        if ctx.needs_input_grad[1]:
            xpad, _ = _pad(frames, g, "frames", written=ctx.written)
            grad_filters = _filter_grad(gpad, xpad, g).view(g.B, g.T, g.s, g.s)
        if ctx.needs_input_grad[0]:
            # the adjoint of a zero-padded correlation is the correlation with the flipped kernel
            grad_frames = _as_frames(_correlate(gpad, _toeplitz(filters.flip(-1, -2), g), g), g)
        return grad_frames, grad_filters
