"""STFN on Ray Train: video-level fusion of DynamoNet's clip features (seeds/stfn-summary.txt).

    Config ──► the DynamoNet checkpoint: stfn.checkpoint, or this recipe's DynamoNet, trained first
               (or reused) as the run <recipe>-dynamonet-<hash of its config>
           ──► the config guard of the STFN run (resolve_run: same name, same config, or --force)
           ──► features of the train and validation splits (dynamonet.features: a Ray Data batch-
               inference job; reused when the checkpoint, epoch, split and clip settings match)
           ──► TorchTrainer(stfn_loop_per_worker): DDP over the training videos (every rank reads
               the feature set from storage with pyarrow and takes its DistributedSampler share: a
               seeded permutation per epoch), validation on rank 0 over the whole validation split
           ──► a checkpoint every epoch (resume), checkpoint_best by val/top1, TensorBoard,
               result.json and the final line: STFN's video top-1 beside the clip mean's (§4.3)

Videos have different clip counts: a batch is padded to its longest video and carries a mask
(:func:`dynamonet.features.collate`); STFN ignores the padding (dynamonet/models/stfn.py).
Every report carries ``val/top1`` (STFN) and ``val/clip_mean_top1`` (the mean of the same videos'
DynamoNet clip scores), so TensorBoard and Tune show both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
import yaml

from dynamonet import storage
from dynamonet.config import HOLDOUT, Config, STFNConfig
from dynamonet.features import (
    VideoResult,
    collate,
    default_features_dir,
    extract_features,
    features_uri,
    read_manifest,
    score_videos,
)

# STFN hyperparameters every run shows in TensorBoard's HParams view
STFN_HPARAM_KEYS = ("stfn.width", "stfn.depth", "stfn.kernel_sizes", "stfn.dropout", "stfn.lr", "stfn.batch_size",
                    "stfn.num_workers", "train.seed")
BEST = ("val/top1", "max")
RECIPE = "recipe:"  # run.init_from of a recipe's DynamoNet stage: another recipe's run (trained if missing)


@dataclass
class STFNSpec:
    """Everything the STFN trainer needs, resolved on the driver."""

    cfg: Config
    name: str
    storage_path: str
    run_uri: str
    checkpoint: str  # the DynamoNet checkpoint the features come from
    train_features: dict[str, Any]  # features.json of the training videos (with "uri")
    val_features: dict[str, Any] | None
    class_names: list[str]
    resumed_epoch: int = 0


# --------------------------------------------------------------------------------------------
# The DynamoNet stage
# --------------------------------------------------------------------------------------------

def backbone_config(cfg: Config) -> Config:
    """The recipe's DynamoNet run: its own sections, STFN's left at their defaults, and a name made
    from its config (the same recipe and settings find the same run again)."""
    d = cfg.to_dict()
    d["stfn"] = dataclasses.asdict(STFNConfig())
    d["run"].update(name="", resume=False, init_from=cfg.run.init_from)
    base = Config.from_dict(d)
    digest = hashlib.sha256(json.dumps(base.fingerprint(), sort_keys=True).encode()).hexdigest()[:8]
    return base.override("run.name", f"{cfg.recipe}-dynamonet-{digest}")


def _run_uri(cfg: Config) -> str:
    fs, base = storage.resolve_filesystem(cfg.run.storage_path, cfg.data.s3_endpoint)
    root = cfg.run.storage_path.rstrip("/") if storage.is_remote(cfg.run.storage_path) else base
    return f"{root}/{cfg.run.name}"


def backbone_checkpoint(cfg: Config) -> str:
    """``stfn.checkpoint``, or the checkpoint of the recipe's DynamoNet run: its best one
    (``checkpoint_best``) when it validates, else its latest."""
    if cfg.stfn.checkpoint:
        return cfg.stfn.checkpoint
    return _best_or_last(backbone_config(cfg))


def _finished(cfg: Config) -> bool:
    """The run wrote ``result.json`` after ``train.epochs`` epochs (a shorter run of the same config is not it)."""
    fs, run_path = storage.resolve_filesystem(_run_uri(cfg), cfg.data.s3_endpoint)
    path = posixpath.join(run_path, "result.json")
    if not storage.is_file(fs, path):
        return False
    return int(json.loads(storage.read_bytes(fs, path)).get("metrics", {}).get("epoch", 0)) >= cfg.train.epochs


def _best_or_last(cfg: Config) -> str:
    return storage.join_uri(_run_uri(cfg), storage.BEST_CHECKPOINT) if cfg.data.val_split else _run_uri(cfg)


def recipe_checkpoint(name: str, like: Config) -> str:
    """``run.init_from: recipe:<name>``: the checkpoint of a finished run of recipe ``name`` under
    ``like``'s storage path whose config is that recipe's (``python pipelines/train_joint.py
    --config <name>`` made it, e.g. README's first command for ``embedded``); trained here first
    when there is none."""
    from dynamonet.cli import recipe_path
    from dynamonet.config import load_config
    from dynamonet.train.ray_train import CONFIG_FILE, run_training

    keep = [f"{k}={v}" for k, v in (("run.storage_path", like.run.storage_path), ("data.cache_dir", like.data.cache_dir),
                                     ("data.s3_endpoint", like.data.s3_endpoint)) if v]
    pcfg = load_config(recipe_path(name), keep)
    fs, base = storage.resolve_filesystem(pcfg.run.storage_path, pcfg.data.s3_endpoint)
    want = pcfg.fingerprint()
    for _, run in reversed(storage.list_runs(fs, base)):  # the newest first
        stored = yaml.safe_load(storage.read_bytes(fs, posixpath.join(base, run, CONFIG_FILE)))
        if Config.from_dict(stored).fingerprint() == want and _finished(pcfg.override("run.name", run)):
            print(f"[stfn] pretrained DynamoNet (recipe {name}): reusing {run}", flush=True)
            return _best_or_last(pcfg.override("run.name", run))
    digest = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:8]
    pcfg = pcfg.override("run.name", f"{name}-{pcfg.model.mode}-{digest}")
    print(f"[stfn] pretrained DynamoNet (recipe {name}): training {pcfg.run.name}", flush=True)
    run_training(pcfg)
    return _best_or_last(pcfg)


def ensure_backbone(cfg: Config) -> None:
    """Train the recipe's DynamoNet unless it finished before (``result.json``); a run that was
    interrupted resumes from its last checkpoint (run_training's rules). ``run.init_from:
    recipe:<name>`` initialises it from that recipe's run (:func:`recipe_checkpoint`)."""
    from dynamonet.train.ray_train import run_training

    if cfg.stfn.checkpoint:
        return
    bcfg = backbone_config(cfg)
    if _finished(bcfg):
        print(f"[stfn] DynamoNet: reusing {_run_uri(bcfg)}", flush=True)
        return
    if bcfg.run.init_from.startswith(RECIPE):
        bcfg = bcfg.override("run.init_from", recipe_checkpoint(bcfg.run.init_from[len(RECIPE):], bcfg))
    print(f"[stfn] DynamoNet: training {bcfg.run.name} ({bcfg.model.arch}, {bcfg.train.epochs} epochs)", flush=True)
    result = run_training(bcfg)
    m = result["metrics"]
    print(f"[stfn] DynamoNet: done, val/top1={m.get('val/top1', float('nan')):.4f} (clip mean, §4.3) "
          f"in {result['wall_time_s']:.0f} s", flush=True)


# --------------------------------------------------------------------------------------------
# The STFN run
# --------------------------------------------------------------------------------------------

def stfn_splits(cfg: Config) -> tuple[str, str]:
    """(training split, validation split) of STFN: ``stfn.*_split``, else the DynamoNet's data splits."""
    return cfg.stfn.train_split or cfg.data.train_split, cfg.stfn.val_split or cfg.data.val_split


def _subset(cfg: Config, split: str) -> bool:
    """True when the training stream of ``split`` reads only part of it (held-out or label fraction)."""
    return split == cfg.data.train_split and (cfg.data.holdout_fraction > 0 or cfg.data.label_fraction < 1)


def prepare_features(cfg: Config) -> tuple[Config, dict[str, Any], dict[str, Any] | None]:
    """Train or reuse the DynamoNet, then extract (or reuse) the features of STFN's splits.

    Returns ``(cfg with stfn.checkpoint set, training features, validation features or None)``."""
    from dynamonet.train.ray_train import init_ray

    if cfg.stfn.checkpoint:  # a missing checkpoint: one line, before Ray starts
        from dynamonet.train.checkpoint import resolve_checkpoint

        try:
            resolve_checkpoint(cfg.stfn.checkpoint, cfg.data.s3_endpoint)
        except ValueError as e:
            raise ValueError(f"stfn.checkpoint: {str(e).split(': ', 1)[-1]}") from None
    ensure_backbone(cfg)
    init_ray(cfg)
    ckpt = backbone_checkpoint(cfg)
    base = cfg.stfn.features or default_features_dir(ckpt)
    train_split, val_split = stfn_splits(cfg)
    endpoint = cfg.data.s3_endpoint
    overrides = [f"data.s3_endpoint={endpoint}"] if endpoint else []
    if cfg.stfn.checkpoint and cfg.data.root:  # the recipe names the dataset of an external checkpoint
        overrides.append(f"data.root={cfg.data.root}")
    common = {"overrides": overrides, "device": "cuda" if cfg.train.use_gpu else "cpu",
              "actors": cfg.stfn.extract_actors, "endpoint": endpoint}
    subset = _subset(cfg, train_split)
    train = extract_features(ckpt, train_split, features_uri(base, f"{train_split}-training" if subset else train_split),
                             training_videos=subset, **common)
    val = extract_features(ckpt, val_split, features_uri(base, val_split), **common) if val_split else None
    if train["num_videos"] == 0:
        raise ValueError(f"stfn.train_split: no video of {train_split} has a decodable clip ({train['uri']})")
    return cfg.override("stfn.checkpoint", ckpt), train, val


def prepare_stfn_run(cfg: Config) -> STFNSpec:
    """Check the run (config guard), then the DynamoNet and the features; nothing trains STFN yet."""
    from dynamonet.train.ray_train import connect_for_cluster, quiet_data_context, resolve_run, save_run_config

    cfg = connect_for_cluster(cfg)
    if not cfg.run.name and not cfg.run.resume:
        cfg = cfg.override("run.name", f"{cfg.recipe}-stfn-{time.strftime('%Y%m%d-%H%M%S')}")
    given = cfg.stfn.checkpoint  # empty: this recipe's DynamoNet (trained below unless it exists)
    cfg = cfg.override("stfn.checkpoint", backbone_checkpoint(cfg))
    cfg, storage_path, run_uri = resolve_run(cfg)  # same name, same config (or --force): before any work
    cfg, train, val = prepare_features(cfg.override("stfn.checkpoint", given))
    quiet_data_context()
    fs, run_path = storage.resolve_filesystem(run_uri, cfg.data.s3_endpoint)
    spec = STFNSpec(cfg=cfg, name=cfg.run.name, storage_path=storage_path, run_uri=run_uri,
                    checkpoint=cfg.stfn.checkpoint, train_features=train, val_features=val,
                    class_names=list(train["class_names"]),
                    resumed_epoch=max((e for e, _ in storage.list_checkpoints(fs, run_path)), default=0))
    if val is not None and val["class_names"] != train["class_names"]:
        raise ValueError(f"stfn.val_split: the classes of {val['uri']} differ from {train['uri']}")
    save_run_config(cfg, run_uri)
    print(f"[stfn] features: train {train['num_videos']} videos ({train['num_clips']} clips)"
          + (f", val {val['num_videos']} videos ({val['num_clips']} clips)" if val else ", no validation")
          + f"; STFN width {cfg.stfn.width} depth {cfg.stfn.depth} kernels {cfg.stfn.kernel_sizes}, "
            f"{cfg.stfn.num_workers} worker(s) × batches of {cfg.stfn.batch_size} videos", flush=True)
    return spec


def build_stfn_trainer(spec: STFNSpec, callbacks: list | None = None, hparams: dict[str, Any] | None = None) -> Any:
    """The TorchTrainer of a prepared STFN run (also used by every Tune trial; ``hparams``: shown in
    TensorBoard's HParams view, default :data:`STFN_HPARAM_KEYS`)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from dynamonet.train.callbacks import BestCheckpointCallback, TensorBoardCallback
    from dynamonet.train.ray_train import run_hparams, tensorboard_dir

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    cfg = spec.cfg
    resources = {"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    remote = storage.is_remote(spec.run_uri)
    tb = TensorBoardCallback(tensorboard_dir(spec), posixpath.join(spec.run_uri, "tensorboard") if remote else "",
                             cfg.data.s3_endpoint, hparams=hparams or run_hparams(cfg, STFN_HPARAM_KEYS))
    best = [BestCheckpointCallback(*BEST)] if spec.val_features else []
    storage_path, storage_fs = storage.ray_storage(spec.storage_path, cfg.data.s3_endpoint)
    loop_config = {"config": cfg.to_dict(), "class_names": spec.class_names,
                   "ar_dim": spec.train_features["ar_dim"], "dmr_dim": spec.train_features["dmr_dim"],
                   "train": spec.train_features["uri"], "val": (spec.val_features or {}).get("uri")}
    return TorchTrainer(
        stfn_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.stfn.num_workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints or None),
            logging_config=ray.train.LoggingConfig(log_level=os.environ.get("DYNAMONET_TRAIN_LOG_LEVEL", "WARNING")),
            callbacks=[tb, *best, *(callbacks or [])]),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"))


def build_stfn(cfg: Config, ar_dim: int, dmr_dim: int, num_classes: int) -> torch.nn.Module:
    """The STFN of a config (``stfn.width``, ``depth``, ``kernel_sizes``, ``dropout``)."""
    from dynamonet.models.stfn import STFN

    s = cfg.stfn
    return STFN(ar_dim, dmr_dim, num_classes, width=s.width, depth=s.depth, kernel_sizes=tuple(s.kernel_sizes),
                dropout=s.dropout)


def stfn_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One DDP rank of STFN training: AdamW, cosine over the epochs, a checkpoint every epoch."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.utils.data import DistributedSampler

    from dynamonet.features import read_features
    from dynamonet.train.checkpoint import CHECKPOINT_FILE, restore_training_state, save_checkpoint
    from dynamonet.train.engine import emit
    from dynamonet.train.worker import _quiet_report_logs, _threads, epoch_seed

    _quiet_report_logs()
    cfg = Config.from_dict(loop_config["config"])
    class_names = loop_config["class_names"]
    ctx = ray.train.get_context()  # RAY
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(_threads(cfg, ctx.get_local_world_size()))
    device = ray.train.torch.get_device()  # RAY
    torch.manual_seed(cfg.train.seed)
    model = build_stfn(cfg, loop_config["ar_dim"], loop_config["dmr_dim"], len(class_names))
    model = ray.train.torch.prepare_model(model)  # RAY: to(device) + DDP
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.stfn.lr, weight_decay=cfg.stfn.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.stfn.epochs)
    start, metrics = 0, {}
    checkpoint = ray.train.get_checkpoint()  # RAY
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=True)
        start, metrics = restore_training_state(state, model=model, optimizer=optimizer, schedule=schedule, scaler=None)
        if rank == 0:
            emit(f"[stfn] resumed from checkpoint at epoch {start}")
    endpoint = cfg.data.s3_endpoint
    resumed_from = start  # 0 = this worker group started fresh
    train = read_features(loop_config["train"], endpoint)  # every rank reads the set, then takes its share
    val = read_features(loop_config["val"], endpoint) if loop_config["val"] and rank == 0 else None
    # PyTorch's DistributedSampler: a seeded permutation per epoch, padded so every rank runs the same steps
    sampler = DistributedSampler(range(train.num_rows), num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.train.seed)
    bs = cfg.stfn.batch_size
    for epoch in range(start, cfg.stfn.epochs):
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch, rank))
        sampler.set_epoch(epoch)
        order = list(sampler)
        model.train()
        t0, sums = time.perf_counter(), torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
        for i in range(0, len(order), bs):
            b = collate(train.take(order[i:i + bs]), device)
            logits = model(b.ar, b.dmr, b.mask)  # (B, K)
            loss = F.cross_entropy(logits, b.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(b.labels)
            sums += torch.tensor([loss.item() * n, (logits.argmax(1) == b.labels).sum().item(), n], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()
        metrics = {"epoch": epoch + 1, "train/loss": float(sums[0] / sums[2].clamp_min(1)),
                   "train/top1": float(sums[1] / sums[2].clamp_min(1)), "lr": lr,
                   "perf/videos_per_s": float(sums[2]) / max(time.perf_counter() - t0, 1e-9),
                   "run/resumed_from_epoch": float(resumed_from)}
        if loop_config["val"]:
            if rank == 0:
                res = score_videos(model, batches(val, 4 * bs), len(class_names), device)
                metrics.update({f"val/{k}": v for k, v in res.metrics.items()})
            if world > 1:  # every rank reports the same metrics
                box = [metrics]
                dist.broadcast_object_list(box, src=0)
                metrics = box[0]
        if rank == 0:
            emit("[stfn] " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                      if isinstance(v, (int, float)) and math.isfinite(v)))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model=model, optimizer=optimizer, schedule=schedule, scaler=None,
                                epoch=epoch + 1, step=epoch + 1, config=cfg.to_dict(), class_names=class_names,
                                metrics=metrics, kind="stfn")
                ckpt = ray.train.Checkpoint.from_directory(tmp)  # RAY
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch{epoch + 1:04d}")  # RAY


def run_stfn(cfg: Config) -> dict[str, Any]:
    """Prepare, fit, score the best checkpoint; writes ``result.json`` and returns it."""
    from dynamonet.train.ray_train import _jsonable, _root_cause

    t0 = time.perf_counter()
    spec = prepare_stfn_run(cfg)
    verb = f"resuming {spec.name!r} from epoch {spec.resumed_epoch}" if spec.resumed_epoch else repr(spec.name)
    print(f"[stfn] {verb} → {spec.run_uri}", flush=True)
    result = build_stfn_trainer(spec).fit()
    if result.error is not None:
        raise RuntimeError(f"STFN training failed: {_root_cause(result.error)}")
    fs, run_path = storage.resolve_filesystem(spec.run_uri, spec.cfg.data.s3_endpoint)
    best = posixpath.join(run_path, storage.BEST_CHECKPOINT, "checkpoint.pt")
    chosen = storage.join_uri(spec.run_uri, storage.BEST_CHECKPOINT) if storage.is_file(fs, best) else spec.run_uri
    out = {"run": spec.name, "path": spec.run_uri, "checkpoint": chosen, "dynamonet_checkpoint": spec.checkpoint,
           "metrics": {k: v for k, v in (result.metrics or {}).items() if _jsonable(v)},
           "features": {"train": spec.train_features["uri"], "val": (spec.val_features or {}).get("uri")},
           "class_names": spec.class_names, "config": spec.cfg.to_dict()}
    if spec.val_features is not None:  # the chosen checkpoint (best by val/top1) scored once more, for the final line
        res = evaluate_features(chosen, spec.val_features["uri"], spec.cfg.data.s3_endpoint)
        out["val"] = {"split": stfn_splits(spec.cfg)[1], **res.metrics}
    out["wall_time_s"] = time.perf_counter() - t0
    storage.write_bytes(fs, posixpath.join(run_path, "result.json"), json.dumps(out, indent=2).encode())
    return out


def load_stfn(checkpoint: str, endpoint: str = "", device: torch.device | str = "cpu"
              ) -> tuple[Config, dict[str, Any], torch.nn.Module]:
    """``(config, state, model in eval mode)`` of an STFN checkpoint (run dir, checkpoint dir or .pt)."""
    from dynamonet.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint, endpoint)
    if state.get("kind") != "stfn" or not state.get("config"):
        raise ValueError(f"--checkpoint: {checkpoint} is not an STFN checkpoint (train one with train_stfn.py)")
    cfg = Config.from_dict(state["config"])
    w = state["model"]
    model = build_stfn(cfg, w["ar_in.0.weight"].shape[1], w["dmr_in.0.weight"].shape[1], len(state["class_names"]))
    model.load_state_dict(w)
    return cfg, state, model.to(device).eval()


def evaluate_features(checkpoint: str, features: str, endpoint: str = "", device: str = "cpu") -> VideoResult:
    """An STFN checkpoint and the clip mean scored on one feature set (Ray-free: pyarrow + torch)."""
    from dynamonet.features import read_features

    _, state, model = load_stfn(checkpoint, endpoint, device)
    meta = read_manifest(features, endpoint)
    if meta["class_names"] != state["class_names"]:
        raise ValueError(f"--split: the classes of {features} differ from the STFN checkpoint's")
    return score_videos(model, batches(read_features(features, endpoint), 64), len(state["class_names"]), device)


def batches(table: pa.Table, size: int) -> list[pa.Table]:
    """``table`` in slices of ``size`` rows."""
    return [table.slice(i, size) for i in range(0, table.num_rows, size)]


def evaluate_stfn(checkpoint: str, *, split: str = "", device: str = "cpu", endpoint: str = "",
                  out_dir: str | None = "", overrides: list[str] | None = None) -> dict[str, Any]:
    """evaluate.py for an STFN checkpoint: its DynamoNet's features of ``split`` (extracted or reused),
    scored by STFN and by the mean of the clip scores (§4.3), side by side, on the same videos."""
    from dynamonet.eval import default_out_dir, write_reports

    cfg, state, _ = load_stfn(checkpoint, endpoint)
    validated = stfn_splits(cfg)[1]
    split = split or ("test" if validated == HOLDOUT else validated or "val")  # as evaluate.py scores DynamoNet
    base = cfg.stfn.features or default_features_dir(cfg.stfn.checkpoint)
    meta = extract_features(cfg.stfn.checkpoint, split, features_uri(base, split), overrides=overrides,
                            device=device, actors=cfg.stfn.extract_actors, endpoint=endpoint or cfg.data.s3_endpoint)
    res = evaluate_features(checkpoint, meta["uri"], endpoint or cfg.data.s3_endpoint, device)
    names = state["class_names"]
    out: dict[str, Any] = {"checkpoint": checkpoint, "epoch": state.get("epoch"), "split": split, "kind": "stfn",
                           "dynamonet_checkpoint": meta["checkpoint"], "features": meta["uri"],
                           "num_videos": int(res.metrics.get("videos", 0)), "num_clips": meta["num_clips"],
                           "clips_per_video": meta["num_clips"] / max(1, meta["num_videos"]),
                           "metrics": {"eval/stfn_top1": res.metrics.get("top1"), "eval/stfn_top5": res.metrics.get("top5"),
                                       "eval/top1": res.metrics.get("clip_mean_top1"),
                                       "eval/top5": res.metrics.get("clip_mean_top5")},
                           "predictions": [{"video_id": v, "label": names[y], "predicted": names[p], "score": sc,
                                            "clip_mean_predicted": names[m]} for v, y, p, sc, m in res.predictions]}
    if out_dir is None:
        out_dir = default_out_dir(checkpoint, split)
    if out_dir:
        write_reports(out, res.confusion, names, out_dir, cfg.data.s3_endpoint)
        out["reports"] = out_dir
    return out


def final_line(result: dict[str, Any]) -> str:
    """The last line of train_stfn.py: STFN's video top-1 beside the clip mean's, on the same videos."""
    v = result.get("val") or {}

    def g(k: str) -> str:
        x = v.get(k)
        return f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else "n/a"

    return (f"DONE run={result['run']} epochs={result['metrics'].get('epoch', 0)} split={v.get('split', 'none')} "
            f"videos={int(v.get('videos', 0))} stfn_top1={g('top1')} clip_mean_top1={g('clip_mean_top1')} "
            f"wall_time={result['wall_time_s']:.1f}s")


__all__ = ["HOLDOUT", "STFNSpec", "backbone_checkpoint", "backbone_config", "build_stfn", "build_stfn_trainer",
           "evaluate_features", "evaluate_stfn", "final_line", "load_stfn", "prepare_features", "prepare_stfn_run",
           "run_stfn", "stfn_loop_per_worker", "stfn_splits"]
