"""Evaluate a checkpoint on a split: paper §4.3 "Testing", §4.6 / Tab. 3.

    checkpoint ──► config + class names ──► Ray Data eval stream (every non-overlapping clip,
    centre crop) ──► the same ``validate`` as training ──► video top-1/top-5 (mean of the clip
    scores of each video), clip accuracy, per-class accuracy, confusion matrix PNG, and
    frame-prediction SSIM/PSNR next to the copy-last-frame baseline.

Decoding runs in Ray Data tasks. The model runs in this process on a single node (``--device
cuda`` for a GPU); on a multi-node cluster it runs in one Ray task placed like a Train worker
(``train.worker_resources``, a GPU with ``--device cuda``), the decoders on the decode nodes, and
the reports go next to the checkpoint in storage (``<run>/eval/<split>/``). A checkpoint trained
on a cluster evaluates on a single node too: its placement resources are dropped there. For
UCF101/HMDB51 give one checkpoint per official split: the mean over the splits is reported, as in
the paper's tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import tempfile
from dataclasses import replace
from typing import Any

import torch

from dynamonet import storage
from dynamonet.cli import check_set_items
from dynamonet.config import HOLDOUT, Config
from dynamonet.data.shards import read_video_ids
from dynamonet.eval_metrics import per_class_accuracy
from dynamonet.train.checkpoint import load_checkpoint

COLUMNS = ["clip", "label", "video_index", "clip_index", "status"]


def load_for_eval(checkpoint: str, overrides: list[str] | None = None, endpoint: str = ""
                  ) -> tuple[Config, dict[str, Any]]:
    """``(config, state)`` of a checkpoint, with ``key=value`` overrides applied to its config.

    ``endpoint`` is the S3 endpoint the checkpoint is read from ("" = ``AWS_ENDPOINT_URL`` or AWS).
    """
    state = load_checkpoint(checkpoint, endpoint)
    if not state.get("config"):
        raise ValueError(f"--checkpoint: {checkpoint} carries no DynamoNet config; evaluate needs one of ours")
    cfg = Config.from_dict(state["config"])
    for item in check_set_items(overrides or []):
        key, value = item.split("=", 1)
        cfg = cfg.override(key.strip(), value)
    return cfg, state


def checkpoint_kind(checkpoint: str, endpoint: str = "") -> str:
    """``dynamonet`` or ``stfn`` (checkpoints written before the field existed are DynamoNet's)."""
    return str(load_checkpoint(checkpoint, endpoint).get("kind") or "dynamonet")


def eval_overrides(sets: list[str], data_root: str = "", endpoint: str = "") -> list[str]:
    """evaluate.py's overrides: every clip of every video (§4.3), the endpoint, ``--set``, ``--data``."""
    return ["data.max_eval_clips=0", *([f"data.s3_endpoint={endpoint}"] if endpoint else []),
            *check_set_items(sets), *([f"data.root={data_root}"] if data_root else [])]


def eval_split(cfg: Config, split: str = "") -> str:
    """The split scored: ``split``, else the config's ``data.val_split``, else ``val``; a run that
    validated on the part held out of its training split (``data.val_split=holdout``) is scored on
    the official ``test`` split, which only evaluation reads (``--split holdout`` scores the held-out part)."""
    if split:
        return split
    return "test" if cfg.data.val_split == HOLDOUT else cfg.data.val_split or "val"


def build_eval_model(cfg: Config, state: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from dynamonet.models import build_model_from_config

    model = build_model_from_config(cfg, len(state["class_names"]) or cfg.model.num_classes)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def evaluate_checkpoint(checkpoint: str, *, split: str = "", overrides: list[str] | None = None,
                        device: str = "cpu", batch_size: int = 0, out_dir: str | None = "",
                        endpoint: str = "") -> dict[str, Any]:
    """Evaluate one checkpoint; writes metrics.json, per_class.csv and confusion_matrix.png to ``out_dir``.

    ``out_dir`` None means :func:`default_out_dir` of the split actually scored; "" writes nothing.
    ``endpoint`` is the S3 endpoint of the checkpoint (see :func:`load_for_eval`).
    """
    import ray

    from dynamonet.cluster.runtime import cluster_info
    from dynamonet.data import open_dataset
    from dynamonet.train.ray_train import effective_data, init_ray

    cfg, state = load_for_eval(checkpoint, overrides, endpoint)
    init_ray(cfg)
    info = cluster_info()
    cfg = placement(cfg, info)
    split = eval_split(cfg, split)
    if out_dir is None:
        out_dir = default_out_dir(checkpoint, split)
    data = cfg.data if cfg.data.root else effective_data(cfg)
    manifest = open_dataset(data)
    class_names = state["class_names"] or list(manifest.class_names)
    if cfg.model.mode != "pretrain" and list(manifest.class_names) != list(class_names):
        raise ValueError(f"data.root: the classes of {data.root} differ from the checkpoint's "
                         f"({len(manifest.class_names)} vs {len(class_names)}); fine-tune first")
    data = replace(data, batch_size=batch_size or data.batch_size)
    args = (cfg, data, split, manifest, class_names, device)
    if info.multinode:  # the model runs where Train workers run; this driver only orchestrates
        resources = {"num_cpus": cfg.train.cpus_per_worker, "resources": cfg.train.worker_resources or None,
                     "num_gpus": 1 if device.startswith("cuda") else 0}
        res, confusion, ds_info, predictions = ray.get(
            ray.remote(**resources)(score_split).remote(ray.put(state), *args))
    else:
        res, confusion, ds_info, predictions = score_split(state, *args)
    out: dict[str, Any] = {"checkpoint": checkpoint, "epoch": state.get("epoch"), "split": split,
                           "data_root": data.root, "num_videos": ds_info.num_videos, "num_clips": ds_info.num_clips,
                           "clips_per_video": ds_info.num_clips / max(ds_info.num_videos, 1),
                           "max_eval_clips": data.max_eval_clips,
                           "metrics": {k: v for k, v in res.items() if not _nan(v)}}
    if confusion is not None:
        acc = per_class_accuracy(confusion)
        out["per_class_top1"] = {c: (None if _nan(a) else float(a)) for c, a in zip(class_names, acc.tolist(), strict=True)}
    if predictions:
        names = read_video_ids(manifest, data.source_split(split), data.s3_endpoint)
        out["predictions"] = [{"video_id": names.get(v, ""), "label": class_names[y] if y >= 0 else "", "predicted": class_names[p],
                               "score": s} for v, y, p, s in predictions]
    if out_dir:
        write_reports(out, confusion, class_names, out_dir, cfg.data.s3_endpoint)
        out["reports"] = out_dir
    return out


def local_placement(cfg: Config) -> Config:
    """A checkpoint's config on a single node: no custom placement resources (no node offers them)."""
    return cfg.override("train.worker_resources", {}).override("data.decode_resources", {})


def placement(cfg: Config, info: Any = None) -> Config:
    """A checkpoint's config placed on the connected Ray: trainer and decode nodes on a multi-node
    cluster (:func:`~dynamonet.cluster.runtime.resolve_for_cluster`), no custom resources on one node."""
    from dynamonet.cluster.runtime import cluster_info, resolve_for_cluster

    info = info or cluster_info()
    return resolve_for_cluster(cfg, info) if info.multinode else local_placement(cfg)


def score_split(state: dict[str, Any], cfg: Config, data: Any, split: str, manifest: Any, class_names: list[str],
                device: str) -> tuple[dict[str, float], torch.Tensor | None, Any, list[tuple[int, int, int, float]]]:
    """Every clip of ``split`` through the checkpoint's model: ``(metrics, confusion, dataset info,
    predictions)``, where ``predictions`` holds ``(video_index, label, predicted class, its mean score)``
    per video (empty for a pretraining checkpoint).

    Runs in the evaluating process or, on a cluster, in a Ray task (``state`` may be an object ref)."""
    import ray

    from dynamonet.data import build_clip_dataset
    from dynamonet.train.engine import validate
    from dynamonet.train.worker import amp_dtype_for, guarded

    if isinstance(state, ray.ObjectRef):
        state = ray.get(state)
    ds, info = build_clip_dataset(data, split, training=False, num_consumers=1, manifest=manifest)
    dev = torch.device(device)
    model = build_eval_model(cfg, state, dev)
    batches = guarded(ds.select_columns(COLUMNS).iter_torch_batches(batch_size=data.batch_size, device=dev))
    res = validate(model, batches, cfg, dev, len(class_names), amp_dtype_for(cfg, dev), prefix="eval")
    predictions: list[tuple[int, int, int, float]] = []
    if res.video_scores is not None:
        ids, scores, labels = res.video_scores.mean_scores()  # (V,), (V, K), (V,)
        if ids:
            top, cls = scores.max(1)
            predictions = list(zip(ids, labels.tolist(), cls.tolist(), top.tolist(), strict=True))
    return res.metrics, res.confusion, info, predictions


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def run_dir(checkpoint: str) -> str:
    """The run directory of a checkpoint (run dir, checkpoint dir or .pt), local (absolute) or in object storage."""
    base = checkpoint.split("?", 1)[0].rstrip("/")
    if base.endswith(".pt"):
        base = posixpath.dirname(base) if storage.is_remote(base) else os.path.dirname(os.path.abspath(base))
    elif not storage.is_remote(base):
        base = os.path.abspath(base)
    return posixpath.dirname(base) if posixpath.basename(base).startswith("checkpoint_") else base


def default_out_dir(checkpoint: str, split: str) -> str:
    """``<run>/eval/<split>`` next to the checkpoint, local or in object storage (split: the one scored)."""
    run = run_dir(checkpoint)
    return storage.join_uri(run, "eval", split or "val") if storage.is_remote(run) else os.path.join(run, "eval",
                                                                                                     split or "val")


def write_reports(result: dict[str, Any], confusion: torch.Tensor | None, class_names: list[str], out_dir: str,
                  endpoint: str = "") -> None:
    """metrics.json, per_class.csv, predictions.csv (one row per video) and confusion_matrix.png in
    ``out_dir`` (local or ``s3://``)."""
    predictions = result.get("predictions") or []
    with tempfile.TemporaryDirectory(prefix="dynamonet-eval-") as tmp:
        with open(os.path.join(tmp, "metrics.json"), "w") as fh:
            json.dump({k: v for k, v in result.items() if k != "predictions"}, fh, indent=2)
        if predictions:
            with open(os.path.join(tmp, "predictions.csv"), "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(predictions[0]))
                writer.writeheader()
                writer.writerows({**p, "score": f"{p['score']:.6f}"} for p in predictions)
        if confusion is not None:
            buf = io.StringIO()
            buf.write("class,videos,top1\n")
            for name, row, acc in zip(class_names, confusion.tolist(), per_class_accuracy(confusion).tolist(),
                                      strict=True):
                buf.write(f"{name},{sum(row)},{'' if math.isnan(acc) else f'{acc:.4f}'}\n")
            with open(os.path.join(tmp, "per_class.csv"), "w") as fh:
                fh.write(buf.getvalue())
            plot_confusion(confusion, class_names, os.path.join(tmp, "confusion_matrix.png"))
        storage.upload_dir(tmp, out_dir, endpoint)


def plot_confusion(cm: torch.Tensor, class_names: list[str], path: str) -> None:
    """Row-normalised confusion matrix (true class in rows) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    norm = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)
    size = min(4 + 0.35 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"video-level confusion ({int(cm.sum())} videos)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_over_splits(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every metric present in all results (UCF101/HMDB51 protocol: splits 1–3)."""
    keys = set.intersection(*(set(r["metrics"]) for r in results))
    return {k: sum(r["metrics"][k] for r in results) / len(results) for k in sorted(keys)}
