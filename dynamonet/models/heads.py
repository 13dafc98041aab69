"""Representation and classification heads of DynamoNet (paper §3.2, §4.1).

* :class:`AppearanceHead` (AR): two conv layers of 64 filters + BN + ReLU on the last-stage
  features → global average pool → FC ``ar_dim`` → ReLU (same (kt, 3, 3) kernels as the motion
  branch, see :func:`~dynamonet.models.motion.conv_pair`; in a DynamoNet both branches' conv
  layers are computed together, ``conv_pair(..., branches=2)``, with separate weights).
* :class:`MotionRepresentation` (DMR): the T dynamic filters flattened (``T·s·s``) → FC
  ``dmr_dim`` (paper: 512) → ReLU.
* :class:`Classifier`: dropout → linear on ``concat(AR, DMR)`` (joint / no_fp), or on the
  globally pooled backbone features (the plain 3D-CNN ``backbone`` mode, as in Hara et al.).

The ReLU after both FC layers is our choice (the paper does not say); it keeps AR and DMR
non-negative like pooled ReLU features, so neither dominates the concatenation by sign.
"""

from __future__ import annotations

import torch
from torch import nn

from .motion import conv_pair

__all__ = ["AppearanceHead", "Classifier", "MotionRepresentation"]


class AppearanceHead(nn.Module):
    """AR branch: ``(B, C4, T', H', W')`` features → ``(B, ar_dim)``.

    ``with_convs=False``: the conv layers live in a shared ``conv_pair(..., branches=2)``; call
    :meth:`from_pooled` with this branch's pooled conv features ``(B, head_channels)``.
    """

    def __init__(self, in_channels: int, ar_dim: int, head_channels: int = 64, temporal_kernel: int = 3,
                 with_convs: bool = True) -> None:
        super().__init__()
        if with_convs:
            self.convs = conv_pair(in_channels, head_channels, temporal_kernel)
        self.fc = nn.Linear(head_channels, ar_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(self.convs(feats).mean(dim=(2, 3, 4)))  # (B, head_channels) → (B, ar_dim)

    def from_pooled(self, h: torch.Tensor) -> torch.Tensor:
        """Pooled conv features ``(B, head_channels)`` → FC → ReLU → ``(B, ar_dim)``."""
        return torch.relu(self.fc(h))


class MotionRepresentation(nn.Module):
    """DMR: filters ``(B, T, s, s)`` → ``(B, dmr_dim)``."""

    def __init__(self, clip_len: int, kernel_size: int, dmr_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(clip_len * kernel_size * kernel_size, dmr_dim)

    def forward(self, filters: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(filters.flatten(1)))  # (B, T·s·s) → (B, dmr_dim)


class Classifier(nn.Module):
    """Dropout → linear. ``fc`` is the only module whose shape depends on the class count."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(feats))  # (B, num_classes)
