"""Offline checks of the Ray cluster YAMLs in ``cluster/``: no cloud call, no network.

    cluster/*.yaml ──► PyYAML ──► Ray's prepare_config + validate_config (the schema `ray up` uses)
                                        │
                                        ▼
                 this project's rules (Ray does not check them) ──► ClusterSummary | ClusterConfigError

The placement contract the YAMLs implement (docs/cluster.md):

* the head node type has ``CPU: 0`` and ``GPU: 0`` and neither custom resource, so neither Train
  workers nor decoders land on it; it still runs GCS, the dashboard and the job driver;
* GPU node types carry ``trainer: <GPUs>``; Train workers request it (``train.worker_resources``);
* a CPU-only node type carries ``decode: <CPUs>``; Ray Data decoders request it
  (``data.decode_resources``).

Rules added here because Ray's validator does not enforce them (found by trying, Ray 2.60):
per-node-type ``min_workers <= max_workers``; ``head_node_type`` written in the file (otherwise
the provider default ``ray_head_default`` / ``ray.head.default`` is silently merged in); unknown
``provider`` keys (the schema allows any); unknown EC2 / GCE ``node_config`` keys; ingress no
wider than SSH; token authentication on; no key material in the file; and the node rules of
:mod:`dynamonet.cluster.node_rules` (shared storage setting, loud GPU checks, AMI lookup
permission, which node types the autoscaler launches for each kind of work).

CLI (:mod:`dynamonet.cluster.__main__`)::

    python -m dynamonet.cluster check cluster/*.yaml
    python -m dynamonet.cluster gcp-network cluster/gpu.yaml   # the gcloud commands for its VPC
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from dynamonet.cluster.node_rules import aws_ami_problems, demand_problems, gpu_setup_problems, storage_problems

TRAIN_RESOURCE = "trainer"
DECODE_RESOURCE = "decode"
TOKEN_DIR = "~/.ray"  # Ray's default token file is ~/.ray/auth_token on every node and the laptop

# Keys `ray-schema.json` lists for `provider` plus the ones Ray's providers read without listing.
_PROVIDER_EXTRA_KEYS = {
    "use_node_id_as_ip", "disable_launch_config_check", "launch_multiple", "gcs_address",
    "head_node_id", "coordinator_address", "external_head_ip", "use_external_head_ip",
}
# Top-level fields of a GCE Instance (compute v1 `instances.insert`) a node_config may set, plus
# the Ray-specific `sourceInstanceTemplate`. Hand-kept: GCE's schema is not available offline.
_GCE_INSTANCE_KEYS = {
    "machineType", "disks", "networkInterfaces", "serviceAccounts", "scheduling", "tags", "labels",
    "metadata", "guestAccelerators", "minCpuPlatform", "shieldedInstanceConfig", "description",
    "canIpForward", "deletionProtection", "reservationAffinity", "resourcePolicies", "hostname",
    "advancedMachineFeatures", "confidentialInstanceConfig", "displayDevice", "params",
    "networkPerformanceConfig", "sourceInstanceTemplate",
}
_SECRET_PATTERNS = [
    r"A[KS]IA[0-9A-Z]{16}",  # AWS access key ids
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)aws_secret_access_key",
    r"(?i)aws_session_token",
    r'"private_key"\s*:',  # a GCP service-account JSON blob
    r"RAY_AUTH_TOKEN\s*[=:]",  # the token itself; the file mount carries it instead
    r"(?i)hmac",
]


class ClusterConfigError(ValueError):
    """A cluster YAML that Ray's validator or this project's rules reject."""


@dataclass
class NodeType:
    """One node type as the autoscaler sees it."""

    name: str
    role: str  # head | trainer | decode | workers (provider `local`: roles chosen at `ray start`)
    min_workers: int
    max_workers: int
    resources: dict[str, int]


@dataclass
class ClusterSummary:
    """What a cluster YAML provides at its maximum size."""

    path: str
    provider: str
    node_types: list[NodeType] = field(default_factory=list)

    def total(self, resource: str) -> int:
        """Sum of ``resource`` over the head plus every worker type at ``max_workers``."""
        return sum(t.resources.get(resource, 0) * (1 if t.role == "head" else t.max_workers)
                   for t in self.node_types)


@dataclass(frozen=True)
class IngressRule:
    """One effective inbound rule; ``sources`` are CIDRs, ``tag:x`` or ``group:x``."""

    name: str
    protocol: str  # tcp | udp | icmp | all
    ports: tuple[int, int] | None  # None = every port
    sources: tuple[str, ...]

    @property
    def external(self) -> bool:
        return any(not s.startswith(("tag:", "group:")) for s in self.sources)

    @property
    def ssh_only(self) -> bool:
        return self.protocol == "tcp" and self.ports == (22, 22)


def load_cluster_yaml(path: str) -> dict[str, Any]:
    """Parse a cluster YAML with PyYAML (as `ray up` does)."""
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: not a YAML mapping")
    return config


def ray_prepare_and_validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Ray's own ``prepare_config`` + ``validate_config`` (private API, no cloud call).

    ``fake_multinode`` is validated as written: the 2.60 wheel lacks the provider's defaults file
    (``fake_multi_node/example.yaml``) that ``prepare_config`` would merge, and the monitor reads
    the file unprepared anyway.
    """
    from ray.autoscaler._private.util import fill_node_type_min_max_workers, prepare_config, validate_config

    config = copy.deepcopy(raw)
    if config.get("provider", {}).get("type") != "fake_multinode":
        config = prepare_config(config)
        validate_config(config)
    else:
        validate_config(config)
        fill_node_type_min_max_workers(config)  # only the per-type min/max defaults, as Ray reads them
    return config


