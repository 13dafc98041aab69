"""Optimiser and learning-rate schedule of paper §4.3.

SGD with Nesterov momentum 0.9 and weight decay 1e-4; lr 0.1 at batch 64, scaled linearly with
the global batch (Goyal et al.), divided by 10 when the validation loss stops improving. Linear
warm-up and cosine decay are options for short or large-batch runs.

The schedule is a small class of our own rather than a ``torch.optim.lr_scheduler`` chain so that
its whole state is plain numbers: checkpoints stay loadable with ``torch.load(weights_only=True)``
and a resumed run continues the schedule exactly where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dynamonet.config import OptimConfig


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule: ``lr * global_batch / lr_batch`` (paper: 0.1 at batch 64)."""
    return cfg.lr * global_batch / cfg.lr_batch


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.SGD:
    """SGD (Nesterov) with no weight decay on BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    lr = scaled_lr(cfg, global_batch)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


class LRSchedule:
    """Per-step learning rate: warm-up, then cosine / constant, times a plateau factor.

    Args:
        optimizer: the optimiser whose groups are updated in place.
        cfg: the optimiser config.
        base_lr: the scaled learning rate.
        steps_per_epoch: optimiser steps per epoch.
        epochs: total epochs (for cosine).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, base_lr: float,
                 steps_per_epoch: int, epochs: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.base_lr = base_lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = self.steps_per_epoch * epochs
        self.step_count = 0
        self.plateau_scale = 1.0
        self.best_loss = math.inf
        self.bad_epochs = 0
        self._apply()

    def lr(self) -> float:
        """The learning rate for the current step."""
        cfg, s = self.cfg, self.step_count
        warm = cfg.warmup_epochs * self.steps_per_epoch
        if warm > 0 and s < warm:
            factor = (s + 1) / warm
        elif cfg.schedule == "cosine":
            progress = min(1.0, (s - warm) / max(1.0, self.total_steps - warm))
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0
        return max(cfg.min_lr, self.base_lr * factor * self.plateau_scale)

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Advance one optimiser step."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_loss: float | None) -> bool:
        """Plateau rule (paper §4.3): divide the lr when the val loss stalls. Returns True if it did."""
        if self.cfg.schedule != "plateau" or val_loss is None or not math.isfinite(val_loss):
            return False
        if val_loss < self.best_loss * (1 - 1e-4):
            self.best_loss, self.bad_epochs = val_loss, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_epochs = 0
            self._apply()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "plateau_scale": self.plateau_scale,
                "best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best_loss = float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()
