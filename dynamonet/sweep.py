"""Ray Tune sweeps over the paper's design choices: α/β (§3.2, eq. 3), the dynamic filter size
(§3.1: "3–7 tested, 5 best, others 2–3 points worse") and the clip length (§3: 16/32/64).

    tune/spaces/*.yaml ──► SweepSpace (validated: every value builds a valid Config, and the
        trials report the metric it ranks by)
        ──► Tuner(function trainable, ASHA on the metric counting epochs, FailureConfig for trials
            whose node is lost) ──► each trial: prepare_run + a TorchTrainer run
            <sweep>/trials/<sweep>-<trial_id> (the same code as train_joint.py) reporting through
            TuneReportCallback
        ──► <storage>/<sweep>/: results.csv (one row per trial, sorted), summary.csv (one row per
            configuration: mean, std and 95 % CI over its seeds/samples), best_config.yaml (a
            train_joint.py recipe), plot_<param>.png, Tune's state, and every trial's run with its
            TensorBoard events and hyperparameters (HParams view): tensorboard --logdir <storage>/<sweep>

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
      train.seed: {grid: [0, 1, 2]}  # a seed axis: each configuration is reported as mean ± 95 % CI
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
SPACE_KEYS = {"name", "recipe", "pipeline", "metric", "mode", "num_samples", "max_concurrent", "max_failures",
              "scheduler", "set", "params", "description"}
# What a trial trains: joint (train_joint.py / pretrain.py) or stfn (train_stfn.py: STFN on the
# features of one DynamoNet, trained and extracted once by the driver before the trials start).
PIPELINES = ("joint", "stfn")
# Swept keys that repeat a configuration instead of defining one: the reports aggregate over them.
SEED_KEYS = ("train.seed",)
# Student-t two-sided 95 % quantiles t_{0.975, df} for df = 1..30, to 3 decimals, as in the standard
# t tables (NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2 "Critical Values of the
# Student's t Distribution", column 0.975). Beyond 30 degrees of freedom the normal quantile 1.96.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class SweepSpace:
    name: str
    recipe: str
    pipeline: str = "joint"
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
    if space.pipeline not in PIPELINES:
        raise ValueError(f"{path}: pipeline must be {' or '.join(PIPELINES)}, got {space.pipeline!r}")
    if space.pipeline == "stfn":  # one DynamoNet and one feature set serve every trial
        shared = [k for k in space.params if k in ("stfn.checkpoint", "stfn.features")
                  or not (k.startswith("stfn.") or k in SEED_KEYS)]
        if shared:
            raise ValueError(f"{path}: params.{shared[0]}: an stfn sweep varies STFN only (stfn.* and train.seed); "
                             "the DynamoNet and its features are shared by every trial")
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
    return _anchor_paths(space, base)


PATH_KEYS = ("run.init_from",)


def _anchor_paths(space: SweepSpace, base: Config) -> tuple[SweepSpace, Config]:
    """Relative local checkpoint paths made absolute here: a trial runs in Tune's trial directory,
    not where the sweep was started."""
    def anchor(v: Any) -> Any:
        return os.path.abspath(v) if isinstance(v, str) and v and not storage.is_remote(v) else v

    for key in PATH_KEYS:
        spec = space.params.get(key)
        if spec and next(iter(spec)) in ("grid", "choice"):
            kind = next(iter(spec))
            space.params[key] = {kind: [anchor(v) for v in spec[kind]]}
    init = anchor(base.run.init_from)
    return space, base.override("run.init_from", init) if init != base.run.init_from else base


def reported_metrics(cfg: Config, pipeline: str = "joint") -> set[str]:
    """Metric keys every report of a run with ``cfg`` carries (validation metrics are carried from
    the latest validation into every report, see dynamonet/train/worker.py and dynamonet/train/stfn.py)."""
    if pipeline == "stfn":
        from dynamonet.train.stfn import stfn_splits

        keys = {"epoch", "train/loss", "train/top1", "lr", "perf/videos_per_s"}
        if stfn_splits(cfg)[1]:
            keys |= {"val/top1", "val/top5", "val/loss", "val/clip_mean_top1", "val/clip_mean_top5", "val/videos"}
        return keys
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
        if space.metric not in reported_metrics(cfg, space.pipeline):
            why = ("there is no validation split (data.val_split is empty)" if not cfg.data.val_split and
                   space.metric.startswith("val/") else f"model.mode={mode} does not report it")
            raise ValueError(f"{path}: metric {space.metric!r}: trials would not report it ({why}); "
                             f"choose one of {', '.join(sorted(reported_metrics(cfg, space.pipeline)))}")


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
    if config.get("pipeline") == "stfn":
        from dynamonet.train.stfn import STFN_HPARAM_KEYS, build_stfn_trainer, prepare_stfn_run

        stfn = prepare_stfn_run(cfg)  # the DynamoNet and the features exist (run_sweep made them): reused
        hparams = run_hparams(stfn.cfg, tuple(dict.fromkeys([*config["params"], *STFN_HPARAM_KEYS])))
        result = build_stfn_trainer(stfn, callbacks=[TuneReportCallback()], hparams=hparams).fit()
        if result.error is not None:
            raise result.error
        return
    spec = prepare_run(cfg)
    spec.hparams = run_hparams(spec.cfg, tuple(dict.fromkeys([*config["params"], *HPARAM_KEYS])))
    result = build_trainer(spec, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error


def best_recipe(space: SweepSpace, base: Config, params: dict[str, Any]) -> dict[str, Any]:
    """A recipe for ``train_joint.py --config`` (``train_stfn.py`` for an stfn sweep) with the best
    trial's values (a fresh run name)."""
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
    if space.pipeline == "stfn":  # train (or reuse) the DynamoNet and extract its features once, for every trial
        from dynamonet.train.stfn import prepare_features

        base = prepare_features(base)[0]
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
    param_space = {**tune_param_space(space, trials_uri(storage_root, space.name)), "pipeline": space.pipeline}
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
    epochs = base.stfn.epochs if space.pipeline == "stfn" else base.train.epochs
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