def ingress_rules(config: dict[str, Any]) -> list[IngressRule]:
    """The inbound rules a cluster gets from outside Ray's own traffic, per provider.

    GCP: Ray manages no firewall, so gpu.yaml declares its VPC's rules under
    ``metadata.dynamonet.firewall`` (created with ``gcp-network``). AWS: Ray creates the security
    group; its rules are Ray's defaults (intra-cluster + SSH) plus ``provider.security_group``,
    computed here with Ray's own function. Other providers open nothing themselves.
    """
    provider = config["provider"]["type"]
    if provider == "gcp":
        rules = []
        for r in config.get("metadata", {}).get("dynamonet", {}).get("firewall", []):
            sources = tuple(r.get("source_ranges", [])) + tuple(f"tag:{t}" for t in r.get("source_tags", []))
            sources = sources or ("0.0.0.0/0",)  # GCE's default source when a rule names none
            for allow in r["allow"]:
                proto, _, ports = allow.partition(":")
                lo, _, hi = ports.partition("-")
                rules.append(IngressRule(r["name"], proto, (int(lo), int(hi or lo)) if lo else None, sources))
        return rules
    if provider == "aws":
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules

        extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
        rules = []
        for i, p in enumerate(_create_default_inbound_rules(["cluster-sg"], extra)):
            sources = tuple(x["CidrIp"] for x in p.get("IpRanges", []))
            sources += tuple(x["CidrIpv6"] for x in p.get("Ipv6Ranges", []))
            sources += tuple(x["PrefixListId"] for x in p.get("PrefixListIds", []))
            sources += tuple(f"group:{x['GroupId']}" for x in p.get("UserIdGroupPairs", []))
            proto = {"-1": "all"}.get(str(p["IpProtocol"]), str(p["IpProtocol"]))
            ports = None if p.get("FromPort", -1) == -1 else (p["FromPort"], p["ToPort"])
            rules.append(IngressRule(f"rule{i}", proto, ports, sources))
        return rules
    return []


def _role(name: str, res: dict[str, int], head: bool) -> tuple[str, list[str]]:
    """Classify a node type and list what breaks the placement contract."""
    gpu, cpu = res.get("GPU", 0), res.get("CPU")
    trainer, decode = res.get(TRAIN_RESOURCE, 0), res.get(DECODE_RESOURCE, 0)
    if head:
        bad = cpu != 0 or "GPU" not in res or gpu != 0 or trainer or decode
        return "head", [f"{name}: the head must declare CPU: 0 and GPU: 0 and no {TRAIN_RESOURCE}/"
                        f"{DECODE_RESOURCE}, got {res}"] if bad else []
    if trainer or gpu:
        ok = trainer == gpu and gpu > 0 and not decode
        return "trainer", [] if ok else [f"{name}: a GPU type needs {TRAIN_RESOURCE} == GPU > 0 and no "
                                         f"{DECODE_RESOURCE}, got {res}"]
    if decode:
        ok = cpu is not None and 0 < decode <= cpu
        return "decode", [] if ok else [f"{name}: a decode type needs 0 < {DECODE_RESOURCE} <= CPU, got {res}"]
    return "other", [f"{name}: worker type with neither {TRAIN_RESOURCE} nor {DECODE_RESOURCE}: "
                     "untagged CPUs would take work meant for the tagged nodes"]


