"""3D ResNet / ResNeXt backbones after Hara et al., CVPR 2018 (DynamoNet paper §3.2, §4.1).

Stem: 7×7×7 conv, stride (1, 2, 2) + 3×3×3 max-pool, stride 2 (``stem_pool=False`` drops the
max-pool, as Hara's ``--no_max_pool``: every stage then runs at twice the resolution in time and
space, which is what small inputs such as the embedded 8×40×40 clips need); four stages of basic or bottleneck
blocks, stages 2–4 downsample by 2 in time and space; shortcut A (identity + zero channels) or
B (1×1×1 conv + BN) when the shape changes. ResNeXt blocks are bottlenecks with a grouped 3×3×3
conv (cardinality 32) and expansion 2. Optionally every residual block carries a
spatio-temporal channel correlation block (:mod:`dynamonet.models.stc`).

The backbone stops at the last stage; pooling and classifiers live in :mod:`.heads`. Widths
are per-stage ``planes`` as in Hara's code (ResNet 64/128/256/512, ResNeXt 128/256/512/1024);
``widths=`` overrides them, e.g. for tiny CPU models. The ResNeXt bottleneck width is
``planes`` split into ``cardinality`` groups (Hara's ``cardinality · planes // 32`` at 32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .stc import STCBlock

__all__ = ["BasicBlock", "Bottleneck", "ResNet3D", "stage_durations"]


def _conv3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: strided identity, new channels filled with zeros (Hara's type A)."""

    def __init__(self, cout: int, stride: int) -> None:
        super().__init__()
        self.cout, self.stride = cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.cout - x.shape[1]))  # zero channels appended


def _shortcut(kind: str, cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    if kind == "A":
        return _ShortcutA(cout, stride)
    return nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))


class BasicBlock(nn.Module):
    """Two 3×3×3 convs (ResNet-10/18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, shortcut: str, cardinality: int = 1,
                 stc: STCBlock | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm3d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm3d(planes)
        self.stc = stc
        self.shortcut = _shortcut(shortcut, cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.stc is not None:
            out = self.stc(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity, inplace=True)


class Bottleneck(nn.Module):
    """1×1×1 → 3×3×3 (grouped for ResNeXt) → 1×1×1; expansion 4 (ResNet) or 2 (ResNeXt)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, shortcut: str, cardinality: int = 1,
                 stc: STCBlock | None = None) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv3d(cin, planes, 1, bias=False), nn.BatchNorm3d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, stride, groups=cardinality), nn.BatchNorm3d(planes)
        self.conv3, self.bn3 = nn.Conv3d(planes, cout, 1, bias=False), nn.BatchNorm3d(cout)
        self.stc = stc
        self.shortcut = _shortcut(shortcut, cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stc is not None:
            out = self.stc(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity, inplace=True)


class ResNeXtBottleneck(Bottleneck):
    """ResNeXt bottleneck: expansion 2, grouped middle conv."""

    expansion = 2


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "resnext": ResNeXtBottleneck}


def stage_durations(clip_len: int, stem_pool: bool = True) -> list[int]:
    """Temporal length after the stem (+ max-pool) and after each of stages 2–4 (``ceil(T/2)`` each)."""
    t = math.ceil(clip_len / 2) if stem_pool else clip_len  # stem stride 1, max-pool stride 2
    out = [t]
    for _ in range(3):
        t = math.ceil(t / 2)
        out.append(t)
    return out


class ResNet3D(nn.Module):
    """Generic 3D ResNet/ResNeXt trunk; ``forward`` returns last-stage features ``(B, C4, T', H', W')``.

    Args:
        block: ``"basic"``, ``"bottleneck"`` or ``"resnext"``.
        layers: blocks per stage, e.g. ``(3, 4, 23, 3)``.
        widths: per-stage planes.
        stem_width: output channels of the 7×7×7 stem.
        shortcut: ``"A"`` or ``"B"``.
        cardinality: groups of the ResNeXt middle conv (1 for ResNet).
        stc_reduction: if > 0, an STC block with this reduction ratio in every residual block.
        clip_len: frames of the input (sizes the STC paper's SCB, an FC over the stage's ``T·C``).
        in_channels: input channels (3 for RGB).
        stem_pool: keep the stem's 3×3×3 max-pool (Hara's default); False halves no dimension there.
    """

    def __init__(self, block: str, layers: Sequence[int], widths: Sequence[int], stem_width: int,
                 shortcut: str = "B", cardinality: int = 1, stc_reduction: int = 0, clip_len: int = 16,
                 in_channels: int = 3, stem_pool: bool = True) -> None:
        super().__init__()
        block_cls = BLOCKS[block]
        self.stem_pool = stem_pool
        stem: list[nn.Module] = [
            nn.Conv3d(in_channels, stem_width, 7, stride=(1, 2, 2), padding=3, bias=False),
            nn.BatchNorm3d(stem_width),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:  # parameter-free: state dicts are the same with or without it
            stem.append(nn.MaxPool3d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        durations = stage_durations(clip_len, stem_pool)
        cin, stages = stem_width, []
        for idx, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            cout = planes * block_cls.expansion
            blocks = []
            for b in range(n):
                stride = 2 if (idx > 0 and b == 0) else 1
                stc = STCBlock(cout, durations[idx], stc_reduction) if stc_reduction > 0 else None
                blocks.append(block_cls(cin, planes, stride, shortcut, cardinality, stc))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # He et al. 2015 init (paper §4.3 [21]), as in Hara's code
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` normalised clip → last-stage features ``(B, C4, ⌈T/16⌉, ⌈H/32⌉, ⌈W/32⌉)``
        (``(B, C4, ⌈T/8⌉, ⌈H/16⌉, ⌈W/16⌉)`` without the stem max-pool)."""
        return self.stages(self.stem(x))
