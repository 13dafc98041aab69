"""Ray Tune sweeps (tune/sweep.py): space validation, the trial config, and a real sweep in which
ASHA stops trials and random (uniform, loguniform) parameters are drawn and applied.

A real 3-trial sweep, its outputs, its interruption and resume run on the rehearsal cluster
(tests/test_rehearsal.py::test_sweep_in_the_bucket_interrupted_and_resumed).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pipeline_helpers import ROOT, run

from dynamonet.sweep import load_space, trial_config


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "tune" / "sweep.py"), *args]


def write_space(path: Path, params: dict, **extra) -> str:
    body = {"name": path.stem, "recipe": "embedded", "params": params, **extra}
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.mark.parametrize("params,message", [
    ({"model.kernal_size": {"grid": [3, 5]}}, "params.model.kernal_size: value 3 is invalid: model.kernal_size: unknown"),
    ({"model.kernel_size": {"grid": [3, 8]}}, "params.model.kernel_size: value 8 is invalid: model.kernel_size: must be an integer"),
    ({"model.kernel_size": {"grid": []}}, "params.model.kernel_size: grid needs a non-empty list"),
    ({"loss.alpha": {"normal": [0, 1]}}, "params.loss.alpha: expected one of {grid, choice"),
    ({"optim.lr": {"loguniform": [0, 0.1]}}, "params.optim.lr: loguniform needs low > 0"),
    ({}, "params is empty"),
])
def test_bad_spaces_fail_before_any_trial(tmp_path, params, message):
    path = write_space(tmp_path / "bad.yaml", params)
    with pytest.raises(ValueError) as e:
        load_space(path)
    assert message in str(e.value) and str(e.value).startswith(path)


def test_bad_space_on_the_command_line_is_one_line(tmp_path):
    path = write_space(tmp_path / "bad.yaml", {"model.kernel_size": {"grid": [3, 9]}})
    p = run(sweep_cmd("--space", path), dict(os.environ), timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "model.kernel_size: must be an integer in 3..7, got 9" in p.stderr


def test_shipped_spaces_validate():
    space, base = load_space(str(ROOT / "tune" / "spaces" / "lr_beta.yaml"))
    assert space.params and base.recipe == "embedded"
    # the default: both variants over 3 seeds on the benchmark set, no early stopping
    space, base = load_space(str(ROOT / "tune" / "spaces" / "default.yaml"))
    assert base.recipe == "subtle" and base.data.synthetic.kind == "subtle" and space.scheduler["type"] == "none"
    assert {k: v["grid"] for k, v in space.params.items()} == {"model.mode": ["joint", "backbone"],
                                                                "train.seed": [0, 1, 2]}
    space, base = load_space(str(ROOT / "tune" / "spaces" / "paper.yaml"),
                             ["data.root=s3://b/ucf101-s1", "run.storage_path=s3://b/sweeps"])
    assert space.num_trials() == 60 and base.recipe == "ucf101"
    assert {k: v["grid"] for k, v in space.params.items()} == {
        "model.kernel_size": [3, 4, 5, 6, 7], "loss.alpha": [0.0, 0.01, 0.1, 1.0], "data.clip_len": [8, 16, 32]}


def test_trial_config_applies_the_sampled_values(tmp_path):
    space, base = load_space(write_space(tmp_path / "s.yaml", {"model.kernel_size": {"grid": [3, 7]},
                                                              "loss.alpha": {"uniform": [0.0, 1.0]}}))
    cfg = trial_config({"sweep": "s", "params": {"model.kernel_size": 7, "loss.alpha": 0.25}}, base.to_dict(), "t1")
    assert cfg.model.kernel_size == 7 and cfg.loss.alpha == 0.25 and cfg.run.name == "s-t1"


# A tiny synthetic task on which frame prediction learns within one epoch: 16 steps of 16 clips.
TINY = {"train.epochs": 3, "train.num_workers": 1, "train.log_every": 0,
        "data.synthetic.num_classes": 4, "data.synthetic.train_per_class": 16, "data.synthetic.val_per_class": 2,
        "data.synthetic.num_frames": 12, "data.synthetic.size": 32, "data.clip_len": 8, "data.crop_size": 24,
        "data.resize_short": 32, "data.batch_size": 16, "data.clips_per_video": 4, "data.decode_actors": 1,
        "data.decode_cpus": 0.5, "model.dmr_dim": 64, "model.ar_dim": 32, "model.head_channels": 16,
        "model.dropout": 0.0, "optim.warmup_epochs": 0, "optim.schedule": "constant"}
LR, BETA, FROZEN = (0.8, 1.6), (0.5, 1.0), 16_000_000


def tune_reports(sweep_dir: Path) -> dict[str, list[dict]]:
    """Tune's own record of every report, per trial id (``result.json`` in each trial's directory)."""
    out: dict[str, list[dict]] = {}
    for path in sweep_dir.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[rows[0]["trial_id"]] = rows
    return out


@pytest.mark.ray
def test_asha_stops_bad_trials_and_random_params_are_drawn_and_applied(tmp_path):
    """3 trials of 3 epochs, one at a time, ASHA with grace period 1 and reduction factor 2 (rungs at
    epochs 1 and 2) on val/loss_fp. ``optim.lr_batch`` (grid) makes trial 1 learn and trials 2 and 3
    not: the linear scaling rule divides their drawn lr by a million, so their models stay where
    they started; lr (loguniform) and beta (uniform) are drawn per trial.

    Why the outcome does not depend on timing or on the draws: with max_concurrent 1 the trials run
    and reach each rung in grid order. Trial 1 is alone at every rung, so it is never cut and runs to
    max_t. Trials 2 and 3 reach rung 1 after it and are cut when their value is worse than the median
    of those recorded there before them: their val/loss_fp stays at the untrained ~1.07 while trial 1
    reaches ~0.6-0.7 after one epoch at any lr in [0.8, 1.6] (measured at both ends)."""
    storage = tmp_path / "runs"
    space = write_space(tmp_path / "asha.yaml", {"optim.lr_batch": {"grid": [16, FROZEN, 2 * FROZEN]},
                                                 "optim.lr": {"loguniform": list(LR)},
                                                 "loss.beta": {"uniform": list(BETA)}},
                        metric="val/loss_fp", mode="min", max_concurrent=1, max_failures=0,
                        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                        set={**TINY, "data.cache_dir": str(tmp_path / "cache")})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    p = run(sweep_cmd("--space", space, "--storage-path", str(storage)), env, timeout=600)
    assert p.returncode == 0 and "SWEEP done: 3 trials" in p.stdout

    table = pd.read_csv(storage / "asha" / "results.csv")
    reports = tune_reports(storage / "asha")
    assert sorted(reports) == sorted(table["trial"]) and len(table) == 3 and (table["status"] == "done").all()
    first, *rest = sorted(reports)  # trial ids number the trials in grid order
    epochs = {t: [r["epoch"] for r in rows] for t, rows in reports.items()}
    assert reports[first][0]["config"]["params"]["optim.lr_batch"] == 16
    assert epochs[first] == [1, 2, 3] and all(epochs[t] == [1] for t in rest), epochs  # cut at rung 1
    assert dict(zip(table["trial"], table["epochs"], strict=True)) == {t: len(e) for t, e in epochs.items()}
    assert all(reports[t][0]["val/loss_fp"] > reports[first][0]["val/loss_fp"] for t in rest)

    drawn = {t: rows[0]["config"]["params"] for t, rows in reports.items()}
    for key, (low, high) in (("optim.lr", LR), ("loss.beta", BETA)):
        values = [d[key] for d in drawn.values()]
        assert all(low <= v <= high for v in values) and len(set(values)) == 3, (key, values)
    for t, rows in reports.items():
        params = drawn[t]
        used = yaml.safe_load((storage / "asha" / "trials" / f"asha-{t}" / "dynamonet_config.yaml").read_text())
        assert (used["optim"]["lr"], used["loss"]["beta"], used["optim"]["lr_batch"]) == (
            params["optim.lr"], params["loss.beta"], params["optim.lr_batch"])
        for r in rows:  # the training loop ran with them: its lr, and its loss = alpha*FP + beta*CE
            assert math.isclose(r["lr"], params["optim.lr"] * 16 / params["optim.lr_batch"], rel_tol=1e-9)
            assert math.isclose(r["train/loss"], used["loss"]["alpha"] * r["train/loss_fp"]
                                + params["loss.beta"] * r["train/loss_ce"], rel_tol=1e-5)
