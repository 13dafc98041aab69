"""TensorBoard event files for a Ray Train run, written by the Train controller.

A :class:`ray.train.UserCallback` runs in the controller process after every
``ray.train.report``; it writes rank 0's numeric metrics at ``step = epoch``. Keys such as
``train/loss_fp`` and ``val/top1`` become TensorBoard groups. Watch with
``tensorboard --logdir <storage_path>/<run>/tensorboard``.
"""

from __future__ import annotations

import math
from typing import Any

from ray.train import UserCallback


class TensorBoardCallback(UserCallback):
    """Write reported metrics to ``logdir`` (created lazily in the controller process)."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self._writer = None

    def _get_writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.logdir)
        return self._writer

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        step = int(m.get("epoch", 0))
        writer = self._get_writer()
        for key, value in m.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(key, value, step)
        writer.flush()

    def __getstate__(self) -> dict[str, Any]:  # the writer never travels between processes
        return {"logdir": self.logdir, "_writer": None}
