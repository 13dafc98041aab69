"""The DynamoNet network: backbone + dynamic motion filters + AR/DMR heads (paper §3, Fig. 2).

    x (B,3,T,H,W) in [0,1] ──normalise──► 3D ResNet/ResNeXt/STC ──► feats (B,C4,T',H',W')
      │                                                   │                        │
      │                                FilterGenerator (motion branch)     AppearanceHead (AR)
      │                                  filters F (B,T,s,s), softmax taps        │
      └──────► apply_dynamic_filters(x, F) = pred ─┐           │ flatten → FC (DMR)  │
                  pred[:, :, t] predicts frame t+1  │           └──── concat ◄───────┘
                                                    │                  │ dropout → FC
                                               frame prediction     logits (B, K)

Modes (all parameters of a mode are used in its forward, so DDP runs with
``find_unused_parameters=False``):

* ``pretrain`` — backbone + motion branch + filtering (paper §3.3, §4.4); no AR/DMR/classifier.
* ``joint`` — everything; trained with α·FP + β·CE (eq. 3).
* ``no_fp`` — the same modules as ``joint``; the §4.5 ablation differs only in the loss
  (training sets α = 0), so the prediction is still returned for monitoring.
* ``backbone`` — the plain Hara 3D-CNN: global average pool → dropout → FC.

In ``joint``/``no_fp`` the motion and AR branches' conv layers (2 × 64 filters each, §4.1) run as
one ``conv_pair(..., branches=2)`` named ``branch_convs`` (channels 0..63 = motion, 64..127 = AR,
grouped second layer): the same parameters and function as two separate pairs, half the
operator calls. Checkpoints with the per-branch names (``motion.convs.*``, ``appearance.convs.*``,
also what ``pretrain`` models have) load through :meth:`DynamoNet.adapt_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from ..config import MODES
from .backbones import ResNet3D, stage_durations
from .heads import AppearanceHead, Classifier, MotionRepresentation
from .motion import FilterGenerator, apply_dynamic_filters, conv_pair

__all__ = ["KINETICS_MEAN", "KINETICS_STD", "DynamoNet", "DynamoOutput"]

_BRANCHES = ("motion", "appearance")  # order of the branches' channels in ``branch_convs``

# Kinetics RGB statistics of Hara et al.'s 3D-ResNets (110.64, 103.16, 96.29 and 38.76, 37.88, 40.03 / 255)
KINETICS_MEAN = (0.4339, 0.4046, 0.3776)
KINETICS_STD = (0.1520, 0.1486, 0.1570)


class DynamoOutput(NamedTuple):
    """What :class:`DynamoNet` returns; fields a mode does not produce are ``None``.

    Attributes:
        logits: ``(B, num_classes)`` class scores (not in ``pretrain``).
        pred: ``(B, 3, T, H, W)`` predicted frames 2..T+1 in [0, 1] (not in ``backbone``).
        filters: ``(B, T, s, s)`` dynamic filters, each summing to 1 (not in ``backbone``).
    """

    logits: torch.Tensor | None
    pred: torch.Tensor | None
    filters: torch.Tensor | None


class DynamoNet(nn.Module):
    """DynamoNet around a 3D-CNN trunk. Build it with :func:`dynamonet.models.build_model`.

    Args:
        backbone: trunk returning last-stage features.
        mode: one of ``MODES``.
        num_classes: classifier outputs (ignored in ``pretrain``).
        clip_len: T, frames per clip (one filter per frame).
        kernel_size: s, size of the dynamic filters (3..7).
        dmr_dim: size of the DMR FC (paper: 512).
        ar_dim: size of the AR FC.
        head_channels: channels of the conv layers of the motion and AR branches (paper: 64).
        dropout: dropout before the classifier.
        arch: registry name, for reprs and checkpoints.
    """

    def __init__(self, backbone: ResNet3D, *, mode: str, num_classes: int, clip_len: int, kernel_size: int,
                 dmr_dim: int, ar_dim: int, head_channels: int, dropout: float, arch: str = "") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        self.arch, self.mode, self.clip_len, self.kernel_size = arch, mode, clip_len, kernel_size
        self.num_classes = 0 if mode == "pretrain" else num_classes
        self.backbone = backbone
        feat = backbone.out_channels
        kt = 3 if stage_durations(clip_len, backbone.stem_pool)[-1] > 1 else 1  # no temporal taps on a single time step
        two = mode in ("joint", "no_fp")  # motion + AR branches: their conv layers run together
        if two:
            self.branch_convs = conv_pair(feat, head_channels, kt, branches=len(_BRANCHES))
        if mode != "backbone":
            self.motion = FilterGenerator(feat, clip_len, kernel_size, head_channels, kt, with_convs=not two)
        if two:
            self.appearance = AppearanceHead(feat, ar_dim, head_channels, kt, with_convs=False)
            self.dmr = MotionRepresentation(clip_len, kernel_size, dmr_dim)
            self.classifier = Classifier(ar_dim + dmr_dim, num_classes, dropout)
            self.register_load_state_dict_pre_hook(_load_per_branch_checkpoint)
        elif mode == "backbone":
            self.classifier = Classifier(feat, num_classes, dropout)
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"x: expected a (B, 3, T, H, W) clip, got shape {tuple(x.shape)}")
        if self.mode != "backbone" and x.shape[2] != self.clip_len:
            raise ValueError(f"x: the model was built for clip_len={self.clip_len} frames, got T={x.shape[2]}")

    def forward(self, x: torch.Tensor) -> DynamoOutput:
        """Run the network on ``x`` ``(B, 3, T, H, W)`` in [0, 1]; see :class:`DynamoOutput`."""
        self._check_input(x)
        feats = self.backbone((x - self.mean) / self.std)  # (B, C4, T', H', W')
        if self.mode == "backbone":
            return DynamoOutput(self.classifier(feats.mean(dim=(2, 3, 4))), None, None)
        if self.mode == "pretrain":
            filters = self.motion(feats)  # (B, T, s, s)
            return DynamoOutput(None, apply_dynamic_filters(x, filters), filters)
        filters, ar = self._branches(feats)
        pred = apply_dynamic_filters(x, filters)  # raw [0, 1] frames t → predictions of t+1
        return DynamoOutput(self.classify(ar, self.dmr(filters)), pred, filters)

    def _branches(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """joint/no_fp: features → (filters ``(B, T, s, s)``, AR ``(B, ar_dim)``) via the shared convs."""
        h_motion, h_ar = self.branch_convs(feats).mean(dim=(2, 3, 4)).chunk(len(_BRANCHES), dim=1)
        return self.motion.from_pooled(h_motion), self.appearance.from_pooled(h_ar)

    def extract_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip-level ``(AR (B, ar_dim), DMR (B, dmr_dim))`` for video-level fusion (STFN).

        Raises:
            ValueError: in ``pretrain`` or ``backbone`` mode, which have no AR/DMR heads.
        """
        if self.mode not in ("joint", "no_fp"):
            raise ValueError(f"mode: extract_features needs the AR/DMR heads (joint or no_fp), model is {self.mode!r}")
        self._check_input(x)
        filters, ar = self._branches(self.backbone((x - self.mean) / self.std))
        return ar, self.dmr(filters)

    def classify(self, ar: torch.Tensor, dmr: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` of clip-level AR ``(B, ar_dim)`` and DMR ``(B, dmr_dim)``
        (§3.2: the two representations concatenated, then the classifier)."""
        return self.classifier(torch.cat([ar, dmr], dim=1))  # (B, ar_dim + dmr_dim) → (B, num_classes)

    def head_parameter_names(self) -> list[str]:
        """Names of the parameters whose shape depends on ``num_classes`` (empty in ``pretrain``)."""
        if not hasattr(self, "classifier"):
            return []
        return [f"classifier.fc.{n}" for n, _ in self.classifier.fc.named_parameters()]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer by a freshly initialised one with ``num_classes`` outputs."""
        if not hasattr(self, "classifier"):
            raise ValueError(f"mode: a {self.mode!r} model has no classifier")
        if num_classes < 1:
            raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
        old = self.classifier.fc
        self.classifier.fc = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        self.num_classes = num_classes

    def adapt_state_dict(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]], list[str]]:
        """Translate per-branch head-conv entries to this model's layout (for checkpoint loading).

        A ``joint``/``no_fp`` model stores both branches' conv layers in ``branch_convs.*`` (rows
        ``[k·c, (k+1)·c)`` = branch k, c = head channels); ``pretrain`` models and older
        checkpoints have ``motion.convs.*`` / ``appearance.convs.*``. Entries of the other layout
        are converted: per-branch → merged (a branch missing from ``state`` keeps this model's
        current values), merged → ``motion.convs.*`` (the motion rows). Tensors whose shapes do
        not fit are left untouched (they then show up as mismatched / unexpected).

        Returns:
            ``(state, used, absent)``: the converted mapping; for each converted entry the
            ``state`` names it came from; the per-branch names a merged entry did not find.
        """
        out, used, absent = dict(state), {}, []
        for key, mine in self.state_dict().items():
            if key in state:
                continue
            if key.startswith("branch_convs."):  # per-branch → merged
                suffix = key[len("branch_convs."):]
                merged, found, lacking = mine.detach().clone(), [], []
                rows = merged.shape[0] // len(_BRANCHES) if merged.dim() else 0
                for k, branch in enumerate(_BRANCHES):
                    name, src = f"{branch}.convs.{suffix}", state.get(f"{branch}.convs.{suffix}")
                    if src is None:
                        lacking.append(name)
                    elif merged.dim() == 0:  # BN num_batches_tracked: the first branch's count
                        merged = src.detach().clone() if not found else merged
                        found.append(name)
                    elif tuple(src.shape) == (rows, *merged.shape[1:]):
                        merged[k * rows : (k + 1) * rows] = src
                        found.append(name)
                if found:
                    out[key], used[key] = merged, found
                    absent += lacking
                    for name in found:
                        del out[name]
            elif key.startswith("motion.convs."):  # merged → the motion rows
                name = "branch_convs." + key[len("motion.convs."):]
                src = state.get(name)
                if src is not None and (src.dim() == 0 or tuple(src.shape[1:]) == tuple(mine.shape[1:])):
                    out[key], used[key] = (src if src.dim() == 0 else src[: mine.shape[0]]), [name]
                    del out[name]
        return out, used, absent

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, mode={self.mode!r}, clip_len={self.clip_len}, kernel_size={self.kernel_size}"


def _load_per_branch_checkpoint(module: DynamoNet, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: a checkpoint with both branches' per-branch conv entries
    (saved before the merge) is converted in place to ``branch_convs.*``."""
    local = {k[len(prefix):]: v for k, v in state_dict.items()
             if k.startswith(tuple(f"{prefix}{b}.convs." for b in _BRANCHES))}
    if not local:
        return
    converted, used, absent = module.adapt_state_dict(local)
    if absent:  # incomplete: leave it to strict loading to report
        return
    for name in local:
        del state_dict[prefix + name]
    state_dict.update({prefix + k: v for k, v in converted.items()})