# the second number of a trial's row: frame prediction for DynamoNet, the clip mean for STFN
SIDE_METRIC = {"joint": "val/fp_ssim", "stfn": "val/clip_mean_top1"}


def _columns(space: SweepSpace) -> list[str]:
    return ["trial", *space.params, space.metric, f"best {space.metric}", "val/top5", SIDE_METRIC[space.pipeline],
            "train/loss", "epochs", "status"]


def _trial_row(r: Any, space: SweepSpace) -> dict[str, Any]:
    m = r.metrics or {}
    params = (r.config or {}).get("params", {})
    path = getattr(r, "path", None)
    row: dict[str, Any] = {"trial": m.get("trial_id") or (os.path.basename(str(path).rstrip("/")) if path else "")}
    row.update({k: params.get(k) for k in space.params})
    row.update({space.metric: m.get(space.metric, float("nan")),
                f"best {space.metric}": best_of(r.metrics_dataframe, space.metric, space.mode),
                "val/top5": m.get("val/top5"), SIDE_METRIC[space.pipeline]: m.get(SIDE_METRIC[space.pipeline]),
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


def t_975(df: int) -> float:
    """t_{0.975, df}, the two-sided 95 % Student-t quantile: the table ``T_975`` for df <= 30, 1.96 beyond."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else 1.96


def seed_keys(space: SweepSpace) -> list[str]:
    """The swept keys that only repeat a configuration (``SEED_KEYS``)."""
    return [k for k in space.params if k in SEED_KEYS]


def config_keys(space: SweepSpace) -> list[str]:
    """The swept keys that define a configuration: every swept key but the seed keys."""
    return [k for k in space.params if k not in SEED_KEYS]


def repeats(space: SweepSpace) -> str:
    """What repeats a configuration: ``"seeds"`` (a seed axis), ``"samples"`` (num_samples > 1 over
    grid/choice/randint values, no seed axis) or ``""`` (every configuration runs once; also a random
    search over uniform/loguniform values, whose every sample is another configuration)."""
    if seed_keys(space):
        return "seeds"
    continuous = any(kind in ("uniform", "loguniform") for spec in space.params.values() for kind in spec)
    return "samples" if space.num_samples > 1 and not continuous else ""


def mean_ci(values: Iterable[Any]) -> dict[str, float]:
    """``n`` (finite values), ``mean``, ``std`` (sample, ddof=1; NaN for n = 1), ``ci95`` (half-width of
    the 95 % Student-t interval of the mean, t_{0.975, n-1}·std/√n; NaN for n < 2), ``low``/``high``
    (mean ∓ ci95), ``min`` and ``max`` of the finite values; NaN statistics for n = 0."""
    v = [float(x) for x in values if _finite(x)]
    n, nan = len(v), float("nan")
    if not v:
        return {"n": 0, "mean": nan, "std": nan, "ci95": nan, "low": nan, "high": nan, "min": nan, "max": nan}
    mean = math.fsum(v) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else nan
    ci = t_975(n - 1) * std / math.sqrt(n) if n > 1 else nan
    return {"n": n, "mean": mean, "std": std, "ci95": ci, "low": mean - ci, "high": mean + ci,
            "min": min(v), "max": max(v)}


def _finite(x: Any) -> bool:
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _hashable(v: Any) -> Any:
    """A grouping key for a swept value (lists become tuples, NaN one key)."""
    v = _plain(v)
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def _groups(df: Any, keys: list[str]) -> dict[tuple, list[int]]:
    """Row positions of ``df`` grouped by their values of ``keys``, in order of first appearance."""
    columns = [df[k].tolist() for k in keys]
    out: dict[tuple, list[int]] = {}
    for i in range(len(df)):
        out.setdefault(tuple(_hashable(c[i]) for c in columns), []).append(i)
    return out


SUMMARY_STATS = ("n", "mean", "std", "ci95", "low", "high", "min", "max")
FP_MEAN = "val/fp_ssim mean"


def summary_table(df: Any, space: SweepSpace) -> Any:
    """One row per configuration (the swept values other than the seed keys) of a results table:
    the configuration's values, ``SUMMARY_STATS`` of the metric over its trials (``mean_ci``), and
    ``val/fp_ssim mean`` where any trial reported it. Sorted best first by ``mean``; configurations
    without a finite metric last."""
    import pandas as pd

    keys = config_keys(space)
    metric = pd.to_numeric(df[space.metric], errors="coerce").tolist()
    fp = (pd.to_numeric(df["val/fp_ssim"], errors="coerce").tolist()
          if "val/fp_ssim" in df and space.metric != "val/fp_ssim" else [])
    with_fp = any(_finite(x) for x in fp)
    rows = []
    for idx in _groups(df, keys).values():
        row: dict[str, Any] = {k: _plain(df[k].iloc[idx[0]]) for k in keys}
        row.update(mean_ci(metric[i] for i in idx))
        if with_fp:
            row[FP_MEAN] = mean_ci(fp[i] for i in idx)["mean"]
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*keys, *SUMMARY_STATS, *([FP_MEAN] if with_fp else [])])
    out["n"] = out["n"].astype(int)
    return out.sort_values("mean", ascending=space.mode == "min", na_position="last",
                           kind="stable").reset_index(drop=True)


def ci_separated(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """Whether the 95 % CIs of two summary rows do not overlap; None without a second row or without
    both intervals (a configuration with fewer than 2 results)."""
    if a is None or b is None:
        return None
    bounds = (a["low"], a["high"], b["low"], b["high"])
    if not all(_finite(x) for x in bounds):
        return None
    return bool(a["low"] > b["high"] or b["low"] > a["high"])


def write_reports(grid: Iterable[Any], space: SweepSpace, base: Config, out_uri: str,
                  endpoint: str = "") -> dict[str, Any]:
    """results.csv and summary.csv (both printed), best_config.yaml and the plots under ``out_uri``.

    ``out_uri`` is the sweep's directory: a local path, written directly, or an ``s3://`` URI,
    written to a temporary directory and then uploaded with ``pyarrow.fs``.
    """
    df = results_table(grid, space)
    configs = summary_table(df, space)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    over = repeats(space)
    what = f"mean, std and 95 % CI over its {over}" if over else "one trial each"
    print(f"[sweep] per configuration ({space.metric}, {what}):", flush=True)
    print(configs.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    if not storage.is_remote(out_uri):
        summary = _write_report_files(df, configs, space, base, out_uri, out_uri)
    else:
        import pyarrow.fs as pafs

        fs, path = storage.resolve_filesystem(out_uri, endpoint)
        with tempfile.TemporaryDirectory(prefix="dynamonet-sweep-") as tmp:
            summary = _write_report_files(df, configs, space, base, tmp, out_uri)
            pafs.copy_files(tmp, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    names = (["results.csv", "summary.csv"] + (["best_config.yaml"] if summary["best_config"] else [])
             + [p.rsplit("/", 1)[-1] for p in summary["plots"]])
    print(f"[sweep] reports ({', '.join(names)}) → {summary['dir']}", flush=True)
    return summary


def done_line(summary: dict[str, Any], space: SweepSpace) -> str:
    """The last line of tune/sweep.py: ``SWEEP done: <n> trials, best <metric>=<x> with {…}; best
    config: <path>``, where x is the best trial's value, or with repeats the best configuration's
    mean followed by `` ± <ci95> over <n> seeds`` (or samples)."""
    value = f"{summary['best_metric']:.4f}"
    over, n = summary.get("over", ""), summary.get("best_n", 1)
    if over:
        value += f" ± {summary['best_ci95']:.4f} over {n} {over}" if n > 1 else f" over 1 {over[:-1]} (no CI)"
    return (f"SWEEP done: {summary['trials']} trials, best {space.metric}={value} with {summary['best']}; "
            f"best config: {summary['best_config']}")


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name if storage.is_remote(uri) else os.path.join(uri, name)


def _write_report_files(df: Any, configs: Any, space: SweepSpace, base: Config, local_dir: str,
                        uri: str) -> dict[str, Any]:
    """Write the reports to ``local_dir``; the returned paths name where they end up (``uri``).

    The best is the first row of ``configs`` (the summary): with one trial per configuration the
    best trial, with seeds or samples the configuration with the best mean over them."""
    os.makedirs(local_dir, exist_ok=True)
    df.to_csv(os.path.join(local_dir, "results.csv"), index=False)
    configs.to_csv(os.path.join(local_dir, "summary.csv"), index=False)
    keys, over = config_keys(space), repeats(space)
    rows = [{k: _plain(v) for k, v in row.items()} for row in configs.to_dict("records")]
    scored = [r for r in rows if r["n"] > 0]
    best = scored[0] if scored else None
    runner = scored[1] if len(scored) > 1 else None
    separated = ci_separated(best, runner)
    best_params: dict[str, Any] | None = None
    best_metric, best_config = float("nan"), ""
    if best is not None:
        best_params = {k: best[k] for k in keys}
        best_metric = float(best["mean"])
        best_config = _join(uri, "best_config.yaml")
        command = (f"--config {best_config}" if not storage.is_remote(uri)
                   else f"--config best_config.yaml  (downloaded from {best_config})")
        with open(os.path.join(local_dir, "best_config.yaml"), "w", encoding="utf-8") as fh:
            if not over:
                fh.write(f"# best of sweep {space.name!r} by {space.metric} ({best_metric:.4f}): {best_params}\n")
            else:
                spread = (f"mean {best_metric:.4f} ± {best['ci95']:.4f} over {best['n']} {over}, 95 % CI"
                          if best["n"] > 1 else f"{best_metric:.4f}, 1 {over[:-1]}, no CI")
                fh.write(f"# best of sweep {space.name!r} by {space.metric} ({spread}): {best_params}\n")
                if runner is None:
                    fh.write("# no runner-up to compare with\n")
                elif separated is None:
                    fh.write("# separation from the runner-up unknown: a configuration has fewer than 2 results\n")
                elif separated:
                    fh.write("# separated from the runner-up: CIs do not overlap\n")
                else:
                    fh.write(f"# not separated from {({k: runner[k] for k in keys})}: CIs overlap\n")
            fh.write(f"# python pipelines/train_joint.py {command}\n")
            yaml.safe_dump(best_recipe(space, base, best_params), fh, sort_keys=False)
    written = ([plot_param(df, key, space, local_dir, configs) for key in keys] if keys
               else [plot_seeds(df, space, local_dir)])
    plots = [_join(uri, os.path.basename(p)) for p in written]
    return {"dir": uri, "trials": len(df), "best": best_params, "best_metric": best_metric,
            "best_ci95": float(best["ci95"]) if best else float("nan"), "best_n": int(best["n"]) if best else 0,
            "over": over, "configs": rows, "separated": separated, "best_config": best_config,
            "results": _join(uri, "results.csv"), "summary": _join(uri, "summary.csv"), "plots": plots}


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if _is_number(v) and not math.isnan(v) else (1, 0, str(v))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_point(ns: list[int], over: str) -> str:
    """"5 seeds per point", "3–5 samples per point" or "one trial per point"."""
    ns = [n for n in ns if n > 0] or [0]
    if not over or max(ns) <= 1:
        return "one trial per point"
    count = str(ns[0]) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"
    return f"{count} {over} per point"


def plot_param(df: Any, key: str, space: SweepSpace, out_dir: str, configs: Any = None) -> str:
    """``plot_<key>.png``: the metric against one swept parameter.

    One series (colour, marker, legend entry) per combination of the other grid/choice parameters
    (the seed keys excepted), shifted sideways a little so that series do not hide each other.
    Every trial is a small dot; each configuration (a row of ``configs``, the summary table) is its
    mean with a 95 % CI error bar. The x axis is categorical for non-numeric values and for a
    grid/choice of at most 8 values, numeric (log when it spans over 50×) otherwise."""
    import pandas as pd

    plt = _pyplot()
    metric, over = space.metric, repeats(space)
    if configs is None:
        configs = summary_table(df, space)
    others = [k for k in config_keys(space) if k != key and next(iter(space.params[k])) in ("grid", "choice")]
    values = sorted({_hashable(v) for v in df[key].tolist()}, key=_sort_key)
    numeric = bool(values) and all(_is_number(v) and not math.isnan(v) for v in values)
    categorical = not numeric or (next(iter(space.params[key])) in ("grid", "choice") and len(values) <= 8)
    log = (numeric and not categorical and min(values) > 0 and max(values) / max(min(values), 1e-12) > 50)
    series_trials, series_configs = _groups(df, others), _groups(configs, others)
    names = sorted(dict.fromkeys([*series_configs, *series_trials]), key=lambda t: tuple(map(_sort_key, t)))
    count = len(names)
    step = min(0.15, 0.6 / max(count, 1))  # sideways shift between series (categorical axis)

    def place(v: Any, s: int) -> float:
        shift = s - (count - 1) / 2
        if categorical:
            return values.index(_hashable(v)) + shift * step
        if log:
            return float(v) * (max(values) / min(values)) ** (0.012 * shift)
        return float(v) + shift * 0.012 * ((max(values) - min(values)) or 1.0)

    y = pd.to_numeric(df[metric], errors="coerce").tolist()
    seeds = [k for k in seed_keys(space) if k in df]
    fig, ax = plt.subplots(figsize=(6.4 if count > 1 else 5.2, 4))
    for s, name in enumerate(names):
        color, marker = f"C{s % 10}", MARKERS[s % len(MARKERS)]
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(others, name, strict=True)) or None
        nudge = -0.3 * step if categorical and over else 0.0  # trials just left of their configuration's bar
        shown = [i for i in series_trials.get(name, []) if _finite(y[i])]
        dots = [(place(df[key].iloc[i], s) + nudge, y[i]) for i in shown]
        if dots:
            ax.scatter(*zip(*dots, strict=True), s=12, color=color, alpha=0.45, linewidths=0, zorder=2)
        for i, (dx, dy) in zip(shown, dots, strict=True):  # each trial's seed next to its dot
            seed = ",".join(_fmt(df[k].iloc[i]) for k in seeds)
            if seed:
                ax.annotate(f"s{seed}", (dx, dy), xytext=(-3, 0), textcoords="offset points", ha="right",
                            va="center", fontsize=6, color=color)
        rows = [configs.iloc[i] for i in series_configs.get(name, []) if configs.iloc[i]["n"] > 0]
        rows.sort(key=lambda r: _sort_key(_hashable(r[key])))
        xs = [place(r[key], s) for r in rows]
        # a line only joins configurations that differ in ``key`` alone (not across random draws of others)
        joined = len(others) == len(config_keys(space)) - 1 and len({_hashable(r[key]) for r in rows}) == len(rows)
        ax.plot(xs, [r["mean"] for r in rows], marker=marker, color=color, linestyle="-" if joined else "none",
                linewidth=1, markersize=7, markeredgecolor="black", markeredgewidth=0.6, label=label, zorder=3)
        bars = [(x, r["mean"], r["ci95"]) for x, r in zip(xs, rows, strict=True) if _finite(r["ci95"])]
        if bars:
            bx, by, be = zip(*bars, strict=True)
            ax.errorbar(bx, by, yerr=be, fmt="none", ecolor=color, elinewidth=1.2, capsize=3, zorder=3)
    if categorical:
        ax.set_xticks(range(len(values)), [_fmt(v) for v in values])
        ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
    elif log:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    per_point = _per_point(configs["n"].tolist(), over)
    dots = "dots: trials, s = their seed" if seeds else "dots: trials"
    ax.set_title(f"{metric} vs {key}\n" + (f"mean ± 95 % CI of {per_point}; {dots}" if over else per_point),
                 fontsize=9)
    if count > 1:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"plot_{key.replace('.', '_')}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_seeds(df: Any, space: SweepSpace, out_dir: str) -> str:
    """``plot_seed.png`` for a sweep over seeds only: every trial against its seed, with the mean and
    its 95 % CI as a line and a band."""
    import pandas as pd

    plt = _pyplot()
    metric = space.metric
    key = (seed_keys(space) or list(space.params))[0]
    y = pd.to_numeric(df[metric], errors="coerce").tolist()
    seeds = df[key].tolist()
    values = sorted({_hashable(v) for v in seeds}, key=_sort_key)
    points = [(values.index(_hashable(v)), m) for v, m in zip(seeds, y, strict=True) if _finite(m)]
    stats = mean_ci(y)
    fig, ax = plt.subplots(figsize=(5.2, 4))
    if points:
        ax.scatter(*zip(*points, strict=True), s=30, color="C0", zorder=3, label="trial")
    if stats["n"]:
        ax.axhline(stats["mean"], color="C1", linewidth=1.5, label="mean")
    if _finite(stats["ci95"]):
        ax.axhspan(stats["low"], stats["high"], color="C1", alpha=0.2, label="95 % CI of the mean")
    ax.set_xticks(range(len(values)), [_fmt(v) for v in values])
    ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ci = f" ± {stats['ci95']:.4f}" if _finite(stats["ci95"]) else ""
    ax.set_title(f"{metric} over {stats['n']} trials of {len(values)} seeds: mean {stats['mean']:.4f}{ci}",
                 fontsize=9)
    if points:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "plot_seed.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
