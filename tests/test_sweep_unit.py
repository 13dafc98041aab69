"""Sweep reports and space validation without Ray: the results table, the per-configuration summary
over seeds (mean, std, 95 % CI, the best configuration and whether it is separated from the
runner-up), the plots, where the reports go (local storage path or s3://), and the scheduler check
of the space file."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from dynamonet.cli import recipe_path
from dynamonet.config import load_config
from dynamonet.sweep import SweepSpace, done_line, load_space, repeats, results_table, t_975, write_reports

METRIC = "val/top1"


def space(mode: str = "max") -> SweepSpace:
    return SweepSpace(name="unit", recipe="embedded", metric=METRIC, mode=mode,
                      params={"loss.alpha": {"grid": [0.0, 0.1, 0.5]}})


def trial(alpha: float, history: list[float] | None, error: Exception | None = None) -> SimpleNamespace:
    """A stand-in for a Tune ``Result``: ``history`` None means it failed before its first report."""
    metrics = {"trial_id": f"t{alpha}", METRIC: history[-1], "epoch": len(history)} if history else {}
    hist = pd.DataFrame({METRIC: history, "epoch": range(1, len(history) + 1)}) if history else None
    return SimpleNamespace(metrics=metrics, config={"sweep": "unit", "params": {"loss.alpha": alpha}},
                           metrics_dataframe=hist, error=error, path=f"/s/unit/train_trial_t{alpha}")


def grid() -> list[SimpleNamespace]:
    return [trial(0.0, [0.2, 0.4, 0.3]), trial(0.1, None, RuntimeError("boom")), trial(0.5, [0.5, 0.6])]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_trial_that_failed_before_reporting_gets_a_nan_row(mode):
    df = results_table(grid(), space(mode))
    failed = df[df["loss.alpha"] == 0.1].iloc[0]
    assert failed["status"] == "error" and math.isnan(failed[f"best {METRIC}"]) and math.isnan(failed[METRIC])
    assert failed["trial"] == "train_trial_t0.1"
    assert df.iloc[-1]["loss.alpha"] == 0.1  # NaN sorts last in both modes
    best = dict(zip(df["loss.alpha"], df[f"best {METRIC}"], strict=True))
    assert (best[0.0], best[0.5]) == ((0.4, 0.6) if mode == "max" else (0.2, 0.5))
    assert df.iloc[0]["loss.alpha"] == (0.5 if mode == "max" else 0.0)


def test_reports_in_a_local_storage_path(tmp_path):
    base = load_config(recipe_path("embedded"))
    out = str(tmp_path / "runs" / "unit")
    summary = write_reports(grid(), space(), base, out)
    assert summary["best"] == {"loss.alpha": 0.5} and summary["best_config"] == str(Path(out) / "best_config.yaml")
    assert sorted(p.name for p in Path(out).iterdir()) == ["best_config.yaml", "plot_loss_alpha.png", "results.csv",
                                                           "summary.csv"]
    text = (Path(out) / "best_config.yaml").read_text()
    recipe = yaml.safe_load(text)
    assert recipe["loss"]["alpha"] == 0.5 and recipe["recipe"] == "unit-best"
    # without a seed axis or num_samples > 1: the best trial, and the report lines of before
    assert text.splitlines()[0] == "# best of sweep 'unit' by val/top1 (0.6000): {'loss.alpha': 0.5}"
    assert done_line(summary, space()) == (f"SWEEP done: 3 trials, best val/top1=0.6000 with {{'loss.alpha': 0.5}}; "
                                           f"best config: {Path(out) / 'best_config.yaml'}")
    configs = pd.read_csv(Path(out) / "summary.csv")
    assert configs["loss.alpha"].tolist() == [0.5, 0.0, 0.1] and configs["n"].tolist() == [1, 1, 0]
    assert summary["separated"] is None and configs["std"].isna().all()


def test_no_best_config_when_no_trial_reported(tmp_path):
    base = load_config(recipe_path("embedded"))
    summary = write_reports([trial(0.1, None, RuntimeError("boom"))], space(), base, str(tmp_path))
    assert summary["best"] is None and summary["best_config"] == ""
    assert not (tmp_path / "best_config.yaml").exists() and (tmp_path / "results.csv").exists()


def test_reports_are_uploaded_to_an_s3_storage_path(s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the driver's working directory
    base = load_config(recipe_path("embedded"))
    summary = write_reports(grid(), space(), base, f"{s3_bucket}/sweeps/unit", s3_server.endpoint)
    assert summary["best_config"] == f"{s3_bucket}/sweeps/unit/best_config.yaml"
    keys = s3_server.keys(f"{s3_bucket}/sweeps/unit")
    assert keys == ["sweeps/unit/best_config.yaml", "sweeps/unit/plot_loss_alpha.png", "sweeps/unit/results.csv",
                    "sweeps/unit/summary.csv"]
    assert list(tmp_path.iterdir()) == []


SEEDS = [0, 1, 2, 3, 4]
# loss.alpha -> val/top1 of seeds 0..4: far apart (CIs do not overlap), and close (they do; the best
# single trial, 0.85, is alpha 0.0, while alpha 0.1 has the better mean)
APART = {0.0: [0.60, 0.62, 0.58, 0.61, 0.59], 0.1: [0.80, 0.83, 0.78, 0.81, 0.79]}
CLOSE = {0.0: [0.70, 0.85, 0.62, 0.70, 0.68], 0.1: [0.73, 0.80, 0.65, 0.77, 0.71]}


def run(i: int, params: dict, value: float, fp_ssim: float | None = None) -> SimpleNamespace:
    """A stand-in for a finished Tune ``Result`` with ``params`` whose metric ended at ``value``."""
    metrics = {"trial_id": f"r{i}", METRIC: value, "epoch": 2, "val/fp_ssim": fp_ssim}
    return SimpleNamespace(metrics=metrics, config={"sweep": "unit", "params": dict(params)},
                           metrics_dataframe=pd.DataFrame({METRIC: [value - 0.1, value], "epoch": [1, 2]}),
                           error=None, path=f"/s/unit/train_trial_r{i}")


def seeded(values: dict[float, list[float]], mode: str = "max") -> tuple[SweepSpace, list[SimpleNamespace]]:
    """Two configurations (loss.alpha) × 5 seeds; fp_ssim = value / 2."""
    s = SweepSpace(name="unit", recipe="embedded", metric=METRIC, mode=mode,
                   params={"loss.alpha": {"grid": list(values)}, "train.seed": {"grid": SEEDS}})
    runs = [(a, seed, v) for a, vs in values.items() for seed, v in zip(SEEDS, vs, strict=True)]
    return s, [run(i, {"loss.alpha": a, "train.seed": seed}, v, v / 2) for i, (a, seed, v) in enumerate(runs)]


def seed_base():
    return load_config(recipe_path("embedded")).override("train.seed", "17")  # no swept seed


def test_t_quantiles_table():
    assert [t_975(d) for d in (1, 2, 3, 4, 5, 10, 30)] == [12.706, 4.303, 3.182, 2.776, 2.571, 2.228, 2.042]
    assert t_975(31) == t_975(1000) == 1.96
    with pytest.raises(ValueError):
        t_975(0)


def test_t_quantiles_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for d in range(1, 31):
        assert t_975(d) == pytest.approx(float(stats.t.ppf(0.975, d)), abs=5e-4), d


@pytest.mark.parametrize("mode", ["max", "min"])
def test_summary_has_mean_std_and_ci_over_seeds_per_configuration(tmp_path, mode):
    s, runs = seeded(APART, mode)
    summary = write_reports(runs, s, seed_base(), str(tmp_path))
    trials = pd.read_csv(tmp_path / "results.csv")
    assert len(trials) == 10 and sorted(trials["train.seed"]) == sorted(SEEDS * 2)  # one row per trial
    configs = pd.read_csv(tmp_path / "summary.csv")
    assert list(configs.columns) == ["loss.alpha", "n", "mean", "std", "ci95", "low", "high", "min", "max",
                                     "val/fp_ssim mean"]
    assert configs["loss.alpha"].tolist() == ([0.1, 0.0] if mode == "max" else [0.0, 0.1])  # best mean first
    for _, row in configs.iterrows():
        v = np.array(APART[row["loss.alpha"]])
        mean, std = v.mean(), v.std(ddof=1)
        ci = 2.776 * std / np.sqrt(5)  # t_{0.975, 4}
        assert row["n"] == 5
        assert (row["mean"], row["std"], row["ci95"]) == pytest.approx((mean, std, ci), abs=1e-12)
        assert (row["low"], row["high"], row["min"], row["max"]) == pytest.approx((mean - ci, mean + ci, v.min(),
                                                                                   v.max()), abs=1e-12)
        assert row["val/fp_ssim mean"] == pytest.approx(mean / 2, abs=1e-12)
    assert [c["loss.alpha"] for c in summary["configs"]] == configs["loss.alpha"].tolist()
    assert summary["best"] == {"loss.alpha": configs["loss.alpha"][0]} and summary["over"] == "seeds"


def test_best_configuration_is_the_best_mean_and_separated_from_the_runner_up(tmp_path):
    s, runs = seeded(APART)
    summary = write_reports(runs, s, seed_base(), str(tmp_path))
    v = np.array(APART[0.1])
    ci = 2.776 * v.std(ddof=1) / np.sqrt(5)
    assert summary["separated"] is True and summary["best"] == {"loss.alpha": 0.1}
    assert summary["best_metric"] == pytest.approx(v.mean()) and summary["best_n"] == 5
    text = (tmp_path / "best_config.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == (f"# best of sweep 'unit' by val/top1 (mean {v.mean():.4f} ± {ci:.4f} over 5 seeds, 95 % CI): "
                        "{'loss.alpha': 0.1}")
    assert lines[1] == "# separated from the runner-up: CIs do not overlap"
    recipe = yaml.safe_load(text)
    assert recipe["loss"]["alpha"] == 0.1 and recipe["train"]["seed"] == 17  # the base's seed, not a swept one
    assert done_line(summary, s) == (f"SWEEP done: 10 trials, best val/top1={v.mean():.4f} ± {ci:.4f} over 5 seeds "
                                     f"with {{'loss.alpha': 0.1}}; best config: {tmp_path / 'best_config.yaml'}")


def test_overlapping_cis_are_not_separated_and_the_best_single_trial_does_not_decide(tmp_path):
    s, runs = seeded(CLOSE)
    summary = write_reports(runs, s, seed_base(), str(tmp_path))
    assert pd.read_csv(tmp_path / "results.csv")["loss.alpha"][0] == 0.0  # the best trial (0.85) ...
    assert summary["best"] == {"loss.alpha": 0.1}  # ... is not the best mean
    assert summary["separated"] is False
    lines = (tmp_path / "best_config.yaml").read_text().splitlines()
    assert lines[1] == "# not separated from {'loss.alpha': 0.0}: CIs overlap"
    assert yaml.safe_load((tmp_path / "best_config.yaml").read_text())["train"]["seed"] == 17


def test_repeated_samples_without_a_seed_axis_are_summarised_as_samples(tmp_path):
    s = SweepSpace(name="unit", recipe="embedded", metric=METRIC, num_samples=3,
                   params={"loss.alpha": {"grid": [0.0, 0.1]}})
    values = {0.0: [0.5, 0.9, 0.4], 0.1: [0.7, 0.7, 0.8]}
    runs = [run(i, {"loss.alpha": a}, v) for i, (a, v) in enumerate((a, v) for a, vs in values.items() for v in vs)]
    summary = write_reports(runs, s, seed_base(), str(tmp_path))
    assert summary["best"] == {"loss.alpha": 0.1} and summary["best_n"] == 3 and summary["over"] == "samples"
    assert " over 3 samples with {'loss.alpha': 0.1}" in done_line(summary, s)
    s.params["optim.lr"] = {"loguniform": [0.01, 0.3]}  # a random search: every sample is another configuration
    assert repeats(s) == ""


def colours(png: Path) -> set[int]:
    """The hues (in 1/24 turns) of a PNG's saturated pixels, each covering at least 20 pixels."""
    from matplotlib.colors import rgb_to_hsv
    from matplotlib.image import imread

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hsv = rgb_to_hsv(imread(str(png))[..., :3])
    hues = np.round(hsv[(hsv[..., 1] > 0.5) & (hsv[..., 2] > 0.3)][:, 0] * 24).astype(int) % 24
    counts = np.bincount(hues, minlength=24)
    return {int(h) for h in np.flatnonzero(counts >= 20)}


