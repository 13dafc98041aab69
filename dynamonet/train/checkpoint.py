"""Checkpoints: everything needed to resume exactly, readable with ``weights_only=True``.

A checkpoint directory holds ``checkpoint.pt``, a dict of tensors and plain values only:
``model`` (state dict, no DDP prefix), ``optimizer``, ``schedule``, ``scaler``, ``epoch``
(completed epochs), ``step``, ``config`` (the resolved config dict), ``class_names`` and
``metrics``, ``transcode`` (the dataset's canonical video format) and ``kind`` (``dynamonet``, or
``stfn`` for a video-level fusion network). No pickled Python objects, so loading a checkpoint from someone else can not run code.
"""

from __future__ import annotations

import io
import os
import posixpath
from typing import Any

import torch
from torch import nn

from dynamonet import storage

CHECKPOINT_FILE = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / compiled wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_checkpoint(directory: str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    schedule: Any, scaler: Any, epoch: int, step: int, config: dict[str, Any],
                    class_names: list[str], metrics: dict[str, float], transcode: dict | None = None,
                    kind: str = "dynamonet") -> str:
    """Write ``checkpoint.pt`` into a local ``directory`` and return its path."""
    os.makedirs(directory, exist_ok=True)
    state = {
        "format_version": 1,
        "kind": kind,  # dynamonet | stfn (video-level fusion, dynamonet/train/stfn.py)
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "schedule": schedule.state_dict() if schedule is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "step": int(step),
        "config": config,
        "class_names": list(class_names),
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "transcode": dict(transcode or {}),  # the dataset's canonical video format
    }
    path = os.path.join(directory, CHECKPOINT_FILE)
    torch.save(state, path)
    return path


def restore_training_state(state: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                           schedule: Any, scaler: Any) -> tuple[int, dict[str, float]]:
    """Load a checkpoint's ``state`` (as written by :func:`save_checkpoint`) into freshly built
    objects to resume exactly: model (DDP-wrapped or not), optimiser, schedule and the AMP
    ``GradScaler`` (its scale, growth tracker and factors; a checkpoint of a run without fp16 has
    none, and the scaler keeps its initial state). Returns (completed epochs, metrics)."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), dict(state.get("metrics") or {})


def best_metric(cfg: Any) -> tuple[str, str] | None:
    """``(metric, mode)`` that picks a run's best checkpoint: ``val/top1`` with a classifier, the
    validation frame-prediction loss in pretraining; None without a validation split."""
    if not cfg.data.val_split:
        return None
    return ("val/loss_fp", "min") if cfg.model.mode == "pretrain" else ("val/top1", "max")


def resolve_checkpoint(uri: str, endpoint: str = "") -> str:
    """Accept a ``checkpoint.pt`` file, a checkpoint directory (``checkpoint_epochNNNN``,
    ``checkpoint_best``), or a run directory (its latest epoch checkpoint)."""
    fs, path = storage.resolve_filesystem(uri, endpoint)
    info = fs.get_file_info(path)
    if info.type == storage.pafs.FileType.File:
        return uri
    if info.type == storage.pafs.FileType.NotFound:
        raise ValueError(f"run.init_from: checkpoint not found: {uri}")
    if storage.exists(fs, posixpath.join(path, CHECKPOINT_FILE)):
        return uri.rstrip("/") + "/" + CHECKPOINT_FILE
    ckpts = storage.list_checkpoints(fs, path)
    if not ckpts:
        raise ValueError(f"run.init_from: no {CHECKPOINT_FILE} in {uri} or its checkpoint_epoch* folders")
    rel = posixpath.relpath(ckpts[-1][1], path)
    return uri.rstrip("/") + "/" + rel + "/" + CHECKPOINT_FILE


def load_checkpoint(uri: str, endpoint: str = "", map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (file, checkpoint dir or run dir; local or S3) with ``weights_only=True``."""
    uri = resolve_checkpoint(uri, endpoint)
    fs, path = storage.resolve_filesystem(uri, endpoint)
    data = storage.read_bytes(fs, path)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"run.init_from: {uri} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "model" not in state:
        # A foreign checkpoint: {"state_dict": ...} (Lightning, 3D-ResNets-PyTorch) or a bare state dict.
        inner = state.get("state_dict", state)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = {"model": inner, "epoch": 0, "config": None, "class_names": []}
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"run.init_from: {uri} holds no model state dict")
    return state
