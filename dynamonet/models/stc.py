"""Spatio-temporal channel correlation (STC) block, Diba et al., ECCV 2018 (arXiv 1806.07754) §3.

DynamoNet's best backbone is STC-ResNeXt (DynamoNet paper §3.2, §4.1): a ResNeXt whose residual
blocks carry an STC block that models correlations between channels w.r.t. space and time.
The block has two branches on the block's features ``X ∈ R^{C×T×H×W}``:

* spatial correlation branch (SCB): global spatio-temporal average pooling → channel descriptor
  ``(C,)`` → FC ``C → C/r`` → ReLU → FC ``C/r → C`` → sigmoid; scales X channel-wise;
* temporal correlation branch (TCB): global *spatial* pooling only, keeping time → ``(T, C)``,
  flattened to ``T·C`` → FC ``T·C → T·C/r`` → ReLU → FC ``T·C/r → C`` → sigmoid; scales X.

The block output is the average of the two rescaled maps, ``X · (s_scb + s_tcb) / 2``.

Choices the paper leaves open (documented in docs/model.md): the block sits on the residual
branch after the last BN, before the shortcut addition (as SE blocks do); r = 16 for both
branches, with at least 4 hidden units; TCB adaptively average-pools time to the stage length
computed from ``clip_len`` so a clip of another length still runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STCBlock"]


class STCBlock(nn.Module):
    """Channel gate from a spatial and a temporal correlation branch.

    Args:
        channels: C of the features.
        duration: temporal length T of the features at this stage (for TCB's FC sizes).
        reduction: bottleneck ratio r of both branches.
    """

    def __init__(self, channels: int, duration: int, reduction: int = 16) -> None:
        super().__init__()
        self.duration = duration
        hidden_s = max(4, channels // reduction)
        hidden_t = max(4, channels * duration // reduction)
        self.scb = nn.Sequential(nn.Linear(channels, hidden_s), nn.ReLU(inplace=True), nn.Linear(hidden_s, channels))
        self.tcb = nn.Sequential(nn.Linear(channels * duration, hidden_t), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_t, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` → same shape, rescaled channel-wise."""
        b, c = x.shape[:2]
        spatial = x.mean(dim=(3, 4))  # (B, C, T): spatial global pooling
        s_scb = torch.sigmoid(self.scb(spatial.mean(dim=2)))  # (B, C): spatio-temporal pooling
        if spatial.shape[2] != self.duration:
            spatial = F.adaptive_avg_pool1d(spatial, self.duration)  # (B, C, duration)
        s_tcb = torch.sigmoid(self.tcb(spatial.transpose(1, 2).reshape(b, -1)))  # (B, T·C) → (B, C)
        gate = 0.5 * (s_scb + s_tcb)  # average of the two branches' rescalings
        return x * gate.view(b, c, 1, 1, 1)
