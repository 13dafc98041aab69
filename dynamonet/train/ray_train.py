"""The Ray Train driver: from a validated Config to a finished, checkpointed run.

    Config ──► checks on the driver (model builds, dataset readable, clip fits, run/config match)
           ──► connect (RAY_ADDRESS / ray job submit): on a multi-node cluster, shared paths under
               DYNAMONET_STORAGE and placement on trainer/decode nodes (dynamonet.cluster.runtime);
               or start a local, oversubscribed Ray
           ──► Ray Data clip streams (train: K random clips/video; val: every clip)
           ──► TorchTrainer(train_loop_per_worker, ScalingConfig, RunConfig(name, storage_path,
                            FailureConfig(max_failures), CheckpointConfig(keep_checkpoints)), datasets)
               .fit(); callbacks: TensorBoard (with the run's hyperparameters), best checkpoint copy
           ──► result.json + TensorBoard events + the final line

Everything that can be wrong with a configuration is found before a single worker starts, and
reported as one line naming the field. The Tune sweep (``tune/sweep.py``) reuses
:func:`prepare_run` and :func:`build_trainer` for every trial.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from dynamonet import storage
from dynamonet.config import Config, DataConfig

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "dynamonet")
CONFIG_FILE = "dynamonet_config.yaml"
# Hyperparameters every run shows in TensorBoard's HParams view (a sweep adds its swept keys).
HPARAM_KEYS = ("model.arch", "model.mode", "model.kernel_size", "data.clip_len", "loss.alpha", "loss.beta",
               "optim.lr", "data.batch_size", "train.num_workers", "train.seed")


@dataclass
class RunSpec:
    """Everything the trainer needs, resolved on the driver."""

    cfg: Config
    name: str
    storage_path: str  # as given to Ray (absolute local path or s3://...)
    run_uri: str  # <storage_path>/<name>
    data: DataConfig  # with data.root resolved (synthetic cache path when it was empty)
    class_names: list[str]
    num_classes: int
    steps_per_epoch: int
    datasets: dict[str, Any] = field(default_factory=dict)
    init_state: Any = None
    resumed_epoch: int = 0
    transcode: dict = field(default_factory=dict)  # the manifest's canonical format (predict.py needs it)
    epoch_key: str = ""  # where the training loop publishes the epoch of the train stream
    hparams: dict = field(default_factory=dict)  # shown in TensorBoard's HParams view


def effective_data(cfg: Config) -> DataConfig:
    """``cfg.data`` with an empty root replaced by the cached embedded synthetic dataset."""
    if cfg.data.root:
        return cfg.data
    from dynamonet.data.synthetic import synthetic_root

    return replace(cfg.data, root=synthetic_root(cfg.data))


def init_ray(cfg: Config) -> None:
    """Connect to ``run.ray_address`` / ``RAY_ADDRESS``, or start a local, oversubscribed Ray.

    On a small machine Train workers that hold every CPU starve Ray Data's decoders and the run
    hangs silently (NOTES-ray.md), so a local Ray advertises 4 logical CPUs per core.
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        cpus = cfg.run.local_cpus or 4 * (os.cpu_count() or 1)
        # address="local": a bare ray.init() would attach to any `ray start` cluster on this machine.
        ray.init(address="local", num_cpus=cpus, include_dashboard=True, log_to_driver=True)
    quiet_data_context()


def ray_address(cfg: Config) -> str:
    """The cluster to connect to: ``run.ray_address``, else ``RAY_ADDRESS`` ("" = start a local Ray)."""
    return cfg.run.ray_address or os.environ.get("RAY_ADDRESS", "")


def connect_for_cluster(cfg: Config) -> Config:
    """When joining an existing Ray (a job, a Tune trial): connect, and on a multi-node cluster put
    shared paths under ``DYNAMONET_STORAGE`` and workers on their nodes (see
    :mod:`dynamonet.cluster.runtime`). A local Ray is started later, after the checks."""
    import ray

    if not ray.is_initialized() and not ray_address(cfg):
        return cfg
    from dynamonet.cluster.runtime import cluster_info, resolve_for_cluster

    init_ray(cfg)
    info = cluster_info()
    resolved = resolve_for_cluster(cfg, info)
    if info.multinode and resolved is not cfg:
        print(f"[cluster] {info.describe()}: storage {resolved.run.storage_path}, "
              f"Train workers request {resolved.train.worker_resources or '{}'}, "
              f"decoders {resolved.data.decode_resources or '{}'}", flush=True)
    return resolved


