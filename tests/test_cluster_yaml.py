"""Every cluster YAML in cluster/ checked offline: Ray's own prepare_config +
validate_config, then this project's placement, security and install rules. No cloud call."""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from dynamonet.cluster.__main__ import main
from dynamonet.cluster.yaml_check import (
    ClusterConfigError,
    check_cluster,
    gcp_network_commands,
    ingress_rules,
    load_cluster_yaml,
    ray_prepare_and_validate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_FILES = sorted(glob.glob(os.path.join(ROOT, "cluster", "*.yaml")))
IMAGE = "rayproject/ray:2.60.0-py311-gpu"
CU126_INDEX = "https://download.pytorch.org/whl/cu126"
EC2_GPUS = {"p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8, "p3dn.24xlarge": 8}


def _cfg(name: str) -> dict:
    return load_cluster_yaml(os.path.join(ROOT, "cluster", name))


def _rejects(config: dict, match: str) -> None:
    with pytest.raises(ClusterConfigError, match=match):
        check_cluster(config)


def test_all_expected_files_exist():
    names = {os.path.basename(p) for p in CLUSTER_FILES}
    assert {"gpu.yaml", "aws-v100.yaml", "local.yaml", "fake_multinode.yaml"} <= names


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=os.path.basename)
def test_every_yaml_passes_ray_validation_and_project_rules(path):
    raw = load_cluster_yaml(path)
    ray_prepare_and_validate(raw)  # Ray's own prepare_config + validate_config
    summary = check_cluster(raw, path)
    head = [t for t in summary.node_types if t.role == "head"]
    assert len(head) == 1 and head[0].resources.get("CPU") == 0 and head[0].resources.get("GPU") == 0


@pytest.mark.parametrize("name, gpus", [("gpu.yaml", 8), ("aws-v100.yaml", 8), ("fake_multinode.yaml", 2)])
def test_gpu_totals_and_one_trainer_slot_per_gpu(name, gpus):
    summary = check_cluster(_cfg(name))
    assert summary.total("GPU") == gpus
    assert summary.total("trainer") == gpus


def test_gcp_gpu_resources_match_the_attached_p100s():
    for name, t in _cfg("gpu.yaml")["available_node_types"].items():
        accel = t["node_config"].get("guestAccelerators", [])
        assert all(a["acceleratorType"] == "nvidia-tesla-p100" and a["acceleratorCount"] <= 4 for a in accel)
        assert t["resources"].get("GPU", 0) == sum(a["acceleratorCount"] for a in accel), name


def test_aws_gpu_resources_match_the_instance_type():
    for name, t in _cfg("aws-v100.yaml")["available_node_types"].items():
        assert t["resources"].get("GPU", 0) == EC2_GPUS.get(t["node_config"]["InstanceType"], 0), name


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml", "fake_multinode.yaml"])
def test_head_has_no_training_resources_and_a_cpu_only_decode_type_exists(name):
    raw = _cfg(name)
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]["resources"]
    assert head["CPU"] == 0 and head["GPU"] == 0 and "trainer" not in head and "decode" not in head
    decode = [t for t in types.values() if t["resources"].get("decode", 0) > 0 and t.get("max_workers", 0) > 0]
    assert decode and all(t["resources"].get("GPU", 0) == 0 and "trainer" not in t["resources"] for t in decode)


def test_fake_multinode_mirrors_gpu_yaml_and_is_complete():
    raw = _cfg("fake_multinode.yaml")
    assert raw["provider"]["type"] == "fake_multinode"
    assert raw["head_node_type"] == "ray.head.default"  # the name the fake provider hard-codes
    # The 2.60 wheel lacks the provider's defaults file, so the YAML must carry every key the
    # monitor reads: Ray's validator on the raw file (no prepare_config) must pass.
    from ray.autoscaler._private.util import validate_config

    validate_config(copy.deepcopy(raw))
    labels = {t.get("labels", {}).get("dynamonet.io/role") for t in raw["available_node_types"].values()}
    assert {"trainer", "decode"} <= labels


def _stand_ins(tmp_path, **scripts: str) -> str:
    """A PATH directory of executable stand-ins (name -> shell body)."""
    d = tmp_path / f"bin{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    for name, body in scripts.items():
        (d / name).write_text(f"#!/bin/sh\n{body}\n")
        (d / name).chmod(0o755)
    return str(d)