@functools.lru_cache(maxsize=1)
def _run_instances_shape() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape


def _node_config_problems(provider: str, name: str, node_config: dict[str, Any]) -> list[str]:
    if provider == "aws":  # botocore ships EC2's API model: validate exactly as boto3 would
        from botocore.validate import ParamValidator

        shape = _run_instances_shape()
        params = {k: v for k, v in node_config.items() if k != "SubnetIds"}  # SubnetIds: Ray's own key
        report = ParamValidator().validate({"MinCount": 1, "MaxCount": 1, **params}, shape)
        return [f"{name}.node_config: {report.generate_report()}"] if report.has_errors() else []
    if provider == "gcp":
        unknown = sorted(set(node_config) - _GCE_INSTANCE_KEYS)
        return [f"{name}.node_config: unknown GCE instance field(s) {unknown}"] if unknown else []
    return []


def _gcp_network_problems(config: dict[str, Any]) -> list[str]:
    net = config.get("metadata", {}).get("dynamonet", {}).get("network")
    if not net:
        return ["metadata.dynamonet.network: a GCP cluster must declare its VPC (else GCE's default "
                "network and its default firewall rules apply)"]
    problems = []
    for name, t in config["available_node_types"].items():
        nc = t["node_config"]
        if net["tag"] not in nc.get("tags", {}).get("items", []):
            problems.append(f"{name}.node_config.tags: missing the firewall tag {net['tag']!r}")
        subnets = [i.get("subnetwork", "") for i in nc.get("networkInterfaces", [])]
        if not subnets or not all(s.endswith(f"/subnetworks/{net['subnetwork']}") for s in subnets):
            problems.append(f"{name}.node_config.networkInterfaces: must use subnetwork {net['subnetwork']!r}")
    return problems


def _auth_problems(raw: dict[str, Any], text: str) -> list[str]:
    problems = []
    if re.search(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?(?!token)", text):
        problems.append("RAY_AUTH_MODE set to something other than token")
    if raw["provider"]["type"] == "fake_multinode":
        return problems  # local processes; `ray start` finds ~/.ray/auth_token itself
    mounts = {k.rstrip("/"): str(v).rstrip("/") for k, v in (raw.get("file_mounts") or {}).items()}
    if not any(k in (TOKEN_DIR, TOKEN_DIR + "/auth_token") and v == k for k, v in mounts.items()):
        problems.append(f"file_mounts: must copy {TOKEN_DIR} (the Ray auth token) to every node")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in raw.get(key, []):
            if "ray start" in cmd and "RAY_AUTH_MODE=token" not in cmd:
                problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token")
    return problems


def _local_node_types(raw: dict[str, Any]) -> tuple[list[NodeType], list[str]]:
    """Provider `local` has one internal node type; the roles are set by the start commands."""
    head_cmd = " ".join(raw.get("head_start_ray_commands", []))
    worker_cmd = " ".join(raw.get("worker_start_ray_commands", []))
    problems = []
    if not ("--num-cpus=0" in head_cmd and "--num-gpus=0" in head_cmd) or "--resources" in head_cmd:
        problems.append("head_start_ray_commands: the head must start with --num-cpus=0 --num-gpus=0")
    if not all(s in worker_cmd for s in (TRAIN_RESOURCE, DECODE_RESOURCE, "nvidia-smi", "--resources")):
        problems.append(f"worker_start_ray_commands: must give GPU boxes {TRAIN_RESOURCE} and CPU boxes "
                        f"{DECODE_RESOURCE}")
    n = len(raw["provider"].get("worker_ips", []))
    return [NodeType("head", "head", 0, 0, {"CPU": 0, "GPU": 0}), NodeType("workers", "workers", n, n, {})], problems


def _file_problems(raw: dict[str, Any]) -> list[str]:
    """Secrets, head_node_type, provider keys, token auth: rules on the file as written."""
    import ray.autoscaler

    provider = raw["provider"]["type"]
    text = json.dumps(raw)
    problems = [f"key material or a secret in the file (pattern {p!r})" for p in _SECRET_PATTERNS
                if re.search(p, text)]
    if "head_node_type" not in raw and provider != "local":  # `local` defines its own single type
        problems.append("head_node_type missing (Ray would merge the provider default's name)")
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path, encoding="utf-8") as fh:  # the schema `validate_config` uses
        known = set(json.load(fh)["properties"]["provider"]["properties"]) | _PROVIDER_EXTRA_KEYS
    problems += [f"provider.{k}: unknown provider key (misspelt?)" for k in sorted(set(raw["provider"]) - known)]
    return problems + _auth_problems(raw, text)