def quiet_data_context() -> None:
    """Rank 0 prints one progress line per step; Ray Data's own bars and plans would drown it."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def resolve_run(cfg: Config) -> tuple[Config, str, str]:
    """Pick the run name and check the resume rules; returns (cfg, storage_path, run_uri).

    Nothing is written here: :func:`save_run_config` records the config once the dataset checks
    passed, so a run refused for its data leaves no directory behind.
    """
    fs, base = storage.resolve_filesystem(cfg.run.storage_path, cfg.data.s3_endpoint)
    storage_path = cfg.run.storage_path if storage.is_remote(cfg.run.storage_path) else base
    name = cfg.run.name
    if not name and cfg.run.resume:
        runs = storage.list_runs(fs, base)
        if not runs:
            raise ValueError(f"run.resume: no run to resume under {cfg.run.storage_path}")
        name = runs[-1][1]
    if not name:
        name = f"{cfg.recipe}-{cfg.model.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = cfg.override("run.name", name)
    cfg_path = posixpath.join(base, name, CONFIG_FILE)
    if storage.exists(fs, cfg_path):
        stored = Config.from_dict(yaml.safe_load(storage.read_bytes(fs, cfg_path)))
        diff = _diff(stored.fingerprint(), cfg.fingerprint())
        if diff and not cfg.run.force:
            raise ValueError(f"run.name: run {name!r} already exists with a different config ({'; '.join(diff[:4])}); "
                             "choose another --name, or pass --force to resume it with this config")
    elif cfg.run.resume:
        raise ValueError(f"run.resume: no run named {name!r} under {cfg.run.storage_path}")
    return cfg, storage_path, storage_path.rstrip("/") + "/" + name


def save_run_config(cfg: Config, run_uri: str) -> None:
    """Write ``<run>/dynamonet_config.yaml`` (checked by :func:`resolve_run` when the run resumes)."""
    fs, run_path = storage.resolve_filesystem(run_uri, cfg.data.s3_endpoint)
    storage.write_bytes(fs, posixpath.join(run_path, CONFIG_FILE), yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def prepare_run(cfg: Config, *, build_datasets: bool = True) -> RunSpec:
    """Validate everything on the driver, start Ray, build the datasets; no worker starts here."""
    check_model(cfg)
    cfg = connect_for_cluster(cfg)
    cfg, storage_path, run_uri = resolve_run(cfg)  # name and resume rules: before a local Ray starts too
    if cfg.data.root:  # a real dataset: check it before Ray starts
        data = cfg.data
        manifest = _open(data, cfg)
        init_ray(cfg)
    else:  # the embedded default: generating it uses Ray tasks
        init_ray(cfg)
        data = effective_data(cfg)
        manifest = _open(data, cfg)
    class_names = list(manifest.class_names)
    num_classes = cfg.model.num_classes or len(class_names)
    if cfg.model.mode != "pretrain" and num_classes < 2:
        raise ValueError(f"model.num_classes: the dataset at {data.root} has {len(class_names)} classes; "
                         "set model.num_classes or use mode=pretrain for unlabeled data")
    quiet_data_context()  # also in Tune trials, whose processes did not run init_ray
    spec = RunSpec(cfg=cfg, name=cfg.run.name, storage_path=storage_path, run_uri=run_uri, data=data,
                   class_names=class_names, num_classes=num_classes, steps_per_epoch=1,
                   transcode=dict(manifest.transcode), hparams=run_hparams(cfg))
    fs, run_path = storage.resolve_filesystem(run_uri, cfg.data.s3_endpoint)
    spec.resumed_epoch = max((e for e, _ in storage.list_checkpoints(fs, run_path)), default=0)
    if cfg.run.init_from and spec.resumed_epoch == 0:
        spec.init_state = _init_state(cfg, num_classes)
    if build_datasets:
        _build_datasets(spec, manifest)
    save_run_config(cfg, run_uri)  # only now: a run refused above leaves no directory behind
    return spec


# build_model's argument names → the config keys users set
_MODEL_KEYS = {"name": "model.arch", "mode": "model.mode", "kernel_size": "model.kernel_size",
               "clip_len": "data.clip_len", "num_classes": "model.num_classes", "widths": "model.widths",
               "shortcut": "model.shortcut"}


def check_model(cfg: Config) -> None:
    """Build the model once on the driver (on the meta device: no memory) so bad settings fail here."""
    import torch

    from dynamonet.models import build_model_from_config

    try:
        with torch.device("meta"):
            build_model_from_config(cfg, max(cfg.model.num_classes, 2))
    except ValueError as e:
        arg, _, msg = str(e).partition(": ")
        raise ValueError(f"{_MODEL_KEYS.get(arg, 'model.' + arg)}: {msg}" if msg else f"model: {e}") from None


def _open(data: DataConfig, cfg: Config) -> Any:
    """Open and check the dataset and the splits this run reads (no Ray needed)."""
    from dynamonet.data import check_split, open_dataset

    manifest = open_dataset(data)
    check_split(data, manifest, cfg.data.train_split, key="data.train_split")
    if cfg.data.val_split:
        check_split(data, manifest, cfg.data.val_split, key="data.val_split")
    return manifest


def init_source(cfg: Config) -> str:
    """``run.init_from`` with ``{seed}`` replaced by ``train.seed``: one pretraining run per seed
    (a sweep's seed axis fine-tunes each seed from its own pretraining)."""
    return cfg.run.init_from.replace("{seed}", str(cfg.train.seed))


def _init_state(cfg: Config, num_classes: int) -> Any:
    """:func:`init_weights` on the driver, ray.put for the workers."""
    import ray

    return ray.put(init_weights(cfg, num_classes))


def init_weights(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The model's initial state dict from ``run.init_from``: every tensor whose name and shape
    match is loaded. Prints one summary line and one line per layer re-initialised (its shape
    differs, or it is not in the checkpoint) or left unused in the checkpoint.

    Raises:
        ValueError: ``run.init_strict`` and the checkpoint does not fit the model exactly (every
            such layer named); or the checkpoint cannot be read.
    """
    import torch

    from dynamonet.models import build_model_from_config, load_matching_weights
    from dynamonet.train.checkpoint import load_checkpoint

    source = init_source(cfg)
    state = load_checkpoint(source, cfg.data.s3_endpoint)
    with torch.random.fork_rng(devices=[]):  # the layers left fresh: from train.seed, the same in every run
        torch.manual_seed(cfg.train.seed)
        model = build_model_from_config(cfg, num_classes)
    report = load_matching_weights(model, state["model"])
    changes = report.layer_changes()
    if cfg.run.init_strict and changes:
        raise ValueError(f"run.init_strict: {source} does not fit this model exactly ({len(changes)} layers): "
                         + " | ".join(changes))
    print(f"[init] from {source}: {_by_module(report)}", flush=True)
    for line in changes:
        print(f"[init]   {line}", flush=True)
    return model.state_dict()


def _by_module(report: Any) -> str:
    """One line: loaded / freshly initialised tensors counted per top-level module."""

    def count(names: list[str]) -> str:
        groups: dict[str, int] = {}
        for n in names:
            groups[n.split(".")[0]] = groups.get(n.split(".")[0], 0) + 1
        return ", ".join(f"{k} {v}" for k, v in sorted(groups.items())) or "none"

    fresh = list(report.missing) + [n for n, *_ in report.shape_mismatch]
    line = f"loaded {len(report.loaded)} tensors ({count(report.loaded)}); initialised fresh: {count(fresh)}"
    if report.unexpected:
        line += f"; unused from the checkpoint: {count(list(report.unexpected))}"
    return line


def _build_datasets(spec: RunSpec, manifest: Any) -> None:
    from dynamonet.data import build_clip_dataset

    cfg, w = spec.cfg, spec.cfg.train.num_workers
    cols = ["clip", "label", "video_index", "clip_index", "status", "start", "crop", "flip"]
    train, tinfo = build_clip_dataset(spec.data, cfg.data.train_split, training=True, num_consumers=w,
                                      manifest=manifest, seed=cfg.train.seed)
    spec.datasets, spec.epoch_key = {"train": train.select_columns(cols)}, tinfo.epoch_key
    if tinfo.holdout is not None:  # data.holdout_fraction > 0: validation carved from the training split
        print(f"[data] {tinfo.holdout.describe()}", flush=True)
    if tinfo.selection is not None:  # data.label_fraction < 1 (paper Table 2): steps follow the subset
        print(f"[data] {tinfo.selection.describe()}", flush=True)
    val_note = "no validation split"
    if cfg.data.val_split:
        val, vinfo = build_clip_dataset(spec.data, cfg.data.val_split, training=False, num_consumers=w,
                                        manifest=manifest)
        spec.datasets["val"] = val.select_columns(cols)
        val_note = f"val {vinfo.num_videos} videos → {vinfo.num_clips} clips"
    rows_per_worker = (tinfo.num_clips + tinfo.num_padding) // w
    spec.steps_per_epoch = max(1, math.ceil(rows_per_worker / cfg.data.batch_size))
    print(f"[data] {spec.data.root}: train {tinfo.num_videos} videos → {tinfo.num_clips} clips/epoch "
          f"(+{tinfo.num_padding} padding), {val_note}; "
          f"{w} workers × {spec.steps_per_epoch} steps of {cfg.data.batch_size}", flush=True)


def run_hparams(cfg: Config, keys: tuple[str, ...] = HPARAM_KEYS) -> dict[str, Any]:
    """``{key: value}`` of ``keys`` in ``cfg`` (dotted), for TensorBoard's HParams view."""
    flat = cfg.to_dict()
    out = {}
    for key in keys:
        node: Any = flat
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def tensorboard_dir(spec: RunSpec) -> str:
    """Event files go next to the checkpoints for local runs, under the cache for S3 runs."""
    if storage.is_remote(spec.run_uri):
        return os.path.join(DEFAULT_CACHE, "tensorboard", spec.name)
    return os.path.join(spec.run_uri, "tensorboard")


def _callbacks(spec: RunSpec) -> list:
    """TensorBoard events (copied to ``<run>/tensorboard`` for S3 runs) and the best-checkpoint copy."""
    from dynamonet.train.callbacks import BestCheckpointCallback, TensorBoardCallback
    from dynamonet.train.checkpoint import best_metric

    upload = posixpath.join(spec.run_uri, "tensorboard") if storage.is_remote(spec.run_uri) else ""
    callbacks = [TensorBoardCallback(tensorboard_dir(spec), upload, spec.cfg.data.s3_endpoint, hparams=spec.hparams)]
    metric = best_metric(spec.cfg)
    if metric is not None:
        callbacks.append(BestCheckpointCallback(*metric))
    return callbacks


def build_trainer(spec: RunSpec, callbacks: list | None = None, name: str | None = None) -> Any:
    """The TorchTrainer of a prepared run (also used by every Tune trial)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from dynamonet.train.worker import train_loop_per_worker

    # The dashboard's Train page lists runs and workers only with state tracking on; the trainer
    # reads the variable when it is built, in this process, and passes it to its controller.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    cfg = spec.cfg
    resources = {"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    storage_path, storage_fs = storage.ray_storage(spec.storage_path, cfg.data.s3_endpoint)
    loop_config = {"config": cfg.to_dict(), "num_classes": spec.num_classes, "class_names": spec.class_names,
                   "steps_per_epoch": spec.steps_per_epoch, "init_state": spec.init_state,
                   "transcode": spec.transcode, "epoch_key": spec.epoch_key, "run_uri": spec.run_uri}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name or spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints or None),
            logging_config=ray.train.LoggingConfig(log_level=os.environ.get("DYNAMONET_TRAIN_LOG_LEVEL", "WARNING")),
            callbacks=[*_callbacks(spec), *(callbacks or [])]),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        datasets=spec.datasets,
        dataset_config=ingest_config(cfg),
    )


def ingest_config(cfg: Config, split: str | list[str] = "all") -> Any:
    """How Train splits the clip streams over its workers. ``train.deterministic`` keeps Ray Data's
    block order (``preserve_order``): the splitter hands each block to the worker that has received
    the fewest rows so far, so with blocks in a fixed order every worker gets the same rows in
    the same order in every run (locality hints are dropped, which only matters across nodes).
    Without it blocks go out as decode tasks finish, which differs from run to run. ``split``: the
    datasets split over the workers (the others reach every worker whole)."""
    import copy

    import ray.data
    import ray.train

    if not cfg.train.deterministic:
        return ray.train.DataConfig(datasets_to_split=split)
    options = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=split, execution_options=options, enable_shard_locality=False)


def run_training(cfg: Config) -> dict[str, Any]:
    """Prepare, fit, write ``result.json``; returns it. Raises RuntimeError if training failed."""
    t0 = time.perf_counter()
    spec = prepare_run(cfg)
    if spec.resumed_epoch:
        print(f"[run] resuming {spec.name!r} from epoch {spec.resumed_epoch} ({spec.run_uri})", flush=True)
    else:
        print(f"[run] {spec.name!r} → {spec.run_uri}", flush=True)
    result = build_trainer(spec).fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {_root_cause(result.error)}")
    out = {"run": spec.name, "path": spec.run_uri, "mode": spec.cfg.model.mode,
           "checkpoint": result.checkpoint.path if result.checkpoint else None,
           "metrics": {k: v for k, v in (result.metrics or {}).items() if _jsonable(v)},
           "best_checkpoint": best_checkpoint_uri(spec),
           "wall_time_s": time.perf_counter() - t0, "class_names": spec.class_names,
           "tensorboard": posixpath.join(spec.run_uri, "tensorboard"), "config": spec.cfg.to_dict()}
    fs, run_path = storage.resolve_filesystem(spec.run_uri, cfg.data.s3_endpoint)
    storage.write_bytes(fs, posixpath.join(run_path, "result.json"), json.dumps(out, indent=2).encode())
    return out


def best_checkpoint_uri(spec: RunSpec) -> str | None:
    """``<run>/checkpoint_best`` if the run has one."""
    fs, run_path = storage.resolve_filesystem(spec.run_uri, spec.cfg.data.s3_endpoint)
    best = posixpath.join(run_path, storage.BEST_CHECKPOINT, "checkpoint.pt")
    return posixpath.join(spec.run_uri, storage.BEST_CHECKPOINT) if storage.is_file(fs, best) else None


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, str, bool)) or (isinstance(v, float) and math.isfinite(v))


_EXCEPTION_LINE = re.compile(r"^([\w.]+(?:Error|Exception|Interrupt)): (.+)$")


def _root_cause(err: BaseException) -> str:
    """One line for a failed Ray Train run: a worker's DataStreamError (it names the shard) if there
    is one, else the last exception line of the innermost error (Train's WorkerGroupError carries
    every rank's traceback in its text)."""
    seen = err
    while getattr(seen, "__cause__", None) is not None:
        seen = seen.__cause__
    lines = [ln.strip() for ln in str(seen).splitlines() if ln.strip()]
    data = [ln[ln.index("DataStreamError: "):] for ln in lines if "DataStreamError: " in ln]
    if data:
        return data[0][:500]
    raised = [m.group(0) for ln in lines if (m := _EXCEPTION_LINE.match(ln))]
    if raised:
        return raised[-1][:500]
    return f"{type(seen).__name__}: {lines[-1] if lines else ''}"[:500]


def final_line(result: dict[str, Any]) -> str:
    """The last line users and tests read."""
    m = result["metrics"]

    def g(k: str) -> str:
        v = m.get(k)
        return f"{v:.4f}" if isinstance(v, float) else "n/a"  # e.g. fp_ssim of a backbone run (no frame prediction)

    return (f"DONE run={result['run']} epochs={m.get('epoch', 0)} val_top1={g('val/top1')} val_top5={g('val/top5')} "
            f"fp_ssim={g('val/fp_ssim')} copy_last_ssim={g('val/copy_last_ssim')} "
            f"wall_time={result['wall_time_s']:.1f}s")
