"""TensorBoard event files for a Ray Train run, written by the Train controller.

A :class:`ray.train.UserCallback` runs in the controller process after every
``ray.train.report``; it writes rank 0's numeric metrics at ``step = epoch``. Keys such as
``train/loss_fp`` and ``val/top1`` become TensorBoard groups. Watch with
``tensorboard --logdir <storage_path>/<run>/tensorboard``.

For a run stored on S3 the events are written to a local directory of the controller's node
(``upload_uri`` set) and the directory is copied to ``<run>/tensorboard/`` on the storage after
every report with ``pyarrow.fs.copy_files``, so the curves live with the checkpoints and any
machine can download or watch them.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ray.train import UserCallback

from dynamonet import storage


class TensorBoardCallback(UserCallback):
    """Write reported metrics to ``logdir`` (created lazily in the controller process) and, when
    ``upload_uri`` is set (``s3://…/<run>/tensorboard``), copy the event files there after each report."""

    def __init__(self, logdir: str, upload_uri: str = "", endpoint: str = "") -> None:
        self.logdir = logdir
        self.upload_uri, self.endpoint = upload_uri, endpoint
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
        if self.upload_uri:
            self.upload()

    def upload(self) -> None:
        """Copy the event files to ``upload_uri`` (whole files: S3 objects are replaced, never appended)."""
        import pyarrow.fs as pafs

        fs, path = storage.open_fs(self.upload_uri, self.endpoint)
        pafs.copy_files(os.path.abspath(self.logdir), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)

    def __getstate__(self) -> dict[str, Any]:  # the writer never travels between processes
        return {**self.__dict__, "_writer": None}
