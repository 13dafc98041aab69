"""Spatio-temporal channel correlation (STC) block, Diba et al., ECCV 2018 (arXiv 1806.07754) §3.

DynamoNet's best backbone is STC-ResNeXt (DynamoNet paper §3.2, §4.1): a ResNeXt whose residual
blocks carry an STC block that models correlations between channels w.r.t. space and time.
On a block's features ``X ∈ R^{H×W×T×C}`` (T, H, W of the stage, not of the clip) the paper has
two branches, each "FC → FC → sigmoid → scale" (its Fig. 2), and averages them:

* TCB, temporal correlation branch ("Temporal Global Pooling" in Fig. 2): global pooling over
  space *and* time, ``z_tcb = 1/(W·H·T) Σ_i Σ_j Σ_t x_ijt ∈ R^C``;
  ``s_tcb = W2 (W1 z_tcb)`` with ``W1 ∈ R^{C/r × C}``, ``W2 ∈ R^{C × C/r}``; ``x_tcb = s_tcb · X``.
* SCB, spatial correlation branch ("Spatial Global Pooling"): pooling over space only, time
  kept, ``z_scb = 1/(W·H) Σ_i Σ_j x_ijT ∈ R^{T×C}``, the "temporal-channel" descriptor;
  ``s_scb = W2 (W1 z_scb)`` with ``W1 ∈ R^{(T·C)/r × (T·C)}``, ``W2 ∈ R^{C × (T·C)/r}``;
  ``x_scb = s_scb · X``.
* ``x_stc = avg(x_tcb, x_scb) = X · (σ(s_tcb) + σ(s_scb)) / 2``.

The SCB's first FC has ``(T·C)²/r`` weights, so the block grows with T², i.e. with ``clip_len²``:
that is the paper's definition, not an artefact of this implementation (docs/model.md, "STC block",
gives the sources and the counts at 16/32/64 frames).

Attribute names predate the check against the paper and are kept so that existing checkpoints load:
``self.scb`` holds the paper's **TCB** (3D global pooling, ``C → C/r → C``), ``self.tcb`` the
paper's **SCB** (spatial pooling, ``T·C → T·C/r → C``).

Choices the paper leaves open (documented in docs/model.md): the printed equations have neither
the ReLU between ``W1`` and ``W2`` nor the sigmoid; the sigmoid is in Fig. 2, the ReLU is the SE
block's (Hu et al.), which the STC block follows. r = 16 for both branches, with at least 4
hidden units; ``z_scb`` is flattened time-major (``t·C + c``). The block sits on the residual
branch after the last BN, before the shortcut addition (as SE blocks do). A clip of another
length than the one the model was built for is average-pooled in time to the built stage length
before the SCB, so it still runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STCBlock"]


class STCBlock(nn.Module):
    """Channel gate from the STC paper's two branches (Diba et al. 2018, §3, Fig. 2).

    Args:
        channels: C of the features.
        duration: temporal length T of the features at this stage (sizes the paper's SCB, whose
            first FC maps ``T·C → T·C/r``).
        reduction: bottleneck ratio r of both branches.
    """

    def __init__(self, channels: int, duration: int, reduction: int = 16) -> None:
        super().__init__()
        self.duration = duration
        hidden_g = max(4, channels // reduction)
        hidden_t = max(4, channels * duration // reduction)
        # paper's TCB: 3D global pooling → W1 (C/r × C) → ReLU → W2 (C × C/r)
        self.scb = nn.Sequential(nn.Linear(channels, hidden_g), nn.ReLU(inplace=True), nn.Linear(hidden_g, channels))
        # paper's SCB: spatial pooling → W1 ((T·C)/r × T·C) → ReLU → W2 (C × (T·C)/r)
        self.tcb = nn.Sequential(nn.Linear(channels * duration, hidden_t), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_t, channels))

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, T, H, W)`` → the paper's ``(σ(s_tcb), σ(s_scb))``, each ``(B, C)``."""
        b = x.shape[0]
        z_scb = x.mean(dim=(3, 4))  # (B, C, T): spatial global pooling, z_scb of the paper
        z_tcb = z_scb.mean(dim=2)  # (B, C): pooled over space and time, z_tcb of the paper
        if z_scb.shape[2] != self.duration:
            z_scb = F.adaptive_avg_pool1d(z_scb, self.duration)  # (B, C, duration)
        s_tcb = torch.sigmoid(self.scb(z_tcb))  # (B, C)
        s_scb = torch.sigmoid(self.tcb(z_scb.transpose(1, 2).reshape(b, -1)))  # (B, T·C) → (B, C)
        return s_tcb, s_scb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` → same shape: ``avg(x_tcb, x_scb) = X · (σ(s_tcb) + σ(s_scb)) / 2``."""
        b, c = x.shape[:2]
        s_tcb, s_scb = self.gates(x)
        gate = 0.5 * (s_tcb + s_scb)  # (B, C): average of the two rescaled maps
        return x * gate.view(b, c, 1, 1, 1)