def test_plots_show_every_swept_value_as_series_with_trials_and_cis(tmp_path):
    s = SweepSpace(name="unit", recipe="embedded", metric=METRIC, mode="max",
                   params={"model.kernel_size": {"grid": [3, 5]}, "loss.alpha": {"grid": [0.0, 0.1]},
                           "train.seed": {"grid": [0, 1, 2]}})
    combos = [(k, a, seed) for k in (3, 5) for a in (0.0, 0.1) for seed in (0, 1, 2)]
    runs = [run(i, {"model.kernel_size": k, "loss.alpha": a, "train.seed": seed}, 0.5 + 0.1 * (k == 5) + a + 0.01 * seed)
            for i, (k, a, seed) in enumerate(combos)]
    summary = write_reports(runs, s, seed_base(), str(tmp_path))
    assert sorted(Path(p).name for p in summary["plots"]) == ["plot_loss_alpha.png", "plot_model_kernel_size.png"]
    assert not (tmp_path / "plot_train_seed.png").exists()  # the seed is aggregated, not plotted as a parameter
    assert summary["best"] == {"model.kernel_size": 5, "loss.alpha": 0.1}
    for name in ("plot_loss_alpha.png", "plot_model_kernel_size.png"):
        assert len(colours(tmp_path / name)) >= 2  # one colour per series (the other parameter's values)
    s1, runs1 = seeded(APART)
    write_reports(runs1, s1, seed_base(), str(tmp_path / "one"))
    assert colours(tmp_path / "one" / "plot_loss_alpha.png")  # one series, still drawn


