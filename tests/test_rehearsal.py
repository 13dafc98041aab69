"""Every documented cluster command on a cluster whose nodes share nothing but object storage.

The session's rehearsal cluster (conftest ``rehearsal``; dynamonet/cluster/rehearsal.py): a head
with CPU 0, a `decode` node and a `trainer` node, each in its own mount namespace with private tmpfs
over /tmp, ~/.cache, ~/.config and ~/.ray, and a moto server as the bucket. Every job goes through
`ray job submit --working-dir .` to the head's dashboard, as a user would, and Ray's state API and
the dashboard's HTTP API say where the work ran.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import boto3
import pytest
from pipeline_helpers import ROOT, small_settings

pytestmark = [pytest.mark.ray, pytest.mark.rehearsal]

TINY = "data/tiny"  # relative: taken under DYNAMONET_STORAGE on the cluster


def submit(cluster: Any, *args: str, runtime_env: dict | None = None, wait: bool = True,
           timeout: float = 900) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir . -- python ARGS`` to the rehearsal's head."""
    cmd = ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT)]
    if runtime_env:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    if not wait:
        cmd.append("--no-wait")
    p = subprocess.run([*cmd, "--", "python", *args], env=cluster.client_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if wait and p.returncode != 0:
        print(p.stdout[-8000:], p.stderr[-3000:])
    return p


def job_id(p: subprocess.CompletedProcess) -> str:
    return re.search(r"(raysubmit_\w+)", p.stdout + p.stderr).group(1)


def job_logs(cluster: Any, submission_id: str) -> str:
    """The job driver's own output (stdout and stderr), from the job server."""
    return cluster.http_json(f"/api/jobs/{submission_id}/logs")["logs"]


def job_status(cluster: Any, submission_id: str) -> str:
    return cluster.http_json(f"/api/jobs/{submission_id}")["status"]


def wait_job(cluster: Any, submission_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(cluster, submission_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise AssertionError(f"job {submission_id} still running after {timeout} s")


def s3(cluster: Any) -> Any:
    return boto3.client("s3", endpoint_url=cluster.s3_endpoint, region_name="us-east-1",
                        aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")


def keys(cluster: Any, prefix: str) -> list[str]:
    """Keys under ``<DYNAMONET_STORAGE>/<prefix>`` (relative to the storage root)."""
    bucket, _, root = cluster.storage.removeprefix("s3://").partition("/")
    full = f"{root}/{prefix}".strip("/")
    pages = s3(cluster).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full)
    return sorted(o["Key"][len(root) + 1:] for page in pages for o in page.get("Contents", [])
                  if not o["Key"].endswith("/"))  # not the directory markers pyarrow writes


def read_key(cluster: Any, rel: str) -> bytes:
    bucket, _, root = cluster.storage.removeprefix("s3://").partition("/")
    return s3(cluster).get_object(Bucket=bucket, Key=f"{root}/{rel}")["Body"].read()


def wait_for_object(cluster: Any, submission_id: str, rel: str, needle: bytes, timeout: float = 300) -> None:
    """Until the bucket's object ``rel`` (under the storage prefix) holds ``needle``, while the job runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rel in keys(cluster, rel) and needle in read_key(cluster, rel):
            return
        assert job_status(cluster, submission_id) in ("PENDING", "RUNNING"), job_logs(cluster, submission_id)[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {needle!r} in {rel} within {timeout} s ({submission_id})")


def settings(epochs: int, **extra: Any) -> list[str]:
    """The tiny task of the pipeline tests, on the shards prepared in the bucket."""
    out = small_settings("unused", "runs", epochs)
    for k, v in {"data.root": TINY, **extra}.items():
        out += ["--set", f"{k}={v}"]
    return out


def placement(cluster: Any) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Roles of the nodes every task (by name) and every actor (by class) of the cluster ran on."""
    roles = cluster.roles()
    tasks: dict[str, set[str]] = {}
    for t in cluster.state("tasks"):
        if t.get("node_id"):
            tasks.setdefault(t["name"], set()).add(roles.get(t["node_id"], "?"))
    actors: dict[str, set[str]] = {}
    for a in cluster.state("actors"):
        if a.get("node_id"):
            actors.setdefault(a["class_name"], set()).add(roles.get(a["node_id"], "?"))
    return tasks, actors


# ---------------------------------------------------------------------------------------------


def test_nodes_share_nothing_but_object_storage(rehearsal):
    probe = (
        "import os, ray; ray.init()\n"
        "w = ray.remote(num_cpus=0.1, resources={'decode': 0.1})(lambda: (open('/tmp/probe', 'w').write('x'),"
        " os.makedirs(os.path.expanduser('~/.cache/dynamonet'), exist_ok=True),"
        " open(os.path.expanduser('~/.cache/dynamonet/probe'), 'w').write('x')))\n"
        "r = ray.remote(num_cpus=0.1, resources={'trainer': 0.1})(lambda: (os.path.exists('/tmp/probe'),"
        " os.path.exists(os.path.expanduser('~/.cache/dynamonet/probe')), os.environ['DYNAMONET_STORAGE']))\n"
        "ray.get(w.remote())\n"
        "print('PROBE', os.path.exists('/tmp/probe'), *ray.get(r.remote()))\n")
    p = submit(rehearsal, "-c", probe)
    assert p.returncode == 0
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("PROBE"))
    # written on the decode node; absent on the head (the driver) and on the trainer node
    assert line.split() == ["PROBE", "False", "False", "False", rehearsal.storage]
    decode = rehearsal.node("decode")
    assert any("probe" in p.name for p in _tmp_entries(decode.pid))  # it is there, on its own node


def _tmp_entries(pid: int) -> list[Any]:
    from pathlib import Path

    return list(Path(f"/proc/{pid}/root/tmp").iterdir())


def test_embedded_default_needs_the_storage_setting_and_stops_before_any_worker(rehearsal):
    p = submit(rehearsal, "pipelines/train_joint.py", runtime_env={"env_vars": {"DYNAMONET_STORAGE": ""}})
    assert p.returncode != 0
    logs = job_logs(rehearsal, job_id(p))
    errors = [ln for ln in logs.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: DYNAMONET_STORAGE: not set"), logs[-3000:]
    assert "RayTrainWorker" not in logs and "synthetic dataset" not in logs  # stopped before any work


def test_embedded_default_without_arguments_on_the_cluster(rehearsal):
    """`ray job submit -- python pipelines/train_joint.py`: the product's own usage line."""
    p = submit(rehearsal, "pipelines/train_joint.py", timeout=1200)
    assert p.returncode == 0
    done = [ln for ln in p.stdout.splitlines() if ln.startswith("DONE run=embedded-joint-")]
    assert len(done) == 1 and re.search(r"val_top1=0\.\d{4}", done[0]), p.stdout[-3000:]
    run = done[0].split()[1].removeprefix("run=")
    assert "[cluster] multi-node cluster" in p.stdout
    synthetic = [k for k in keys(rehearsal, "cache/synthetic/") if k.endswith("manifest.json")]
    assert len(synthetic) == 1  # built by the driver into the bucket, read by the decode node
    stored = keys(rehearsal, f"runs/{run}/")
    assert f"runs/{run}/result.json" in stored and any("/tensorboard/events.out.tfevents" in k for k in stored)
    tasks, actors = placement(rehearsal)
    assert tasks["MapBatches(_decode_task)"] == {"decode"} and actors["RayTrainWorker"] == {"trainer"}


@pytest.fixture(scope="module")
def tiny(rehearsal):
    """`prepare_data.py` on the cluster: a tiny generated set ingested into the bucket."""
    p = submit(rehearsal, "pipelines/prepare_data.py", "--source", "synthetic", "--output",
               f"{rehearsal.storage}/{TINY}", "--videos-per-shard", "32", "--no-progress",
               *[f"--synthetic={kv}" for kv in ("num_classes=4", "train_per_class=48", "val_per_class=3",
                                                 "num_frames=12", "size=32")])
    assert p.returncode == 0
    assert f"{TINY}/manifest.json" in keys(rehearsal, TINY)
    return f"{rehearsal.storage}/{TINY}"


def test_prepare_train_evaluate_predict_with_data_and_runs_in_the_bucket(rehearsal, tiny):
    p = submit(rehearsal, "pipelines/train_joint.py", *settings(3), "--name", "s3run")
    assert p.returncode == 0 and "DONE run=s3run epochs=3" in p.stdout
    run = keys(rehearsal, "runs/s3run/")
    # retention: the last 2 epoch checkpoints, plus a copy of the best by val/top1
    assert sorted({k.split("/")[2] for k in run if k.split("/")[-1] == "checkpoint.pt"}) == [
        "checkpoint_best", "checkpoint_epoch0002", "checkpoint_epoch0003"]
    best = json.loads(read_key(rehearsal, "runs/s3run/checkpoint_best/best.json"))
    assert best["metric"] == "val/top1" and 1 <= best["epoch"] <= 3
    result = json.loads(read_key(rehearsal, "runs/s3run/result.json"))
    assert result["best_checkpoint"] == f"{rehearsal.storage}/runs/s3run/checkpoint_best"

    # the dashboard's Train page lists the run and its workers (state tracking on by default)
    runs = rehearsal.http_json("/api/train/v2/runs/v1")["train_runs"]
    mine = [r for r in runs if r["name"] == "s3run"]
    assert mine and mine[0]["status"] == "FINISHED"
    workers = [w for a in mine[0]["attempts"] for w in a["workers"]]
    roles = rehearsal.roles()
    assert len(workers) == 2 and {roles[w["node_id"]] for w in workers} == {"trainer"}

    e = submit(rehearsal, "pipelines/evaluate.py", "--checkpoint", f"{rehearsal.storage}/runs/s3run")
    assert e.returncode == 0 and "EVAL top1=" in e.stdout
    reports = keys(rehearsal, "runs/s3run/eval/val/")
    assert {"metrics.json", "per_class.csv", "predictions.csv", "confusion_matrix.png"} == {
        k.rsplit("/", 1)[1] for k in reports}
    metrics = json.loads(read_key(rehearsal, "runs/s3run/eval/val/metrics.json"))
    assert metrics["num_videos"] == 12 and metrics["split"] == "val"

    video = _upload_motion_video(rehearsal, "videos/up.mp4", "translate_up")
    q = submit(rehearsal, "pipelines/predict.py", video, "--checkpoint",
               f"{rehearsal.storage}/runs/s3run/checkpoint_best", "--save-figure", f"{rehearsal.storage}/videos/fig.png")
    assert q.returncode == 0
    ranks = [ln for ln in q.stdout.splitlines() if re.match(r"\s+\d\. translate_", ln)]
    assert len(ranks) == 4
    assert read_key(rehearsal, "videos/fig.png")[:8] == b"\x89PNG\r\n\x1a\n"

    tasks, actors = placement(rehearsal)
    assert tasks["process_shard"] == {"decode"}  # ingest
    assert tasks["MapBatches(_decode_task)"] == {"decode"}  # decoding, in training and evaluation
    assert actors["RayTrainWorker"] == {"trainer"} and tasks["score_split"] == {"trainer"}


def _upload_motion_video(cluster: Any, rel: str, motion: str) -> str:
    import numpy as np

    from dynamonet.data.encode import encode_video
    from dynamonet.data.synthetic import render_video

    data = encode_video(render_video(motion, np.random.default_rng(123), 16, 40), 25.0)
    bucket, _, root = cluster.storage.removeprefix("s3://").partition("/")
    s3(cluster).put_object(Bucket=bucket, Key=f"{root}/{rel}", Body=data)
    return f"{cluster.storage}/{rel}"


def test_pretrain_then_joint_init_from_the_bucket(rehearsal, tiny):
    p = submit(rehearsal, "pipelines/pretrain.py", *settings(1), "--name", "pre")
    assert p.returncode == 0 and "DONE run=pre epochs=1" in p.stdout and "val_top1=n/a" in p.stdout
    q = submit(rehearsal, "pipelines/train_joint.py", *settings(1), "--name", "ft", "--init-from",
               f"{rehearsal.storage}/runs/pre")
    assert q.returncode == 0 and "DONE run=ft epochs=1" in q.stdout
    init = next(ln for ln in q.stdout.splitlines() if ln.startswith(f"[init] from {rehearsal.storage}/runs/pre"))
    assert int(re.search(r"loaded (\d+)", init).group(1)) > 10 and "classifier" in init


def _hparams_of(event_bytes: bytes, tmp_path: Any) -> dict[str, Any]:
    """The HParams session of one TensorBoard event file: {hyperparameter: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    path = tmp_path / f"events.out.tfevents.{time.monotonic_ns()}"
    path.write_bytes(event_bytes)
    acc = EventAccumulator(str(path))
    acc.Reload()
    out: dict[str, Any] = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for k, v in data.session_start_info.hparams.items():
                out[k] = v.number_value if v.HasField("number_value") else v.string_value
    return out


def test_sweep_in_the_bucket_interrupted_and_resumed(rehearsal, tmp_path):
    sweep = "sweeps/smoke"
    args = ["tune/sweep.py", "--space", "tune/spaces/smoke.yaml", "--set", "run.storage_path=sweeps"]
    first = submit(rehearsal, *args, wait=False)
    sid = job_id(first)
    # wait until Tune has saved the first trial as finished, then stop the job
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = [k for k in keys(rehearsal, f"{sweep}/") if re.search(r"/experiment_state-[^/]+\.json$", k)]
        if states and b"TERMINATED" in read_key(rehearsal, max(states)):
            break
        assert job_status(rehearsal, sid) in ("PENDING", "RUNNING"), job_logs(rehearsal, sid)[-3000:]
        time.sleep(1)
    else:
        raise AssertionError("no trial finished within 600 s")
    subprocess.run(["ray", "job", "stop", "--address", rehearsal.dashboard, sid], env=rehearsal.client_env(),
                   capture_output=True, timeout=120)
    assert wait_job(rehearsal, sid, 120) == "STOPPED"
    finished = {k.split("/")[3]: k for k in keys(rehearsal, f"{sweep}/trials/")
                if k.endswith("checkpoint_epoch0002/checkpoint.pt")}
    assert finished
    stamps = {k: _last_modified(rehearsal, k) for k in finished.values()}

    again = submit(rehearsal, *args, "--resume")
    assert again.returncode == 0
    assert "[sweep] resuming 'smoke'" in again.stdout and "SWEEP done: 3 trials" in again.stdout
    assert all(_last_modified(rehearsal, k) == t for k, t in stamps.items())  # finished trials not redone
    stored = keys(rehearsal, f"{sweep}/")
    for name in ("results.csv", "best_config.yaml", "plot_model_kernel_size.png"):
        assert f"{sweep}/{name}" in stored
    trials = sorted({k.split("/")[3] for k in stored if k.startswith(f"{sweep}/trials/")})
    assert len(trials) == 3
    sizes = set()
    for trial in trials:
        events = [k for k in stored if k.startswith(f"{sweep}/trials/{trial}/tensorboard/events.out.tfevents")]
        assert len(events) == 1, trial
        hp = _hparams_of(read_key(rehearsal, events[0]), tmp_path)
        assert {"model.kernel_size", "loss.alpha", "data.clip_len"} <= set(hp)
        sizes.add(int(hp["model.kernel_size"]))
    assert sizes == {3, 5, 7}


def _last_modified(cluster: Any, rel: str) -> Any:
    bucket, _, root = cluster.storage.removeprefix("s3://").partition("/")
    return s3(cluster).head_object(Bucket=bucket, Key=f"{root}/{rel}")["LastModified"]


def _draws(cluster: Any, run: str, epoch: int) -> list[tuple[int, ...]]:
    rows = []
    for k in keys(cluster, f"runs/{run}/draws/epoch_{epoch:04d}/"):
        rows += [tuple(r) for r in json.loads(read_key(cluster, k))["rows"]]
    return sorted(rows)


def _stream(cluster: Any, seed: int, epoch: int) -> list[tuple[int, ...]]:
    """The draws an uninterrupted run makes in ``epoch`` (1-based), from their definition: every
    training video of the tiny set, K = 4 draws each from ``(seed, epoch, video, k)``
    (``ClipDecoder.draws``; the settings of :func:`settings`; flips as the manifest allows them)."""
    import io

    import pyarrow.parquet as pq

    from dynamonet.data.decode import ClipDecoder
    from dynamonet.data.shards import Manifest

    manifest = Manifest.from_json(read_key(cluster, f"{TINY}/manifest.json").decode(), root="")
    decoder = ClipDecoder(clip_len=8, frame_stride=1, crop_size=24, resize_short=32, training=True, clips_per_video=4,
                          seed=seed, epoch=epoch - 1, hflip=manifest.flip_label_map() is not None)
    rows = []
    for key in keys(cluster, f"{TINY}/train/"):
        table = pq.read_table(io.BytesIO(read_key(cluster, key)), columns=["video_index", "num_frames"])
        for v, n in zip(table["video_index"].to_pylist(), table["num_frames"].to_pylist(), strict=True):
            starts, crops, flips = decoder.draws(v, n)
            rows += [(v, k, int(starts[k]), int(crops[k]), int(flips[k])) for k in range(len(starts))]
    return sorted(rows)


def test_whole_node_lost_mid_epoch_resumes_and_continues_the_random_stream(rehearsal, tiny):
    common = [*settings(4, **{"run.record_draws": "true", "train.seed": 5})]  # 2 checkpoints kept: resumes find theirs
    run = ["pipelines/train_joint.py", *common, "--name", "stream-cut", "--set", "train.epochs=3"]
    job = submit(rehearsal, *run, wait=False)
    sid = job_id(job)
    # Ray Train has registered epoch 1's checkpoint (its checkpoint manager's state in the bucket):
    # the workers are past it, on epoch 2. State, not a forwarded log line, which Ray may deliver late.
    wait_for_object(rehearsal, sid, "runs/stream-cut/checkpoint_manager_snapshot.json", b"checkpoint_epoch0001")
    killed = rehearsal.kill_node("trainer")  # every process of the node: raylet, workers, object store
    done = [int(m.group(1)) for k in keys(rehearsal, "runs/stream-cut/")
            if (m := re.search(r"/checkpoint_epoch(\d{4})/checkpoint\.pt$", k))]
    assert not killed.processes() and max(done) < 3
    rehearsal.add_node("trainer")  # a replacement joins
    assert wait_job(rehearsal, sid, 600) == "SUCCEEDED", job_logs(rehearsal, sid)[-4000:]
    result = json.loads(read_key(rehearsal, "runs/stream-cut/result.json"))
    resumed = int(result["metrics"]["run/resumed_from_epoch"])
    # lost at most the epoch it was in: the restart began from the last checkpoint stored at the kill
    # (or the one before, if the kill fell while that checkpoint was being reported)
    assert max(done) - 1 <= resumed <= max(done) and resumed >= 1, (done, result["metrics"])
    # the same command with more epochs: the driver resumes the run
    more = submit(rehearsal, *run[:-2], "--set", "train.epochs=4")
    assert more.returncode == 0 and "resuming 'stream-cut' from epoch 3" in more.stdout
    # before the loss, after the restart, after the driver's resume: every epoch trained on exactly
    # the draws of an uninterrupted run (each training clip once, none replayed from another epoch)
    stream = {epoch: _stream(rehearsal, 5, epoch) for epoch in range(1, 5)}
    for epoch in range(1, 5):
        assert _draws(rehearsal, "stream-cut", epoch) == stream[epoch], epoch
    assert stream[2] != stream[3] and len(stream[1]) == 4 * 4 * 48
