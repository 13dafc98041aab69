"""The per-worker training function run by Ray Train's TorchTrainer (one per DDP rank).

Plain PyTorch with the few Ray lines marked ``# RAY``, in the style of Ray's Train examples:

    config dict ──► Config ──► model (DDP via prepare_model) ──► resume from get_checkpoint()
    for epoch: publish_epoch(train stream, epoch)      (the decoders draw for this epoch)
               get_dataset_shard("train").iter_torch_batches ──► train_one_epoch
               get_dataset_shard("val").iter_torch_batches   ──► validate
               ray.train.report(metrics, checkpoint)   (every rank, every epoch: it is a barrier)

Every report carries the latest validation metrics (``val/epoch`` says which epoch measured them),
so a scheduler that ranks on ``val/top1`` has it at every epoch, also with ``train.eval_every > 1``.
A data stream that fails raises :class:`~dynamonet.data.dataset.DataStreamError`, one line naming
the shard at fault.

Paper §3.2–3.3 (joint and self-supervised training), §4.3 (optimiser, schedule).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from dynamonet import storage
from dynamonet.config import Config
from dynamonet.data.dataset import DataStreamError, describe_data_error, publish_epoch
from dynamonet.models import build_model_from_config
from dynamonet.train.checkpoint import CHECKPOINT_FILE, restore_training_state, save_checkpoint
from dynamonet.train.engine import Progress, emit, train_one_epoch, validate
from dynamonet.train.optim import LRSchedule, build_optimizer, scaled_lr


def amp_dtype_for(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 otherwise (e.g. P100); nothing on CPU."""
    if device.type != "cuda" or cfg.train.amp == "off":
        return None
    if cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def make_deterministic(cfg: Config, device: torch.device) -> None:
    """``train.deterministic`` on GPU: deterministic cuDNN/cuBLAS kernels (docs/training.md).

    CPU kernels of this model are deterministic for a fixed thread count already. On CUDA,
    cuDNN's autotuner and atomics-based kernels (3D convolution backward, scatter/index_add)
    make runs differ; ``warn_only`` keeps ops that have no deterministic CUDA kernel running,
    with one warning naming them, instead of failing the run."""
    if not cfg.train.deterministic or device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its handle
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of ``epoch`` on ``rank`` (dropout): a pure function of the three, so a run
    resumed at epoch e draws what an uninterrupted run drew there (the data draws come from
    ``(seed, epoch, video, draw index)`` in the same way, see dynamonet/data/decode.py)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _threads(cfg: Config, local_world: int) -> int:
    if cfg.train.torch_threads > 0:
        return cfg.train.torch_threads
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def _quiet_report_logs() -> None:
    """Ray 2.60 logs every report with all its metrics at INFO through a logger named after its
    source file, which ``LoggingConfig(log_level)`` does not reach; our own epoch line says the same."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray layout: keep its logs
        pass


def guarded(batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The batches of a Ray Data stream; a failure of the stream becomes one DataStreamError line."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise DataStreamError(describe_data_error(e)) from e
        yield batch


DRAW_COLUMNS = ("video_index", "clip_index", "start", "crop", "flip")


def recording(batches: Iterable[dict[str, Any]], rows: list[list[int]]) -> Iterator[dict[str, Any]]:
    """Pass batches through, appending each real clip's draw (video, clip, window start, crop, flip)."""
    for batch in batches:
        ok = (batch["status"] == 0).cpu()
        cols = [batch[c].cpu()[ok].tolist() for c in DRAW_COLUMNS]
        rows.extend([int(v) for v in row] for row in zip(*cols, strict=True))
        yield batch


