"""End-to-end tests of the entry points on a single-node Ray with local storage.

Every test runs ``pipelines/*.py`` as a subprocess against a ``ray start --head`` cluster on
loopback, on a tiny synthetic motion dataset written as real H.264 shards: checkpoints (the last
``run.keep_checkpoints`` plus the best), result.json and TensorBoard events on local disk;
evaluate and predict; one-line configuration errors. The multi-node paths (``ray job submit``,
S3 storage, a lost node and a resumed driver, pretrain → ``--init-from``, sweeps) run on the
rehearsal cluster (tests/test_rehearsal.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from pipeline_helpers import checkpoint_epochs, pipeline, run, small_settings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipelines")
    return {"cache": str(base / "cache"), "runs": base / "runs"}


def settings(dirs, epochs: int = 3) -> list[str]:
    return small_settings(dirs["cache"], str(dirs["runs"]), epochs)


@pytest.fixture(scope="module")
def trained(ray_head, dirs):
    """One 4-epoch joint run shared by the tests that need a trained model."""
    p = run(pipeline("train_joint.py", *settings(dirs, 4), "--name", "e2e"), ray_head.client_env())
    assert p.returncode == 0, p.stderr[-3000:]
    return p, dirs["runs"] / "e2e"


def test_train_joint_end_to_end(trained):
    p, run_dir = trained
    last = p.stdout.strip().splitlines()[-1]
    assert re.match(r"DONE run=e2e epochs=4 val_top1=[\d.]+ val_top5=[\d.]+ fp_ssim=[\d.]+ .*wall_time=[\d.]+s", last), last
    assert checkpoint_epochs(run_dir) == [3, 4]  # run.keep_checkpoints=2: older ones deleted
    for e in (3, 4):
        state = torch.load(run_dir / f"checkpoint_epoch{e:04d}" / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == e and set(state) >= {"model", "optimizer", "schedule", "config", "class_names"}
    best = json.loads((run_dir / "checkpoint_best" / "best.json").read_text())
    state = torch.load(run_dir / "checkpoint_best" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == best["epoch"] and state["metrics"]["val/top1"] == best["value"]
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    assert result["run"] == "e2e" and m["epoch"] == 4 and len(result["class_names"]) == 4
    assert result["best_checkpoint"] == str(run_dir / "checkpoint_best")
    for key in ("train/loss_fp", "train/loss_ce", "val/top1", "val/top5", "val/fp_ssim", "perf/clips_per_s",
                "perf/data_wait_s_per_step"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert abs(best["value"] - max(_val_top1_per_epoch(run_dir))) < 1e-6, best  # the best of the 4 validations
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def _val_top1_per_epoch(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("val/top1")]


def test_evaluate_and_predict(trained, tmp_path, ray_head):
    _, run_dir = trained
    p = run(pipeline("evaluate.py", "--checkpoint", str(run_dir)), ray_head.client_env())
    assert p.returncode == 0
    out_dir = run_dir / "eval" / "val"
    metrics = json.loads((out_dir / "metrics.json").read_text())["metrics"]
    for key in ("eval/top1", "eval/top5", "eval/clip_top1", "eval/fp_ssim", "eval/fp_psnr", "eval/copy_last_ssim"):
        assert 0 <= metrics[key] <= 100, key
    assert (out_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out_dir / "per_class.csv").read_text().splitlines()) == 5
    # the mean over several checkpoints (UCF101/HMDB51 splits protocol)
    two = run(pipeline("evaluate.py", "--checkpoint", str(run_dir / "checkpoint_epoch0003"),
                       "--checkpoint", str(run_dir / "checkpoint_best"), "--out", str(tmp_path / "ev")),
              ray_head.client_env())
    assert two.returncode == 0 and "mean_over_splits" in two.stdout
    s1 = json.loads((tmp_path / "ev" / "split1" / "metrics.json").read_text())["metrics"]["eval/top1"]
    s2 = json.loads((tmp_path / "ev" / "split2" / "metrics.json").read_text())["metrics"]["eval/top1"]
    assert f"top1={(s1 + s2) / 2:.4f}" in two.stdout.splitlines()[-1]

    video = tmp_path / "clip.mp4"
    _write_motion_video(video, "translate_up")
    fig = tmp_path / "fig.png"
    q = run(pipeline("predict.py", str(video), "--checkpoint", str(run_dir), "--save-figure", str(fig)),
            ray_head.client_env())
    assert q.returncode == 0
    ranks = [line for line in q.stdout.splitlines() if re.match(r"\s+\d\. ", line)]
    assert len(ranks) == 4  # top-5 of a 4-class model
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_motion_video(path: Path, motion: str) -> None:
    import numpy as np

    from dynamonet.data.encode import encode_video
    from dynamonet.data.synthetic import render_video

    frames = render_video(motion, np.random.default_rng(123), 16, 40)
    path.write_bytes(encode_video(frames, 25.0))


def test_bad_configuration_fails_fast_with_one_line(trained, dirs, ray_head, s3_server):
    root = str(next((Path(dirs["cache"]) / "synthetic").glob("synthetic-*")))
    closed = f"http://127.0.0.1:{_closed_port()}"
    cases = [
        (["--model", "r3d_bogus"], "error: model.arch"),
        (["--data", "/nonexistent/dataset"], "error: data.root"),
        (["--data", "s3://no-bucket/ds", "--s3-endpoint", closed], "error: data.s3_endpoint"),
        (["--data", root, "--clip-len", "64"], "error: data.clip_len"),
    ]
    env = {k: v for k, v in ray_head.client_env().items() if k != "RAY_ADDRESS"}
    for extra, prefix in cases:
        t0 = time.monotonic()
        p = run(pipeline("train_joint.py", "--set", f"run.storage_path={dirs['runs']}", *extra), env, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (extra, p.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(prefix), (extra, lines)
        assert "RayTrainWorker" not in p.stdout + p.stderr and "Started a local Ray" not in p.stderr
        assert time.monotonic() - t0 < 60, extra


def _closed_port() -> int:
    from helpers import free_port

    return free_port()  # nothing listens there: connections are refused