def test_local_yaml_sets_roles_in_start_commands(tmp_path):
    raw = _cfg("local.yaml")
    head = " ".join(raw["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    cmd = raw["worker_start_ray_commands"][-1]
    # Run the real command with stand-ins for `ray` (prints its arguments) and `nvidia-smi`.
    ray = _stand_ins(tmp_path, ray='echo "ray $*"')
    gpus = _stand_ins(tmp_path, **{"nvidia-smi": 'for i in 0 1 2 3; do echo "GPU $i: Tesla P100"; done'})
    cuda_ok = _stand_ins(tmp_path, python="exit 0")  # torch sees the GPUs
    env = {"RAY_HEAD_IP": "10.0.0.10", "PATH": f"{ray}:/usr/bin:/bin"}
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=10).stdout
    assert '--resources={"decode": ' in out and "dynamonet.io/role=decode" in out
    env["PATH"] = f"{gpus}:{cuda_ok}:{env['PATH']}"
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=10).stdout
    assert '--resources={"trainer": 4}' in out and "--address=10.0.0.10:6379" in out
    # a GPU box whose torch sees no CUDA (this machine's CPU torch) refuses to start, loudly
    env["PATH"] = f"{gpus}:{ray}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"
    p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "torch sees no CUDA device" in p.stderr and "ray start" not in p.stdout


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml"])
def test_gpu_nodes_fail_loudly_without_cuda_or_with_a_driver_too_new(name, tmp_path):
    raw = _cfg(name)
    gpu_types = {n: t for n, t in raw["available_node_types"].items() if t["resources"].get("GPU")}
    assert len(gpu_types) == 2
    for t in gpu_types.values():
        (check,) = [c for c in t["worker_setup_commands"] if "torch.cuda" in c]
        p = subprocess.run(["bash", "-c", check], env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:"
                                                       f"{os.environ['PATH']}"}, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode != 0 and "torch sees no CUDA device" in p.stderr  # the CPU torch of this machine
        (branch,) = [c for c in t["initialization_commands"] if "driver_version" in c]
        for version, ok in (("580.95.05", True), ("570.172.08", True), ("590.44.01", False), ("", False)):
            smi = _stand_ins(tmp_path, **{"nvidia-smi": f"echo '{version}'" if version else "exit 9"})
            p = subprocess.run(["bash", "-c", branch], env={"PATH": f"{smi}:/usr/bin:/bin"}, capture_output=True,
                               text=True, timeout=10)
            assert (p.returncode == 0) == ok, (version, p.stderr)
            assert ok or "proprietary driver of branch R580 or older" in p.stderr
    broken = copy.deepcopy(raw)
    next(t for t in broken["available_node_types"].values() if t["resources"].get("GPU"))["worker_setup_commands"] = []
    _rejects(broken, "must fail when torch sees no CUDA device")


def test_aws_gpu_nodes_install_the_proprietary_r580_driver():
    for t in _cfg("aws-v100.yaml")["available_node_types"].values():
        if t["resources"].get("GPU"):
            init = " ".join(t["initialization_commands"])
            assert "nvidia-driver-580-server " in init and "-open" not in init and "nvidia-container-toolkit" in init


def test_aws_ami_lookups_are_allowed_by_the_documented_head_policy(tmp_path):
    from dynamonet.cluster.node_rules import aws_ami_problems, ssm_parameters

    raw = _cfg("aws-v100.yaml")
    assert len(set(ssm_parameters(raw).values())) == 2 and aws_ami_problems(raw) == []
    policy = json.loads(open(os.path.join(ROOT, "cluster", "aws-head-policy.json")).read())
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "ResolveAmiParameters"]
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    problems = aws_ami_problems(raw, str(tmp_path / "policy.json"))
    assert len(problems) == 4 and all("does not grant ssm:GetParameters" in p for p in problems)


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml", "local.yaml"])
def test_every_node_gets_the_shared_storage_setting(name):
    raw = _cfg(name)
    assert any(o.startswith("--env DYNAMONET_STORAGE=s3://") for o in raw["docker"]["run_options"])
    raw["docker"]["run_options"] = [o for o in raw["docker"]["run_options"] if "DYNAMONET_STORAGE" not in o]
    _rejects(raw, "DYNAMONET_STORAGE")


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml"])
def test_the_autoscaler_starts_only_decode_nodes_for_ingest_and_decoding(name):
    from dynamonet.cluster.node_rules import nodes_for_demand

    prepared = ray_prepare_and_validate(_cfg(name))
    decode = {n for n, t in prepared["available_node_types"].items() if t["resources"].get("decode")}
    gpu = {n for n, t in prepared["available_node_types"].items() if t["resources"].get("GPU")}
    assert nodes_for_demand(prepared, {"CPU": 1, "decode": 1}) <= decode  # what ingest and decode tasks ask
    assert nodes_for_demand(prepared, {"CPU": 1, "GPU": 1, "trainer": 1}) <= gpu
    no_decode = _cfg(name)
    for t in no_decode["available_node_types"].values():
        t["resources"].pop("decode", None)
    _rejects(no_decode, "the autoscaler would launch nothing for a ingest task")


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml"])
def test_ingress_is_ssh_only(name):
    rules = ingress_rules(ray_prepare_and_validate(_cfg(name)))
    external = [r for r in rules if r.external]
    assert external and all(r.ssh_only for r in external)
    assert any(not r.external for r in rules)  # the nodes still reach each other


