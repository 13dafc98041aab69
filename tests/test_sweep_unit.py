"""Sweep reports and space validation without Ray: the results table, where the reports go
(local storage path or s3://), and the scheduler check of the space file."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from dynamonet.cli import recipe_path
from dynamonet.config import load_config
from dynamonet.sweep import SweepSpace, load_space, results_table, write_reports

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
    assert sorted(p.name for p in Path(out).iterdir()) == ["best_config.yaml", "plot_loss_alpha.png", "results.csv"]
    recipe = yaml.safe_load((Path(out) / "best_config.yaml").read_text())
    assert recipe["loss"]["alpha"] == 0.5 and recipe["recipe"] == "unit-best"


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
    assert keys == ["sweeps/unit/best_config.yaml", "sweeps/unit/plot_loss_alpha.png", "sweeps/unit/results.csv"]
    assert list(tmp_path.iterdir()) == []


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
