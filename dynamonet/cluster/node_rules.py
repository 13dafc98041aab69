"""Rules on what a cluster YAML gives its nodes and what its autoscaler launches (offline).

Checked by :func:`dynamonet.cluster.yaml_check.check_cluster`, each returning problem lines:

* shared storage: every node gets ``DYNAMONET_STORAGE`` (``--env`` in ``docker.run_options``), the
  one setting that says where a multi-node job keeps what its nodes share (cluster/runtime.py);
* GPU nodes fail loudly: the host checks the NVIDIA driver branch (Pascal and Volta: proprietary
  driver, branch R580 or older) and the container checks that torch sees CUDA and has kernels for
  the GPU, instead of starting a "GPU" node that trains on nothing;
* AWS AMIs resolved with ``resolve:ssm:`` need ``ssm:GetParameters`` for the caller (the
  autoscaler's role); ``cluster/aws-head-policy.json`` must grant it for every such parameter;
* demands reach the right node types: Ray's own autoscaler bin-packing
  (``resource_demand_scheduler.get_nodes_for``) is asked which node types it would launch for an
  ingest task, a decoder and a Train worker; ingest and decoders must never start a GPU node.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from typing import Any

# What each kind of work asks for (see data/ingest.py, data/dataset.py, train/ray_train.py).
DEMANDS = {
    "ingest task": ({"CPU": 1, "decode": 1}, "decode"),
    "decoder": ({"CPU": 1, "decode": 1}, "decode"),
    "Train worker": ({"CPU": 1, "GPU": 1, "trainer": 1}, "trainer"),
}
GPU_TORCH_CHECK = "torch.cuda.is_available() or sys.exit"
DRIVER_BRANCH_CHECK = "-le 580"
STORAGE_ENV = "DYNAMONET_STORAGE"
AWS_HEAD_POLICY = os.path.join(os.path.dirname(__file__), "..", "..", "cluster", "aws-head-policy.json")


def storage_problems(raw: dict[str, Any]) -> list[str]:
    """Every node of a real cluster gets DYNAMONET_STORAGE=s3://... through the container."""
    if raw["provider"]["type"] == "fake_multinode":
        return []  # local processes: the rehearsal sets it per node
    options = " ".join(raw.get("docker", {}).get("run_options", []))
    if not re.search(rf"--env[ =]{STORAGE_ENV}=s3://\S+", options):
        return [f"docker.run_options: must pass --env {STORAGE_ENV}=s3://bucket/prefix (the storage every node "
                "shares: the embedded default, relative run paths and sweeps go there)"]
    return []


def _commands(node_type: dict[str, Any], key: str) -> str:
    return " ".join(node_type.get(key) or [])


def gpu_setup_problems(raw: dict[str, Any]) -> list[str]:
    """GPU node types check the driver branch on the host and CUDA in the container, loudly."""
    provider = raw["provider"]["type"]
    if provider == "fake_multinode":
        return []  # fake GPUs: no device to check
    if provider == "local":  # one node type: the start command checks a box that has GPUs
        start = " ".join(raw.get("worker_start_ray_commands", []))
        return [] if GPU_TORCH_CHECK in start else [
            "worker_start_ray_commands: a GPU box must check that torch sees CUDA before it starts"]
    problems = []
    for name, t in raw["available_node_types"].items():
        if not t.get("resources", {}).get("GPU"):
            continue
        if GPU_TORCH_CHECK not in _commands(t, "worker_setup_commands"):
            problems.append(f"{name}.worker_setup_commands: must fail when torch sees no CUDA device")
        if DRIVER_BRANCH_CHECK not in _commands(t, "initialization_commands"):
            problems.append(f"{name}.initialization_commands: must check the NVIDIA driver branch (R580 or older)")
    return problems


def ssm_parameters(raw: dict[str, Any]) -> dict[str, str]:
    """``{node type: SSM parameter}`` of every AMI resolved with ``resolve:ssm:``."""
    out = {}
    for name, t in raw.get("available_node_types", {}).items():
        image = str(t.get("node_config", {}).get("ImageId", ""))
        if image.startswith("resolve:ssm:"):
            out[name] = image.removeprefix("resolve:ssm:").split(":")[0]
    return out


def aws_ami_problems(raw: dict[str, Any], policy_path: str = AWS_HEAD_POLICY) -> list[str]:
    """Each ``resolve:ssm:`` parameter is readable under the head policy the docs attach."""
    params = ssm_parameters(raw)
    if raw["provider"]["type"] != "aws" or not params:
        return []
    try:
        with open(policy_path, encoding="utf-8") as fh:
            policy = json.load(fh)
    except (OSError, ValueError) as e:
        return [f"{policy_path}: the head policy for resolve:ssm AMIs is unreadable: {e}"]
    region = raw["provider"].get("region", "*")
    allowed = [r for s in policy.get("Statement", []) if s.get("Effect") == "Allow"
               and "ssm:GetParameters" in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
               for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    return [f"{name}.node_config.ImageId: {os.path.basename(policy_path)} does not grant ssm:GetParameters on {p}"
            for name, p in params.items()
            if not any(fnmatch.fnmatch(f"arn:aws:ssm:{region}::parameter{p}", r) for r in allowed)]


def nodes_for_demand(prepared: dict[str, Any], demand: dict[str, float]) -> set[str]:
    """Node types Ray's autoscaler would launch, from an empty cluster, for one ``demand``."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    types = {name: {**t, "resources": dict(t.get("resources", {}))} for name, t in
             prepared["available_node_types"].items()}
    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    launched, _ = get_nodes_for(types, {}, prepared["head_node_type"], prepared.get("max_workers", 10),
                                [dict(demand)], scorer)
    return {name for name, count in launched.items() if count}


def demand_problems(prepared: dict[str, Any]) -> list[str]:
    """Each kind of work starts only node types of its role (ingest and decoders never a GPU node)."""
    if prepared["provider"]["type"] in ("local", "fake_multinode"):
        return []  # no autoscaling: the boxes are there
    roles = {name: ("trainer" if t.get("resources", {}).get("GPU") else
                    "decode" if t.get("resources", {}).get("decode") else "other")
             for name, t in prepared["available_node_types"].items()}
    problems = []
    for work, (demand, role) in DEMANDS.items():
        launched = nodes_for_demand(prepared, demand)
        wrong = sorted(n for n in launched if roles.get(n) != role)
        if not launched or wrong:
            problems.append(f"the autoscaler would launch {wrong or 'nothing'} for a {work} {demand}, "
                            f"not a {role} node")
    return problems
