"""What a job does on a multi-node cluster (dynamonet.cluster.runtime), without a cluster: shared
paths under DYNAMONET_STORAGE, one-line refusals, default placement, ingest resources."""

from __future__ import annotations

import pytest

from dynamonet.cli import recipe_path
from dynamonet.cluster.runtime import ClusterInfo, ingest_resources, resolve_for_cluster
from dynamonet.config import load_config

MULTI = ClusterInfo(num_nodes=3, driver_cpus=0.0, resources={"CPU": 7.0, "trainer": 2.0, "decode": 3.0})


def embedded(*sets: str):
    return load_config(recipe_path("embedded"), list(sets))


def test_one_node_changes_nothing(monkeypatch):
    monkeypatch.delenv("DYNAMONET_STORAGE", raising=False)
    cfg = embedded("run.storage_path=/abs/runs")
    single = ClusterInfo(num_nodes=1, driver_cpus=8.0, resources={"CPU": 8.0})
    assert not single.multinode and resolve_for_cluster(cfg, single) is cfg


def test_a_head_without_cpu_is_multinode_even_before_the_autoscaler_adds_a_node():
    assert ClusterInfo(num_nodes=1, driver_cpus=0.0).multinode


def test_shared_paths_go_under_the_storage_setting_and_work_to_its_nodes(monkeypatch):
    monkeypatch.setenv("DYNAMONET_STORAGE", "s3://bucket/dn/")
    cfg = resolve_for_cluster(embedded(), MULTI)
    assert cfg.run.storage_path == "s3://bucket/dn/runs" and cfg.data.cache_dir == "s3://bucket/dn/cache"
    assert cfg.train.worker_resources == {"trainer": 1} and cfg.data.decode_resources == {"decode": 0.5}
    data = resolve_for_cluster(embedded("data.root=data/ucf", "run.storage_path=s3://other/runs"), MULTI)
    assert data.data.root == "s3://bucket/dn/data/ucf" and data.run.storage_path == "s3://other/runs"
    mine = resolve_for_cluster(embedded("train.worker_resources={gpu_a100: 1}"), MULTI)
    assert mine.train.worker_resources == {"gpu_a100": 1}  # explicit placement is kept
    bare = ClusterInfo(num_nodes=2, driver_cpus=4.0, resources={"CPU": 8.0})
    plain = resolve_for_cluster(embedded(), bare)
    assert plain.train.worker_resources == {} and plain.data.decode_resources == {}  # nothing offered


@pytest.mark.parametrize("sets,message", [
    ([], "DYNAMONET_STORAGE: not set, and run.storage_path needs storage every node"),
    (["run.storage_path=s3://b/runs"], "DYNAMONET_STORAGE: not set, and data.cache_dir needs"),
])
def test_without_the_setting_a_multinode_job_stops_naming_it(monkeypatch, sets, message):
    monkeypatch.delenv("DYNAMONET_STORAGE", raising=False)
    with pytest.raises(ValueError) as e:
        resolve_for_cluster(embedded(*sets), MULTI)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_local_absolute_paths_and_other_schemes_are_refused(monkeypatch):
    monkeypatch.setenv("DYNAMONET_STORAGE", "s3://bucket/dn")
    with pytest.raises(ValueError, match=r"^run.storage_path: '/home/me/runs' is a local path"):
        resolve_for_cluster(embedded("run.storage_path=/home/me/runs"), MULTI)
    with pytest.raises(ValueError, match=r"^data.root: 'file:///d' is a local path"):
        resolve_for_cluster(embedded("data.root=file:///d"), MULTI)
    monkeypatch.setenv("DYNAMONET_STORAGE", "/shared/nfs")
    with pytest.raises(ValueError, match=r"^DYNAMONET_STORAGE: must be an s3://bucket/prefix URI"):
        resolve_for_cluster(embedded(), MULTI)


def test_ingest_tasks_ask_for_decode_nodes_where_there_are_any():
    assert ingest_resources(MULTI) == {"decode": 1.0}
    assert ingest_resources(ClusterInfo(num_nodes=2, driver_cpus=2.0, resources={"CPU": 4.0})) == {}