def test_a_sweep_over_seeds_only_plots_the_seed_distribution(tmp_path):
    s = SweepSpace(name="unit", recipe="embedded", metric=METRIC, params={"train.seed": {"grid": SEEDS}})
    runs = [run(i, {"train.seed": seed}, v) for i, (seed, v) in enumerate(zip(SEEDS, APART[0.1], strict=True))]
    summary = write_reports(runs, s, seed_base(), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_config.yaml", "plot_seed.png", "results.csv",
                                                           "summary.csv"]
    assert summary["best"] == {} and summary["separated"] is None and len(summary["configs"]) == 1
    assert summary["configs"][0]["n"] == 5 and colours(tmp_path / "plot_seed.png")
    assert (tmp_path / "best_config.yaml").read_text().splitlines()[1] == "# no runner-up to compare with"


@pytest.mark.parametrize("scheduler,message", [
    ({"type": "hyperband"}, "scheduler.type: unknown scheduler 'hyperband' (asha or none)"),
    ("asha", "scheduler: expected a mapping"),
])
def test_bad_scheduler_fails_in_space_validation(tmp_path, scheduler, message):
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump({"recipe": "embedded", "scheduler": scheduler,
                                    "params": {"loss.alpha": {"grid": [0.0, 0.1]}}}))
    with pytest.raises(ValueError) as e:
        load_space(str(path))
    assert str(e.value).startswith(f"{path}: {message}")


