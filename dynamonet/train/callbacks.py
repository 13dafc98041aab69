"""Train controller callbacks: TensorBoard events with the run's hyperparameters, and a copy of the
best checkpoint.

A :class:`ray.train.UserCallback` runs in the Train controller process (on the driver's node)
after every ``ray.train.report``, with rank 0's metrics and the checkpoint just persisted:

    report ──► TensorBoardCallback      scalars at step = epoch; the HParams session (hyperparameters
           │                            and the metrics they are judged by) once, at the first report;
           │                            for an s3:// run the event files are copied to <run>/tensorboard
           │                            after every report (pyarrow.fs.copy_files)
           └─► BestCheckpointCallback   when a fresh validation beats the best so far, the checkpoint is
                                        copied to <run>/checkpoint_best (server-side on S3), with
                                        best.json saying which epoch and value

Ray's ``CheckpointConfig(num_to_keep)`` keeps the latest epoch checkpoints and deletes the older
ones; the best lives on as a copy that Ray's own bookkeeping never references, so a resumed run
never finds a checkpoint it recorded missing. Watch with ``tensorboard --logdir <storage_path>``
(s3:// works through TensorBoard's own S3 reader, see docs/training.md).
"""

from __future__ import annotations

import json
import math
import posixpath
from typing import Any

from ray.train import UserCallback

from dynamonet import storage
from dynamonet.train.checkpoint import CHECKPOINT_FILE


def _hparam_value(v: Any) -> Any:
    """HParams take bool, int, float and str; anything else (a list, a dict) is shown as text."""
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v)


class TensorBoardCallback(UserCallback):
    """Write reported metrics to ``logdir`` (created lazily in the controller process); when
    ``upload_uri`` is set (``s3://…/<run>/tensorboard``), copy the event files there after each
    report. ``hparams`` become the run's HParams session, judged by ``metrics``."""

    def __init__(self, logdir: str, upload_uri: str = "", endpoint: str = "", hparams: dict[str, Any] | None = None,
                 metrics: tuple[str, ...] = ("val/top1", "val/loss", "train/loss")) -> None:
        self.logdir = logdir
        self.upload_uri, self.endpoint = upload_uri, endpoint
        self.hparams, self.metrics = dict(hparams or {}), metrics
        self._writer = None

    def _get_writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.logdir)
            if self.hparams:
                self._write_hparams()
        return self._writer

    def _write_hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        exp, ssi, _ = hparams({k: _hparam_value(v) for k, v in self.hparams.items()},
                              dict.fromkeys(self.metrics, math.nan))
        self._writer.file_writer.add_summary(exp)  # the experiment: which hyperparameters and metrics
        self._writer.file_writer.add_summary(ssi)  # this run's session: its values (metrics: the scalars)

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
        storage.upload_dir(self.logdir, self.upload_uri, self.endpoint)

    def __getstate__(self) -> dict[str, Any]:  # the writer never travels between processes
        return {**self.__dict__, "_writer": None}


class BestCheckpointCallback(UserCallback):
    """Keep ``<run>/checkpoint_best``: a copy of the checkpoint with the best fresh ``metric``.

    The run's directory and filesystem are those of the checkpoint Ray has just persisted
    (``<run>/checkpoint_epochNNNN`` on the run's storage), so the copy is a same-filesystem copy.
    """

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self._best: float | None = None
        self._loaded = False

    def _better(self, value: float) -> bool:
        if self._best is None:
            return True
        return value > self._best if self.mode == "max" else value < self._best

    def _load(self, fs: Any, best_dir: str) -> None:
        """The best so far of an earlier attempt of this run (a resumed driver)."""
        self._loaded = True
        info = posixpath.join(best_dir, "best.json")
        if storage.is_file(fs, info):
            self._best = float(json.loads(storage.read_bytes(fs, info))["value"])

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or checkpoint is None:
            return
        m = metrics[0]
        value, epoch = m.get(self.metric), int(m.get("epoch", 0))
        fresh = m.get("val/epoch") == float(epoch)  # validated in this epoch, not carried over
        if not fresh or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        fs = checkpoint.filesystem
        best_dir = posixpath.join(posixpath.dirname(checkpoint.path.rstrip("/")), storage.BEST_CHECKPOINT)
        if not self._loaded:
            self._load(fs, best_dir)
        if not self._better(float(value)):
            return
        storage.copy_file(fs, posixpath.join(checkpoint.path, CHECKPOINT_FILE), posixpath.join(best_dir, CHECKPOINT_FILE))
        body = {"metric": self.metric, "mode": self.mode, "value": float(value), "epoch": epoch,
                "copied_from": posixpath.basename(checkpoint.path.rstrip("/"))}
        storage.write_bytes(fs, posixpath.join(best_dir, "best.json"), json.dumps(body, indent=1).encode())
        self._best = float(value)
