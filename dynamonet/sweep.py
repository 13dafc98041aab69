"""Ray Tune sweeps over the paper's design choices: α/β (§3.2, eq. 3), the dynamic filter size
(§3.1: "3–7 tested, 5 best, others 2–3 points worse") and the clip length (§3: 16/32/64).

    tune/spaces/*.yaml ──► SweepSpace (validated: every value builds a valid Config, and the
        trials report the metric it ranks by)
        ──► Tuner(function trainable, ASHA on the metric counting epochs, FailureConfig for trials
            whose node is lost) ──► each trial: prepare_run + a TorchTrainer run
            <sweep>/trials/<sweep>-<trial_id> (the same code as train_joint.py) reporting through
            TuneReportCallback
        ──► <storage>/<sweep>/: results.csv (sorted), best_config.yaml (a train_joint.py recipe),
            plot_<param>.png, Tune's state, and every trial's run with its TensorBoard events and
            hyperparameters (HParams view): tensorboard --logdir <storage>/<sweep>

A space file::

    name: default                  # sweep name (the directory under run.storage_path)
    recipe: embedded               # base recipe of every trial
    metric: val/top1               # what ASHA and the table rank by
    mode: max
    num_samples: 1                 # repeats of the grid (random params are re-drawn per sample)
    max_concurrent: 2
    max_failures: 3                # times a trial is restarted (from its last checkpoint) after its actor or node is lost
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}   # or {type: none}
    set: {train.epochs: 4}         # fixed overrides for every trial
    params:                        # grid | choice | uniform | loguniform | randint
      model.kernel_size: {grid: [3, 5, 7]}
      loss.alpha: {grid: [0.0, 0.1]}
      optim.lr: {loguniform: [0.01, 0.2]}
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from dynamonet import storage
from dynamonet.cli import recipe_path
from dynamonet.config import Config, load_config

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "none")
SPACE_KEYS = {"name", "recipe", "metric", "mode", "num_samples", "max_concurrent", "max_failures", "scheduler", "set",
              "params", "description"}


@dataclass
class SweepSpace:
    name: str
    recipe: str
    metric: str = "val/top1"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent: int = 2
    max_failures: int = 3
    scheduler: dict = field(default_factory=lambda: {"type": "asha", "grace_period": 2, "reduction_factor": 2})
    set: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    description: str = ""

    def num_trials(self) -> int:
        grid = math.prod(len(spec["grid"]) for spec in self.params.values() if "grid" in spec)
        return grid * self.num_samples


def load_space(path: str, overrides: list[str] | None = None) -> tuple[SweepSpace, Config]:
    """Read and validate a space file; returns it and the base Config of every trial.

    Every problem raises one ``ValueError`` naming the file and the parameter, before any trial.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ValueError(f"--space: no such file: {path}") from None
    unknown = sorted(set(raw) - SPACE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(SPACE_KEYS))})")
    space = SweepSpace(**{"name": os.path.splitext(os.path.basename(path))[0], "recipe": "embedded", **raw})
    if space.mode not in ("max", "min"):
        raise ValueError(f"{path}: mode must be max or min, got {space.mode!r}")
    if not space.params:
        raise ValueError(f"{path}: params is empty: nothing to sweep")
    _check_scheduler(path, space.scheduler)
    fixed = [f"{k}={v if isinstance(v, str) else _yaml(v)}" for k, v in space.set.items()] + list(overrides or [])
    try:
        base = load_config(recipe_path(space.recipe), fixed)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    for key, spec in space.params.items():
        _check_param(path, base, key, spec)
    _check_metric(path, space, base)
    return space, base


def reported_metrics(cfg: Config) -> set[str]:
    """Metric keys every report of a run with ``cfg`` carries (validation metrics are carried from
    the latest validation into every report, see dynamonet/train/worker.py)."""
    keys = {"epoch", "train/loss", "train/loss_fp", "train/loss_ce", "lr", "perf/clips_per_s"}
    if cfg.model.mode != "pretrain":
        keys.add("train/top1")
    if cfg.data.val_split:
        keys |= {"val/loss", "val/loss_fp", "val/loss_ce"}
        if cfg.model.mode != "pretrain":
            keys |= {"val/top1", "val/top5", "val/clip_top1"}
    return keys


