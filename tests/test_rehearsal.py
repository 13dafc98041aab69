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
    return sorted(o["Key"][len(root) + 1:] for page in pages for o in page.get("Contents", []))


def read_key(cluster: Any, rel: str) -> bytes:
    bucket, _, root = cluster.storage.removeprefix("s3://").partition("/")
    return s3(cluster).get_object(Bucket=bucket, Key=f"{root}/{rel}")["Body"].read()


def wait_for_key(cluster: Any, rel: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rel in keys(cluster, rel):
            return
        time.sleep(0.5)
    raise AssertionError(f"{rel} did not appear in {cluster.storage} within {timeout} s")


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
    assert f"[cluster] multi-node cluster" in p.stdout
    synthetic = [k for k in keys(rehearsal, "cache/synthetic/") if k.endswith("manifest.json")]
    assert len(synthetic) == 1  # built by the driver into the bucket, read by the decode node
    stored = keys(rehearsal, f"runs/{run}/")
    assert f"runs/{run}/result.json" in stored and any("/tensorboard/events.out.tfevents" in k for k in stored)
    tasks, actors = placement(rehearsal)
    assert tasks["MapBatches(_decode_task)"] == {"decode"} and actors["RayTrainWorker"] == {"trainer"}