def test_asha_counts_epochs_and_trials_survive_a_lost_node(tmp_path):
    """ASHA reads the ``epoch`` every report carries (after ``Tuner.restore`` Tune's own
    training_iteration would start again at 1 while Train resumes at epoch e), and Tune restarts a
    trial whose actor or node was lost (its Train run then resumes from its checkpoint)."""
    from ray.tune.schedulers import ASHAScheduler

    from dynamonet.sweep import _scheduler, trial_config, trials_uri, tune_run_config

    s, base = load_space(str(Path(__file__).resolve().parents[1] / "tune" / "spaces" / "smoke.yaml"))
    sched = _scheduler(s, base, None)
    assert isinstance(sched, ASHAScheduler) and sched._time_attr == "epoch" and sched._max_t == base.train.epochs
    rc = tune_run_config(s, str(tmp_path))
    assert rc.failure_config.max_failures == s.max_failures == 3 and rc.storage_path == str(tmp_path)
    trials = trials_uri("s3://b/sweeps", s.name)
    cfg = trial_config({"sweep": s.name, "params": {"model.kernel_size": 7}, "trials": trials}, base.to_dict(), "t9")
    assert trials == "s3://b/sweeps/smoke/trials" and cfg.run.storage_path == trials and cfg.run.name == "smoke-t9"