def _check_metric(path: str, space: SweepSpace, base: Config) -> None:
    """The metric ranks every trial and ASHA reads it at every epoch: every report must carry it."""
    swept_modes = next(iter(space.params.get("model.mode", {}).values()), [])
    modes = {base.model.mode, *swept_modes}
    for mode in modes:
        cfg = base.override("model.mode", mode)
        if space.metric not in reported_metrics(cfg):
            why = ("there is no validation split (data.val_split is empty)" if not cfg.data.val_split and
                   space.metric.startswith("val/") else f"model.mode={mode} does not report it")
            raise ValueError(f"{path}: metric {space.metric!r}: trials would not report it ({why}); "
                             f"choose one of {', '.join(sorted(reported_metrics(cfg)))}")


def _yaml(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _check_scheduler(path: str, sched: Any) -> None:
    """``scheduler`` must be a mapping whose ``type`` (default asha) is a known scheduler."""
    if not isinstance(sched, dict):
        raise ValueError(f"{path}: scheduler: expected a mapping such as {{type: asha}}, got {sched!r}")
    kind = sched.get("type", "asha")
    if kind not in SCHEDULERS:
        raise ValueError(f"{path}: scheduler.type: unknown scheduler {kind!r} ({' or '.join(SCHEDULERS)})")


def _check_param(path: str, base: Config, key: str, spec: Any) -> None:
    where = f"{path}: params.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"{where}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not values[0] < values[1]:
            raise ValueError(f"{where}: {kind} needs [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"{where}: loguniform needs low > 0, got {values[0]}")
        probe = values if kind != "randint" else [values[0], values[1] - 1]
    else:
        probe = values
    for v in probe:
        try:
            base.override(key, v if isinstance(v, str) else _yaml(v))
        except ValueError as e:
            raise ValueError(f"{where}: value {v!r} is invalid: {e}") from None


def tune_param_space(space: SweepSpace, trials: str = "") -> dict[str, Any]:
    """The Tuner's ``param_space``: one entry per swept key, and where the trials' runs go (the base
    config travels separately)."""
    from ray import tune

    makers = {"grid": tune.grid_search, "choice": tune.choice,
              "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
              "randint": lambda v: tune.randint(*v)}
    params = {k: makers[kind](values) for k, spec in space.params.items() for kind, values in spec.items()}
    return {"sweep": space.name, "params": params, "trials": trials}


def trials_uri(storage_root: str, sweep: str) -> str:
    """Where the trials' training runs live: ``<storage>/<sweep>/trials``."""
    return _join(_join(storage_root, sweep), "trials")


def trial_config(config: dict[str, Any], base: dict[str, Any], trial_id: str) -> Config:
    """The Config of one trial: the base with the sampled params, a trial-specific run name, and a
    storage path inside the sweep's directory (``config["trials"]``)."""
    cfg = Config.from_dict(copy.deepcopy(base))
    for key, value in config["params"].items():
        cfg = cfg.override(key, value if isinstance(value, str) else _yaml(value))
    cfg = cfg.override("run.storage_path", config.get("trials") or cfg.run.storage_path)
    return cfg.override("run.name", f"{config['sweep']}-{trial_id}")


def train_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function trainable: one real training run (a TorchTrainer), as train_joint.py does.

    A trial restarted by Tune (its node was lost) finds its run in storage and resumes it from
    the last checkpoint (same name, same config)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from dynamonet.train.ray_train import HPARAM_KEYS, build_trainer, prepare_run, run_hparams

    cfg = trial_config(config, base, tune.get_context().get_trial_id())
    spec = prepare_run(cfg)
    spec.hparams = run_hparams(spec.cfg, tuple(dict.fromkeys([*config["params"], *HPARAM_KEYS])))
    result = build_trainer(spec, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error


def best_recipe(space: SweepSpace, base: Config, params: dict[str, Any]) -> dict[str, Any]:
    """A recipe for ``train_joint.py --config`` with the best trial's values (a fresh run name)."""
    cfg = base
    for key, value in params.items():
        cfg = cfg.override(key, value if isinstance(value, str) else _yaml(value))
    cfg = cfg.override("recipe", f"{space.name}-best").override("run.name", "").override("run.resume", "false")
    return cfg.to_dict()


def run_sweep(space: SweepSpace, base: Config, *, resume: bool = False, force: bool = False,
              grace_period: int | None = None) -> dict[str, Any]:
    """Run (or continue) a sweep; write results.csv, best_config.yaml and the plots. Returns a summary."""
    import ray
    from ray import tune

    from dynamonet.train.ray_train import connect_for_cluster, init_ray

    # Snapshot the experiment state every 2 s (Tune's default is adaptive and can lag minutes), so a
    # sweep killed right after a trial finished does not start that trial again on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    base = connect_for_cluster(base)  # a multi-node cluster: storage under DYNAMONET_STORAGE
    init_ray(base)
    endpoint = base.data.s3_endpoint
    fs, root = storage.resolve_filesystem(base.run.storage_path, endpoint)
    remote = storage.is_remote(base.run.storage_path)
    storage_root = base.run.storage_path if remote else root  # Tune: absolute
    sweep_uri = _join(storage_root, space.name)
    # Tune takes the path in the filesystem's own form (bucket/prefix) together with our filesystem
    tune_fs = fs if remote else None
    tune_path = f"{root}/{space.name}"
    space_file = f"{tune_path}/sweep_space.yaml"
    stored = storage.read_bytes(fs, space_file).decode() if storage.exists(fs, space_file) else None
    current = yaml.safe_dump({"space": space.__dict__, "base": base.fingerprint()}, sort_keys=True)
    # the trainer's workers hold the real resources; the base config travels once, not per trial
    trainable = tune.with_resources(tune.with_parameters(train_trial, base=base.to_dict()), {"cpu": 0.01})
    param_space = tune_param_space(space, trials_uri(storage_root, space.name))
    if stored is not None and tune.Tuner.can_restore(tune_path, storage_filesystem=tune_fs):
        if stored != current and not force:
            raise ValueError(f"--name: sweep {space.name!r} exists with a different space or base config; "
                             "use another --name or --force")
        print(f"[sweep] resuming {space.name!r}: finished trials are kept, unfinished ones continue", flush=True)
        tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space, storage_filesystem=tune_fs)
    elif resume:
        raise ValueError(f"--resume: no sweep named {space.name!r} under {base.run.storage_path}")
    else:
        storage.write_bytes(fs, space_file, current.encode())
        tuner = tune.Tuner(trainable, param_space=param_space,
                           tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode,
                                                       num_samples=space.num_samples,
                                                       max_concurrent_trials=space.max_concurrent,
                                                       scheduler=_scheduler(space, base, grace_period)),
                           run_config=tune_run_config(space, root, tune_fs))
    grid = tuner.fit()
    summary = write_reports(grid, space, base, sweep_uri, endpoint)
    ray.shutdown()
    return summary


def tune_run_config(space: SweepSpace, storage_path: str, fs: Any = None) -> Any:
    """Tune's RunConfig: the sweep's directory, and trials restarted after a lost actor or node.

    ``storage_path`` is an absolute local path (``fs`` None) or ``bucket/prefix`` with ``fs``."""
    from ray import tune

    return tune.RunConfig(name=space.name, storage_path=storage_path, storage_filesystem=fs,
                          failure_config=tune.FailureConfig(max_failures=space.max_failures))


def _scheduler(space: SweepSpace, base: Config, grace_period: int | None) -> Any:
    """ASHA counts epochs (the ``epoch`` every report carries): after ``Tuner.restore`` a trial resumes
    at epoch e while Tune's ``training_iteration`` would start again at 1."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sched = dict(space.scheduler)
    kind = sched.pop("type", "asha")
    if kind == "none":
        return FIFOScheduler()
    if kind != "asha":
        raise ValueError(f"scheduler.type: unknown scheduler {kind!r} (asha or none)")
    epochs = base.train.epochs
    return ASHAScheduler(time_attr="epoch", max_t=epochs,
                         grace_period=min(epochs, grace_period or int(sched.get("grace_period", 1))),
                         reduction_factor=float(sched.get("reduction_factor", 2)))


def results_table(grid: Iterable[Any], space: SweepSpace) -> Any:
    """One row per trial: its swept values, final and best metric, epochs run, status.

    ``grid`` is a Tune ``ResultGrid`` or any iterable of objects with its ``Result`` attributes
    (``metrics``, ``config``, ``metrics_dataframe``, ``error``, ``path``). A trial that failed
    before its first report gets a row with NaN metrics and status ``error``.
    """
    import pandas as pd

    rows = [_trial_row(r, space) for r in grid]
    df = pd.DataFrame(rows, columns=_columns(space))
    return df.sort_values(space.metric, ascending=space.mode == "min", na_position="last").reset_index(drop=True)


def _columns(space: SweepSpace) -> list[str]:
    return ["trial", *space.params, space.metric, f"best {space.metric}", "val/top5", "val/fp_ssim",
            "train/loss", "epochs", "status"]


def _trial_row(r: Any, space: SweepSpace) -> dict[str, Any]:
    m = r.metrics or {}
    params = (r.config or {}).get("params", {})
    path = getattr(r, "path", None)
    row: dict[str, Any] = {"trial": m.get("trial_id") or (os.path.basename(str(path).rstrip("/")) if path else "")}
    row.update({k: params.get(k) for k in space.params})
    row.update({space.metric: m.get(space.metric, float("nan")),
                f"best {space.metric}": best_of(r.metrics_dataframe, space.metric, space.mode),
                "val/top5": m.get("val/top5"), "val/fp_ssim": m.get("val/fp_ssim"),
                "train/loss": m.get("train/loss"), "epochs": m.get("epoch", 0),
                "status": "error" if r.error else "done"})
    return row


def best_of(history: Any, metric: str, mode: str) -> float:
    """The best value of ``metric`` over a trial's reports (a DataFrame); NaN if it has none."""
    if history is None or metric not in history:
        return float("nan")
    values = history[metric].dropna()
    if values.empty:
        return float("nan")
    return float(values.max() if mode == "max" else values.min())


def write_reports(grid: Iterable[Any], space: SweepSpace, base: Config, out_uri: str,
                  endpoint: str = "") -> dict[str, Any]:
    """results.csv (printed), best_config.yaml and plot_<param>.png under ``out_uri``.

    ``out_uri`` is the sweep's directory: a local path, written directly, or an ``s3://`` URI,
    written to a temporary directory and then uploaded with ``pyarrow.fs``.
    """
    df = results_table(grid, space)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    if not storage.is_remote(out_uri):
        summary = _write_report_files(df, space, base, out_uri, out_uri)
    else:
        import pyarrow.fs as pafs

        fs, path = storage.resolve_filesystem(out_uri, endpoint)
        with tempfile.TemporaryDirectory(prefix="dynamonet-sweep-") as tmp:
            summary = _write_report_files(df, space, base, tmp, out_uri)
            pafs.copy_files(tmp, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    names = ["results.csv"] + (["best_config.yaml"] if summary["best_config"] else []) + ["plot_*.png"]
    print(f"[sweep] reports ({', '.join(names)}) → {summary['dir']}", flush=True)
    return summary


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name if storage.is_remote(uri) else os.path.join(uri, name)


def _write_report_files(df: Any, space: SweepSpace, base: Config, local_dir: str, uri: str) -> dict[str, Any]:
    """Write the reports to ``local_dir``; the returned paths name where they end up (``uri``)."""
    os.makedirs(local_dir, exist_ok=True)
    df.to_csv(os.path.join(local_dir, "results.csv"), index=False)
    scored = df[df[space.metric].notna()]
    best_params: dict[str, Any] | None = None
    best_metric, best_config = float("nan"), ""
    if len(scored):
        best = scored.iloc[0]
        best_params = {k: _plain(best[k]) for k in space.params}
        best_metric = float(best[space.metric])
        best_config = _join(uri, "best_config.yaml")
        command = (f"--config {best_config}" if not storage.is_remote(uri)
                   else f"--config best_config.yaml  (downloaded from {best_config})")
        with open(os.path.join(local_dir, "best_config.yaml"), "w", encoding="utf-8") as fh:
            fh.write(f"# best of sweep {space.name!r} by {space.metric} ({best_metric:.4f}): {best_params}\n")
            fh.write(f"# python pipelines/train_joint.py {command}\n")
            yaml.safe_dump(best_recipe(space, base, best_params), fh, sort_keys=False)
    plots = [_join(uri, os.path.basename(plot_param(df, key, space.metric, local_dir))) for key in space.params]
    return {"dir": uri, "trials": len(df), "best": best_params, "best_metric": best_metric,
            "best_config": best_config, "results": _join(uri, "results.csv"), "plots": plots}


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def plot_param(df: Any, key: str, metric: str, out_dir: str) -> str:
    """Scatter of the metric against one swept parameter (all trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = df[key].astype(str) if df[key].dtype == object else df[key]
    ax.scatter(x, df[metric], s=40)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    if df[key].dtype != object and (df[key] > 0).all() and df[key].max() / max(df[key].min(), 1e-12) > 50:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"plot_{key.replace('.', '_')}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
