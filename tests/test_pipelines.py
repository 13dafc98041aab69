"""End-to-end tests of the entry points on a real Ray cluster (issue: Ray Train pipelines).

Every test runs ``pipelines/*.py`` as a subprocess against a ``ray start --head`` cluster on
loopback, on a tiny synthetic motion dataset written as real H.264 shards. They check: loss goes
down, checkpoints and result.json; a worker killed mid-epoch and a driver killed and restarted both
resume from the last checkpoint with contiguous epochs; pretrain → --init-from; evaluate and
predict; ``ray job submit``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from pipeline_helpers import LineReader, checkpoint_epochs, pipeline, popen, run, small_settings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipelines")
    return {"cache": str(base / "cache"), "runs": base / "runs"}


def settings(dirs, epochs: int = 3) -> list[str]:
    return small_settings(dirs["cache"], str(dirs["runs"]), epochs)


@pytest.fixture(scope="module")
def trained(ray_head, dirs):
    """One 6-epoch joint run shared by the tests that need a trained model."""
    p = run(pipeline("train_joint.py", *settings(dirs, 6), "--name", "e2e"), ray_head.client_env())
    assert p.returncode == 0, p.stderr[-3000:]
    return p, dirs["runs"] / "e2e"


def test_train_joint_end_to_end(trained):
    p, run_dir = trained
    last = p.stdout.strip().splitlines()[-1]
    assert re.match(r"DONE run=e2e epochs=6 val_top1=[\d.]+ val_top5=[\d.]+ fp_ssim=[\d.]+ .*wall_time=[\d.]+s", last), last
    assert checkpoint_epochs(run_dir) == [1, 2, 3, 4, 5, 6]
    losses = []
    for e in range(1, 7):
        state = torch.load(run_dir / f"checkpoint_epoch{e:04d}" / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == e and set(state) >= {"model", "optimizer", "schedule", "config", "class_names"}
        losses.append(state["metrics"]["train/loss_ce"])
    assert losses[-1] < 0.9 * losses[0], losses  # it learns (CE: the FP term's floor is the frames' noise)
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    assert result["run"] == "e2e" and m["epoch"] == 6 and len(result["class_names"]) == 4
    for key in ("train/loss_fp", "train/loss_ce", "val/top1", "val/top5", "val/fp_ssim", "perf/clips_per_s",
                "perf/data_wait_s_per_step"):
        assert isinstance(m[key], float), key
    assert m["val/top1"] > 0.25 + 1e-6  # above chance on 4 classes
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def _kill_a_worker(ray_head, line: str) -> int:
    """SIGKILL the Train worker that printed ``line`` (rank 0 of the running epoch); it must be a
    process of this cluster. Picking by name alone could hit a worker process of an earlier run."""
    pid = int(re.search(r"RayTrainWorker pid=(\d+)", line).group(1))
    victims = [p for p in ray_head.processes("RayTrainWorker") if p.pid == pid]
    assert victims, f"RayTrainWorker pid={pid} is not a live process of the cluster"
    victims[0].send_signal(signal.SIGKILL)
    return pid


def test_worker_killed_mid_epoch_resumes_from_last_checkpoint(ray_head, dirs):
    proc = popen(pipeline("train_joint.py", *settings(dirs, 6), "--name", "fault"), ray_head.client_env())
    out = LineReader(proc)
    try:
        line = out.wait_for("epoch 1/6 step 1/", timeout=300)  # names rank 0's process
        # Wait on the storage, not on log lines (Ray forwards them with a lag on a busy machine):
        # once epoch 2's checkpoint is written, epoch 1's report is complete and epoch 3 is starting.
        second = dirs["runs"] / "fault" / "checkpoint_epoch0002" / "checkpoint.pt"
        deadline = time.monotonic() + 300
        while not second.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert second.exists(), out.tail()
        time.sleep(1.0)
        _kill_a_worker(ray_head, line)
        rc = out.finish(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 0, out.tail()
    text = out.text()
    assert "DONE run=fault epochs=6" in text
    assert checkpoint_epochs(dirs["runs"] / "fault") == [1, 2, 3, 4, 5, 6]  # contiguous: no completed epoch lost
    # the restarted worker group started from a checkpoint, not from scratch (read from the run's
    # result, not from log lines, which Ray forwards with a lag and may drop on a busy machine)
    result = json.loads((dirs["runs"] / "fault" / "result.json").read_text())
    assert 1 <= result["metrics"]["run/resumed_from_epoch"] <= 5, result["metrics"]


def test_driver_stopped_and_started_again_resumes(ray_head, dirs):
    cmd = pipeline("train_joint.py", *settings(dirs, 3), "--name", "restart")
    proc = popen(cmd, ray_head.client_env())
    out = LineReader(proc)
    try:
        out.wait_for("epoch 2/3 step 1/", timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; Ray cleans up its job
        proc.wait(30)
    run_dir = dirs["runs"] / "restart"
    done_before = checkpoint_epochs(run_dir)
    assert done_before and done_before[0] == 1
    time.sleep(2)
    p = run(cmd, ray_head.client_env())
    assert p.returncode == 0
    assert f"resuming 'restart' from epoch {done_before[-1]}" in p.stdout
    assert checkpoint_epochs(run_dir) == [1, 2, 3]
    # a different config under the same name is refused before any worker starts
    q = run(pipeline("train_joint.py", *settings(dirs, 3), "--name", "restart", "--set", "loss.alpha=0.5"),
            ray_head.client_env())
    assert q.returncode == 2
    assert q.stderr.strip().startswith("error: run.name: run 'restart' already exists with a different config")
    assert "loss.alpha: 0.1 -> 0.5" in q.stderr


def test_pretrain_then_joint_init_from(ray_head, dirs):
    p = run(pipeline("pretrain.py", *settings(dirs, 2), "--name", "pre"), ray_head.client_env())
    assert p.returncode == 0
    assert "DONE run=pre epochs=2" in p.stdout and "val_top1=n/a" in p.stdout
    state = torch.load(dirs["runs"] / "pre" / "checkpoint_epoch0002" / "checkpoint.pt", weights_only=True)
    assert state["config"]["model"]["mode"] == "pretrain"
    q = run(pipeline("train_joint.py", *settings(dirs, 1), "--name", "ft", "--init-from", str(dirs["runs"] / "pre")),
            ray_head.client_env())
    assert q.returncode == 0
    init = next(line for line in q.stdout.splitlines() if line.startswith("[init] from"))
    loaded = int(re.search(r"loaded (\d+)", init).group(1))
    assert loaded > 10 and "classifier" in init  # backbone + motion branch loaded, new head initialised


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
    two = run(pipeline("evaluate.py", "--checkpoint", str(run_dir / "checkpoint_epoch0001"),
                       "--checkpoint", str(run_dir / "checkpoint_epoch0004"), "--out", str(tmp_path / "ev")),
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


def test_ray_job_submit(ray_head, dirs):
    cmd = ["ray", "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".", "--",
           "python", "pipelines/train_joint.py", *settings(dirs, 1), "--name", "job"]
    p = run(cmd, ray_head.client_env(), timeout=600)
    assert p.returncode == 0
    assert "DONE run=job epochs=1" in p.stdout and "succeeded" in p.stdout


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