def write_draws(run_uri: str, endpoint: str, epoch: int, rank: int, rows: list[list[int]]) -> None:
    """``<run>/draws/epoch_NNNN/rank_R.json``: the draws this rank trained on in ``epoch`` (1-based)."""
    fs, run_path = storage.resolve_filesystem(run_uri, endpoint)
    body = json.dumps({"columns": list(DRAW_COLUMNS), "rows": sorted(rows)}).encode()
    storage.write_bytes(fs, posixpath.join(run_path, "draws", f"epoch_{epoch:04d}", f"rank_{rank}.json"), body)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, float]:
    """Train ``loop_config["config"]`` on this rank's shards; returns rank 0's last metrics."""
    _quiet_report_logs()
    cfg = Config.from_dict(loop_config["config"])
    num_classes, class_names = loop_config["num_classes"], loop_config["class_names"]
    ctx = ray.train.get_context()  # RAY
    rank = ctx.get_world_rank()
    torch.set_num_threads(_threads(cfg, ctx.get_local_world_size()))
    device = ray.train.torch.get_device()  # RAY
    make_deterministic(cfg, device)
    torch.manual_seed(cfg.train.seed)  # initialisation (DDP then broadcasts rank 0's weights)
    amp_dtype = amp_dtype_for(cfg, device)

    model = build_model_from_config(cfg, num_classes)
    if loop_config.get("init_state") is not None:
        model.load_state_dict(ray.get(loop_config["init_state"]))  # RAY: weights put by the driver
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model = ray.train.torch.prepare_model(model)  # RAY: to(device) + DDP
    global_batch = cfg.data.batch_size * ctx.get_world_size()
    optimizer = build_optimizer(model, cfg.optim, global_batch)
    steps = loop_config["steps_per_epoch"]
    schedule = LRSchedule(optimizer, cfg.optim, scaled_lr(cfg.optim, global_batch), steps, cfg.train.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, metrics = 0, {}
    checkpoint = ray.train.get_checkpoint()  # RAY: the latest one after a restart or a re-run
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=True)
        start_epoch, metrics = restore_training_state(state, model=model, optimizer=optimizer, schedule=schedule,
                                                      scaler=scaler)
        if rank == 0:
            emit(f"[train] resumed from checkpoint at epoch {start_epoch}")

    resumed_from = start_epoch  # recorded in every later report and checkpoint (result.json too)
    train_shard = ray.train.get_dataset_shard("train")  # RAY
    val_shard = ray.train.get_dataset_shard("val") if cfg.data.val_split else None  # RAY
    batch_kw = {"batch_size": cfg.data.batch_size, "device": device, "drop_last": False, "prefetch_batches": 2}
    last_val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    if start_epoch >= cfg.train.epochs:  # re-run of a finished run: report its final state once more
        if val_shard is not None:
            res = validate(model, guarded(val_shard.iter_torch_batches(**batch_kw)), cfg, device, num_classes,
                           amp_dtype)
            metrics = {**metrics, **res.metrics}
        metrics["epoch"] = start_epoch
        ray.train.report(metrics)  # RAY
        return metrics
    for epoch in range(start_epoch, cfg.train.epochs):
        progress = Progress("train", epoch, cfg.train.epochs, steps, cfg.train.log_every)
        publish_epoch(loop_config["epoch_key"], epoch)  # before iterating: the decoders draw for this epoch
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch, rank))  # dropout of this epoch and rank
        train_kw = dict(batch_kw, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                        local_shuffle_seed=(cfg.train.seed * 1_000_003 + epoch) * 1009 + rank)
        batches = guarded(train_shard.iter_torch_batches(**train_kw))
        draws: list[list[int]] = []
        if cfg.run.record_draws:
            batches = recording(batches, draws)
        metrics = train_one_epoch(model, batches, optimizer, schedule, scaler, cfg, device, progress, amp_dtype)
        if cfg.run.record_draws:
            write_draws(loop_config["run_uri"], cfg.data.s3_endpoint, epoch + 1, rank, draws)
        last = epoch + 1 == cfg.train.epochs
        if val_shard is not None and (last or (epoch + 1) % cfg.train.eval_every == 0):
            res = validate(model, guarded(val_shard.iter_torch_batches(**batch_kw)), cfg, device, num_classes,
                           amp_dtype)
            last_val = {**res.metrics, "val/epoch": float(epoch + 1)}
            schedule.epoch_end(res.metrics.get("val/loss"))
        metrics.update(last_val)  # the latest validation, also on epochs without one (val/epoch says when)
        metrics["epoch"] = epoch + 1
        metrics["run/resumed_from_epoch"] = float(resumed_from)  # 0 = this worker group started fresh
        if rank == 0:
            emit("[train] " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                       if isinstance(v, float) and math.isfinite(v)))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:  # DDP ranks hold identical weights: one copy is enough
                save_checkpoint(tmp, model=model, optimizer=optimizer, schedule=schedule, scaler=scaler,
                                epoch=epoch + 1, step=schedule.step_count, config=cfg.to_dict(),
                                class_names=class_names, metrics=metrics,
                                transcode=loop_config.get("transcode"))
                ckpt = ray.train.Checkpoint.from_directory(tmp)  # RAY
            ray.train.report(metrics, checkpoint=ckpt,  # RAY: a barrier on every rank
                             checkpoint_dir_name=f"checkpoint_epoch{epoch + 1:04d}")
    return metrics
