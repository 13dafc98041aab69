"""A local multi-node rehearsal of the cluster layout (issue: cluster YAMLs).

``cluster/fake_multinode.yaml`` brings up, on this machine, a head with no training resources, a
"GPU" node (custom resource ``trainer``, label ``dynamonet.io/role=trainer``) and a CPU-only decode
node (``decode``, role ``decode``), with Ray's fake_multinode autoscaler. A short train_joint runs
across them with placement taken from config (``train.worker_resources``, ``data.decode_resources``)
and Ray's state API shows where every decode task and training worker ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from pipeline_helpers import ROOT, pipeline, run, small_settings

from dynamonet.cluster import start_fake_cluster

pytestmark = pytest.mark.ray


STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes, list_tasks
addr = sys.argv[1]
nodes = {n.node_id: (n.labels or {}).get("dynamonet.io/role", "head")
         for n in list_nodes(address=addr, filters=[("state", "=", "ALIVE")], detail=True)}
out = {"nodes": nodes}
if sys.argv[2] == "all":
    out["actors"] = [[a.class_name, a.node_id] for a in list_actors(address=addr, detail=True, limit=1000)]
    out["tasks"] = [[t.name, t.node_id] for t in list_tasks(address=addr, detail=True, limit=10000) if t.node_id]
print(json.dumps(out))
"""


def state(cluster, what: str = "nodes") -> dict:
    """Ray's state API, asked from a process with the cluster's token settings (Ray reads its auth
    mode once, at import, so this test process cannot switch to it)."""
    p = subprocess.run([sys.executable, "-c", STATE_QUERY, cluster.dashboard, what], capture_output=True, text=True,
                       env={**os.environ, **cluster.env}, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def _wait_for_nodes(cluster, roles: set[str], timeout: float = 120.0) -> None:
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        try:
            found = state(cluster)["nodes"]
        except RuntimeError:  # the dashboard is still starting
            found = {}
        if roles <= set(found.values()):
            return
        time.sleep(2)
    raise AssertionError(f"nodes with roles {roles} did not come up: {found}")


def test_decode_on_cpu_node_and_training_on_gpu_node(tmp_path):
    cluster = start_fake_cluster(str(ROOT / "cluster" / "fake_multinode.yaml"))
    try:
        _wait_for_nodes(cluster, {"trainer", "decode"})
        placement = ["--set", "train.worker_resources={trainer: 1}", "--set", "data.decode_resources={decode: 1}",
                     "--set", "data.decode_actors=2", "--name", "rehearsal"]
        env = {**os.environ, **cluster.env, "RAY_ADDRESS": cluster.address}
        p = run(pipeline("train_joint.py", *small_settings(str(tmp_path / "cache"), str(tmp_path / "runs"), 1),
                         *placement), env, timeout=600)
        assert p.returncode == 0 and "DONE run=rehearsal" in p.stdout

        s = state(cluster, "all")
        roles = s["nodes"]
        workers = [node for cls, node in s["actors"] if cls == "RayTrainWorker"]
        assert len(workers) == 2 and {roles[n] for n in workers} == {"trainer"}
        decode = [(name, node) for name, node in s["tasks"] if "_decode_task" in name]
        reads = [(name, node) for name, node in s["tasks"] if "ReadParquet" in name]
        assert decode and {roles[n] for _, n in decode} == {"decode"}, decode
        assert reads and {roles[n] for _, n in reads} == {"decode"}, reads
    finally:
        cluster.stop()
