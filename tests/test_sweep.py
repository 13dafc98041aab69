"""Ray Tune sweeps (tune/sweep.py): space validation, a 3-trial sweep and its outputs, resume.

The sweep tests run ``tune/sweep.py`` as a subprocess against the session's ``ray start --head``
cluster, on the tiny synthetic task of the pipeline tests; every trial is a real TorchTrainer run.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import ROOT, LineReader, pipeline, popen, run, small_settings

from dynamonet.sweep import load_space, trial_config


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "tune" / "sweep.py"), *args]


def write_space(path: Path, params: dict, **extra) -> str:
    body = {"name": path.stem, "recipe": "embedded", "params": params, **extra}
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.mark.parametrize("params,message", [
    ({"model.kernal_size": {"grid": [3, 5]}}, "params.model.kernal_size: value 3 is invalid: model.kernal_size: unknown"),
    ({"model.kernel_size": {"grid": [3, 4]}}, "params.model.kernel_size: value 4 is invalid: model.kernel_size: must be an odd"),
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
    path = write_space(tmp_path / "bad.yaml", {"model.kernel_size": {"grid": [3, 6]}})
    p = run(sweep_cmd("--space", path), dict(os.environ), timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "model.kernel_size: must be an odd integer in 3..7, got 6" in p.stderr


def test_shipped_spaces_validate():
    for name in ("default", "lr_beta"):
        space, base = load_space(str(ROOT / "tune" / "spaces" / f"{name}.yaml"))
        assert space.params and base.recipe == "embedded"
    space, base = load_space(str(ROOT / "tune" / "spaces" / "paper.yaml"),
                             ["data.root=s3://b/ucf101-s1", "run.storage_path=s3://b/sweeps"])
    assert space.num_trials() == 36 and base.recipe == "ucf101"
    assert {k: v["grid"] for k, v in space.params.items()} == {
        "model.kernel_size": [3, 5, 7], "loss.alpha": [0.0, 0.01, 0.1, 1.0], "data.clip_len": [8, 16, 32]}


def test_trial_config_applies_the_sampled_values(tmp_path):
    space, base = load_space(write_space(tmp_path / "s.yaml", {"model.kernel_size": {"grid": [3, 7]},
                                                              "loss.alpha": {"uniform": [0.0, 1.0]}}))
    cfg = trial_config({"sweep": "s", "params": {"model.kernel_size": 7, "loss.alpha": 0.25}}, base.to_dict(), "t1")
    assert cfg.model.kernel_size == 7 and cfg.loss.alpha == 0.25 and cfg.run.name == "s-t1"


def _tiny_space(tmp_path: Path, name: str, concurrent: int) -> str:
    sets = {}
    for item in small_settings(str(tmp_path / "cache"), str(tmp_path / "runs"), 2)[1::2]:  # "--set", "k=v", ...
        key, value = item.split("=", 1)
        sets[key] = yaml.safe_load(value)
    sets.update({"train.num_workers": 1, "train.log_every": 0})
    return write_space(tmp_path / f"{name}.yaml", {"model.kernel_size": {"grid": [3, 5, 7]}}, set=sets,
                       max_concurrent=concurrent, scheduler={"type": "asha", "grace_period": 2})


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.ray
def test_three_trial_sweep_outputs_and_best_config_trains(ray_head, tmp_path):
    space = _tiny_space(tmp_path, "three", concurrent=2)
    p = run(sweep_cmd("--space", space), ray_head.client_env(), timeout=900)
    assert p.returncode == 0
    out = tmp_path / "runs" / "three"
    rows = _rows(out / "results.csv")
    assert sorted(int(r["model.kernel_size"]) for r in rows) == [3, 5, 7]
    assert all(0.0 <= float(r["val/top1"]) <= 1.0 and r["status"] == "done" for r in rows)
    assert [float(r["val/top1"]) for r in rows] == sorted((float(r["val/top1"]) for r in rows), reverse=True)
    assert (out / "plot_model_kernel_size.png").read_bytes()[:4] == b"\x89PNG"
    assert "SWEEP done: 3 trials" in p.stdout
    for r in rows:  # TensorBoard events per trial
        assert list((tmp_path / "runs" / f"three-{r['trial']}" / "tensorboard").glob("events.out.tfevents.*"))
    best = out / "best_config.yaml"
    assert yaml.safe_load(best.read_text())["model"]["kernel_size"] == int(rows[0]["model.kernel_size"])
    q = run(pipeline("train_joint.py", "--config", str(best)), ray_head.client_env(), timeout=600)
    assert q.returncode == 0 and "DONE run=three-best-joint" in q.stdout


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_head, tmp_path):
    space = _tiny_space(tmp_path, "resume", concurrent=1)
    cmd = sweep_cmd("--space", space)
    proc = popen(cmd, ray_head.client_env())
    out = LineReader(proc)
    try:
        line = out.wait_for("completed after 2 iterations", timeout=600)
        out.wait_for("started with configuration", timeout=300)  # the next trial is running
        time.sleep(5)  # > TUNE_GLOBAL_CHECKPOINT_S: the finished trial is in the saved state
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    first = re.search(r"Trial train_trial_(\w+?) completed", line).group(1)
    ckpt = tmp_path / "runs" / f"resume-{first}" / "checkpoint_epoch0002" / "checkpoint.pt"
    before = ckpt.stat().st_mtime_ns
    p = run(cmd, ray_head.client_env(), timeout=900)
    assert p.returncode == 0
    assert "[sweep] resuming 'resume'" in p.stdout and "SWEEP done: 3 trials" in p.stdout
    assert ckpt.stat().st_mtime_ns == before  # the finished trial was not trained again
    assert f"Trial train_trial_{first} started" not in p.stdout
    rows = _rows(tmp_path / "runs" / "resume" / "results.csv")
    assert sorted(int(r["model.kernel_size"]) for r in rows) == [3, 5, 7]