def test_gcp_firewall_commands_open_only_ssh_to_the_world():
    cmds = [c for c in gcp_network_commands(_cfg("gpu.yaml")) if "--source-ranges" in c]
    assert cmds and all("--allow=tcp:22 " in c for c in cmds)


def test_wider_ingress_is_rejected():
    gcp = _cfg("gpu.yaml")
    gcp["metadata"]["dynamonet"]["firewall"].append(
        {"name": "dash", "allow": ["tcp:8265"], "source_ranges": ["0.0.0.0/0"], "target_tags": ["dynamonet-ray"]})
    _rejects(gcp, "only SSH")
    sourceless = _cfg("gpu.yaml")  # no source at all means 0.0.0.0/0 on GCE
    del sourceless["metadata"]["dynamonet"]["firewall"][1]["source_tags"]
    _rejects(sourceless, "only SSH")
    aws = _cfg("aws-v100.yaml")
    aws["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "tcp", "FromPort": 10001, "ToPort": 10001, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    _rejects(aws, "only SSH")


def test_gcp_node_off_the_cluster_network_is_rejected():
    raw = _cfg("gpu.yaml")
    del raw["available_node_types"]["cpu_decode"]["node_config"]["tags"]
    _rejects(raw, "firewall tag")


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml", "local.yaml"])
def test_token_auth_stays_on(name):
    raw = _cfg(name)
    assert raw["file_mounts"]["~/.ray"] == "~/.ray"
    starts = [c for k in ("head_start_ray_commands", "worker_start_ray_commands") for c in raw[k] if "ray start" in c]
    assert len(starts) == 2 and all("export RAY_AUTH_MODE=token;" in c for c in starts)
    disabled = copy.deepcopy(raw)
    disabled["worker_start_ray_commands"][-1] = disabled["worker_start_ray_commands"][-1].replace(
        "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")
    _rejects(disabled, "RAY_AUTH_MODE")
    no_token = copy.deepcopy(raw)
    del no_token["file_mounts"]["~/.ray"]
    _rejects(no_token, "auth token")


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml", "local.yaml"])
def test_image_and_a_torch_build_with_pascal_kernels(name):
    raw = _cfg(name)
    assert raw["docker"]["image"] == IMAGE
    torch_cmds = [c for c in raw["setup_commands"] if "pip install" in c and "torch==" in c]
    assert len(torch_cmds) == 1 and f"--index-url {CU126_INDEX}" in torch_cmds[0]


@pytest.mark.parametrize("name", [os.path.basename(p) for p in CLUSTER_FILES])
def test_no_key_material(name):
    text = open(os.path.join(ROOT, "cluster", name), encoding="utf-8").read()
    for needle in ("BEGIN RSA", "PRIVATE KEY-----", "aws_secret_access_key", "AKIA", "RAY_AUTH_TOKEN="):
        assert needle not in text
    raw = _cfg(name)
    raw["setup_commands"] = [*raw["setup_commands"], "export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP"]
    _rejects(raw, "secret")


# -- negative cases: each must fail validation -------------------------------------------------

def test_misspelt_top_level_key_is_rejected_by_ray():
    raw = _cfg("gpu.yaml")
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    _rejects(raw, "Ray rejects it.*idle_timeout_minute")


def test_misspelt_node_type_key_is_rejected_by_ray():
    raw = _cfg("aws-v100.yaml")
    raw["available_node_types"]["gpu_v100"]["max_worker"] = 1
    _rejects(raw, "Ray rejects it.*max_worker")


def test_misspelt_provider_key_is_rejected():  # Ray's schema allows any provider key
    raw = _cfg("gpu.yaml")
    raw["provider"]["availabilty_zone"] = raw["provider"].pop("availability_zone")
    _rejects(raw, "availabilty_zone")


def test_misspelt_node_config_keys_are_rejected():  # node_config is free-form for Ray
    aws = _cfg("aws-v100.yaml")
    aws["available_node_types"]["cpu_decode"]["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSiz"] = 100
    _rejects(aws, "VolumeSiz")
    gcp = _cfg("gpu.yaml")
    gcp["available_node_types"]["gpu_p100"]["node_config"]["machineTyp"] = "n1-standard-16"
    _rejects(gcp, "machineTyp")


@pytest.mark.parametrize("name", ["gpu.yaml", "aws-v100.yaml"])
def test_missing_head_node_type_is_rejected(name):
    raw = _cfg(name)
    del raw["head_node_type"]
    _rejects(raw, "head_node_type")
    # A head named like the provider default's head: Ray alone accepts the file without
    # head_node_type (prepare_config merges the default's name), this project's rule does not.
    default_head = {"gpu.yaml": "ray_head_default", "aws-v100.yaml": "ray.head.default"}[name]
    renamed = _cfg(name)
    renamed["available_node_types"][default_head] = renamed["available_node_types"].pop("head")
    del renamed["head_node_type"]
    ray_prepare_and_validate(renamed)
    _rejects(renamed, "head_node_type missing")


def test_min_workers_above_max_workers_is_rejected():
    raw = _cfg("gpu.yaml")
    raw["available_node_types"]["cpu_decode"].update(min_workers=3, max_workers=2)
    _rejects(raw, r"min_workers \(3\) > max_workers \(2\)")


def test_head_with_training_resources_is_rejected():
    raw = _cfg("gpu.yaml")
    raw["available_node_types"]["head"]["resources"] = {"CPU": 8, "GPU": 0}
    _rejects(raw, "head must declare CPU: 0")


def test_missing_decode_type_is_rejected():
    raw = _cfg("aws-v100.yaml")
    del raw["available_node_types"]["cpu_decode"]
    raw["max_workers"] = 1
    _rejects(raw, "role 'decode'")


def test_cli_check_and_gcp_network(capsys, tmp_path):
    assert main(["check", *CLUSTER_FILES]) == 0
    assert "GPU 8, trainer 8" in capsys.readouterr().out
    assert main(["gcp-network", os.path.join(ROOT, "cluster", "gpu.yaml")]) == 0
    assert "firewall-rules create dynamonet-ray-ssh" in capsys.readouterr().out
    bad = _cfg("gpu.yaml")
    bad["available_node_types"]["gpu_p100"]["min_workers"] = 5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["check", str(tmp_path / "bad.yaml")]) == 1
    assert "min_workers" in capsys.readouterr().err