def _node_types(prepared: dict[str, Any]) -> tuple[list[NodeType], list[str]]:
    """Classify the prepared node types; check roles, min/max and node_config keys."""
    provider, types, problems = prepared["provider"]["type"], [], []
    for name, t in prepared["available_node_types"].items():
        role, extra = _role(name, t.get("resources", {}), name == prepared["head_node_type"])
        problems += extra + _node_config_problems(provider, name, t["node_config"])
        if t["min_workers"] > t["max_workers"]:
            problems.append(f"{name}: min_workers ({t['min_workers']}) > max_workers ({t['max_workers']})")
        types.append(NodeType(name, role, t["min_workers"], t["max_workers"], t.get("resources", {})))
    roles = {t.role for t in types if t.max_workers > 0}
    problems += [f"no worker type with role {r!r} and max_workers > 0" for r in ("trainer", "decode")
                 if r not in roles]
    return types, problems


def check_cluster(raw: dict[str, Any], path: str = "<config>") -> ClusterSummary:
    """Ray's validation plus this project's rules; raises ClusterConfigError listing every problem."""
    try:
        prepared = ray_prepare_and_validate(raw)
    except Exception as e:  # jsonschema, ValueError, KeyError, click aborts: all mean "rejected"
        raise ClusterConfigError(f"{path}: Ray rejects it: {type(e).__name__}: {e}") from e
    provider = raw["provider"]["type"]
    summary = ClusterSummary(path, provider)
    problems = _file_problems(raw)
    if provider == "local":
        summary.node_types, extra = _local_node_types(raw)
    else:
        summary.node_types, extra = _node_types(prepared)
    problems += extra
    if provider == "gcp":
        problems += _gcp_network_problems(raw)
    problems += storage_problems(raw) + gpu_setup_problems(raw) + aws_ami_problems(raw) + demand_problems(prepared)
    for rule in ingress_rules(prepared):
        if rule.external and not rule.ssh_only:
            problems.append(f"ingress {rule.name}: {rule.protocol} {rule.ports or 'all ports'} open to "
                            f"{', '.join(rule.sources)}: only SSH (tcp:22) may come from outside")
    if problems:
        raise ClusterConfigError(f"{path}:\n  " + "\n  ".join(problems))
    return summary


def check_file(path: str) -> ClusterSummary:
    """Load and check one cluster YAML."""
    return check_cluster(load_cluster_yaml(path), path)


def gcp_network_commands(config: dict[str, Any]) -> list[str]:
    """The gcloud commands that create the VPC, subnet and firewall rules a GCP YAML declares."""
    net, project = config["metadata"]["dynamonet"]["network"], config["provider"]["project_id"]
    base = f"gcloud compute --project={project}"
    cmds = [f"{base} networks create {net['network']} --subnet-mode=custom",
            f"{base} networks subnets create {net['subnetwork']} --network={net['network']} "
            f"--region={config['provider']['region']} --range={net['range']}"]
    for r in config["metadata"]["dynamonet"]["firewall"]:
        src = " ".join(f"--{flag}={','.join(r[key])}" for key, flag in
                       (("source_ranges", "source-ranges"), ("source_tags", "source-tags")) if r.get(key))
        cmds.append(f"{base} firewall-rules create {r['name']} --network={net['network']} --direction=INGRESS "
                    f"--allow={','.join(r['allow'])} {src} --target-tags={','.join(r['target_tags'])}")
    return cmds
