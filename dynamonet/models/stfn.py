"""Spatio-temporal fusion network (STFN) over a video's clips (seeds/stfn-summary.txt).

A video is a sequence of N clips; DynamoNet gives each clip an appearance vector (AR) and a
motion vector (DMR). STFN models the temporal dynamics of each sequence with a stack of
Residual Inception blocks (parallel 1-D temporal convolutions of several widths, concatenated,
projected back and added to the input), joins the two streams with a fusion connection, runs one
more Residual Inception block on the fused sequence, pools over time and classifies. It replaces
"mean of clip scores" at the video level.

    AR (B,N,ar_dim) ──1×1──► RI × depth ──┐
                                          ├─ concat ─1×1 (fusion)─► RI ─► masked mean‖max ─► FC
    DMR (B,N,dmr_dim) ─1×1──► RI × depth ─┘

Variable N: pad to the longest video and pass ``mask`` ``(B, N)`` (True = real clip). Padded
positions are zeroed before every convolution (so they act exactly as the convolutions' zero
padding), normalisation is per position (LayerNorm over channels, never over time or batch),
and pooling is a masked mean and max; padding therefore never changes a video's logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["STFN", "ResidualInception1d"]


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``(B, C, N)`` at each position (padding-safe)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask.unsqueeze(1).to(x.dtype)


class ResidualInception1d(nn.Module):
    """Parallel temporal convs of several widths + residual: ``(B, C, N) → (B, C, N)``.

    Args:
        channels: C.
        kernel_sizes: odd temporal widths of the parallel branches.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes: must be odd, got {tuple(kernel_sizes)}")
        branch = max(1, channels // len(kernel_sizes))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels, branch, k, padding=k // 2, bias=False), _ChannelNorm(branch), nn.ReLU())
            for k in kernel_sizes
        )
        self.project = nn.Conv1d(branch * len(kernel_sizes), channels, 1, bias=False)
        self.norm = _ChannelNorm(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = _masked(x, mask)
        h = torch.cat([b(h) for b in self.branches], dim=1)  # (B, branch·len(ks), N)
        h = self.norm(self.project(_masked(h, mask)))
        return _masked(torch.relu(x + h), mask)


class STFN(nn.Module):
    """Video-level fusion of per-clip AR and DMR sequences.

    Args:
        ar_dim: size of the AR vectors.
        dmr_dim: size of the DMR vectors.
        num_classes: outputs.
        width: channels of both streams and of the fused sequence.
        depth: Residual Inception blocks per stream.
        kernel_sizes: temporal widths of the parallel convolutions.
        dropout: dropout before the classifier.
    """

    def __init__(self, ar_dim: int, dmr_dim: int, num_classes: int, width: int = 256, depth: int = 2,
                 kernel_sizes: Sequence[int] = (1, 3, 5), dropout: float = 0.5) -> None:
        super().__init__()
        self.ar_in = nn.Sequential(nn.Conv1d(ar_dim, width, 1, bias=False), _ChannelNorm(width), nn.ReLU())
        self.dmr_in = nn.Sequential(nn.Conv1d(dmr_dim, width, 1, bias=False), _ChannelNorm(width), nn.ReLU())
        self.ar_blocks = nn.ModuleList(ResidualInception1d(width, kernel_sizes) for _ in range(depth))
        self.dmr_blocks = nn.ModuleList(ResidualInception1d(width, kernel_sizes) for _ in range(depth))
        self.fusion = nn.Sequential(nn.Conv1d(2 * width, width, 1, bias=False), _ChannelNorm(width), nn.ReLU())
        self.fused = ResidualInception1d(width, kernel_sizes)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, ar: torch.Tensor, dmr: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Classify videos.

        Args:
            ar: ``(B, N, ar_dim)`` appearance vectors of the N clips.
            dmr: ``(B, N, dmr_dim)`` motion vectors.
            mask: optional ``(B, N)`` bool, True for real clips (each video needs at least one).

        Returns:
            ``(B, num_classes)`` logits.
        """
        if ar.shape[:2] != dmr.shape[:2] or (mask is not None and mask.shape != ar.shape[:2]):
            raise ValueError(f"ar, dmr and mask must share (B, N); got {tuple(ar.shape)}, {tuple(dmr.shape)}, "
                             f"{None if mask is None else tuple(mask.shape)}")
        a = _masked(self.ar_in(ar.transpose(1, 2)), mask)  # (B, width, N)
        m = _masked(self.dmr_in(dmr.transpose(1, 2)), mask)
        for block_a, block_m in zip(self.ar_blocks, self.dmr_blocks, strict=True):
            a, m = block_a(a, mask), block_m(m, mask)
        fused = self.fused(_masked(self.fusion(torch.cat([a, m], dim=1)), mask), mask)  # (B, width, N)
        if mask is None:
            pooled = torch.cat([fused.mean(dim=2), fused.amax(dim=2)], dim=1)
        else:
            valid = mask.unsqueeze(1)  # (B, 1, N)
            count = valid.sum(dim=2).clamp_min(1).to(fused.dtype)
            mean = (fused * valid).sum(dim=2) / count
            peak = fused.masked_fill(~valid, float("-inf")).amax(dim=2)
            pooled = torch.cat([mean, torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))], dim=1)
        return self.classifier(pooled)  # (B, num_classes)