# -- the fake multi-node cluster actually starts ------------------------------------------------------

_PLACEMENT_PROBE = """
import json, sys, time
import ray
from ray.util.state import list_nodes
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + 90
while not {"trainer", "decode"} <= set(ray.cluster_resources()) and time.monotonic() < deadline:
    time.sleep(1)

@ray.remote(num_cpus=0.5, resources={"decode": 1})
def decode_node():
    return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1, num_gpus=1, resources={"trainer": 1})
def trainer_node():
    return ray.get_runtime_context().get_node_id()

roles = {n.node_id: n.labels.get("dynamonet.io/role") for n in list_nodes()}
head = [n.resources_total for n in list_nodes() if n.is_head_node]
print(json.dumps({"decode": roles[ray.get(decode_node.remote(), timeout=60)],
                  "trainer": roles[ray.get(trainer_node.remote(), timeout=60)],
                  "gpus": ray.cluster_resources().get("GPU"), "head": head}))
"""


@pytest.mark.ray
def test_fake_multinode_starts_and_places_by_resource():
    """`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=cluster/fake_multinode.yaml` brings
    up both worker types; `trainer` work lands on the fake GPU node, `decode` work on the CPU node.
    The probe runs in its own process, so this test leaves no Ray state in the pytest process."""
    import json
    import sys

    from dynamonet.cluster.fake import start_fake_cluster

    cluster = start_fake_cluster(os.path.join(ROOT, "cluster", "fake_multinode.yaml"))
    try:
        proc = subprocess.run([sys.executable, "-c", _PLACEMENT_PROBE, cluster.address], capture_output=True,
                              text=True, timeout=240, env={**os.environ, **cluster.env})
    finally:
        cluster.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the probe's result is its last JSON line; Ray's autoscaler may print after it ("Resized to ...")
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert result["decode"] == "decode" and result["trainer"] == "trainer" and result["gpus"] == 2.0
    assert len(result["head"]) == 1 and not result["head"][0].get("CPU")
    assert cluster.pids() == []