@pytest.mark.parametrize("sets,metric,message", [
    ({"data.val_split": ""}, "val/top1", "no validation split"),
    ({"model.mode": "pretrain"}, "val/top1", "model.mode=pretrain does not report it"),
    ({}, "val/accuracy", "model.mode=joint does not report it"),
])
def test_a_metric_the_trials_would_not_report_is_refused_before_any_trial(tmp_path, sets, metric, message):
    path = tmp_path / "metric.yaml"
    path.write_text(yaml.safe_dump({"recipe": "embedded", "metric": metric, "set": sets,
                                    "params": {"loss.alpha": {"grid": [0.0, 0.1]}}}))
    with pytest.raises(ValueError) as e:
        load_space(str(path))
    assert str(e.value).startswith(f"{path}: metric {metric!r}: trials would not report it") and message in str(e.value)
    assert "val/loss" in str(e.value) or "train/loss" in str(e.value)  # it lists what they do report


def test_relative_checkpoint_paths_are_anchored_where_the_sweep_starts(tmp_path, monkeypatch):
    """Trials run in Tune's trial directory: a relative run.init_from must not be read from there."""
    space_file = tmp_path / "t2.yaml"
    space_file.write_text(yaml.safe_dump({
        "recipe": "subtle", "scheduler": {"type": "none"}, "set": {"data.label_fraction": 0.5},
        "params": {"run.init_from": {"grid": ["", "runs/pre-s{seed}", "s3://b/pre-s{seed}"]},
                   "train.seed": {"grid": [0, 1]}}}))
    monkeypatch.chdir(tmp_path)
    space, base = load_space(str(space_file))
    assert space.params["run.init_from"]["grid"] == ["", str(tmp_path / "runs" / "pre-s{seed}"), "s3://b/pre-s{seed}"]
    assert base.data.label_fraction == 0.5 and space.num_trials() == 6
    _, base = load_space(str(space_file), ["run.init_from=runs/pre"])
    assert base.run.init_from == str(tmp_path / "runs" / "pre")


def test_every_space_in_the_repository_loads():
    spaces = sorted((Path(__file__).resolve().parents[1] / "tune" / "spaces").glob("*.yaml"))
    assert {"default", "claims_variants", "claims_kernel", "claims_table2"} <= {p.stem for p in spaces}
    for path in spaces:
        try:
            space, _ = load_space(str(path))
        except ValueError as e:  # the paper spaces need --set data.root=... (and storage)
            assert "data.root:" in str(e), (path, e)
            space, _ = load_space(str(path), ["data.root=s3://b/ucf101", "run.storage_path=s3://b/sweeps"])
        assert space.num_trials() >= 1, path
