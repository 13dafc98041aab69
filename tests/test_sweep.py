"""Ray Tune sweeps (tune/sweep.py): space validation and the trial config.

A real 3-trial sweep, its outputs, its interruption and resume run on the rehearsal cluster
(tests/test_rehearsal.py::test_sweep_in_the_bucket_interrupted_and_resumed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
