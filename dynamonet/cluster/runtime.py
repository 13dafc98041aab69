"""What a job learns about the Ray cluster it runs on: single node or not, where shared storage is,
and where its work should go. Used by every entry point after it connects (docs/cluster.md).

    connected to Ray ──► ClusterInfo: nodes, the driver's node CPUs, resources (now and at the
                         autoscaler's maximum)
        │ multi-node?  more than one node, or the driver's node offers no CPU (a head with
        │              CPU: 0, as in every cluster YAML here: the work will run on other nodes)
        ▼
    resolve_for_cluster(cfg)
        run.storage_path   relative → <DYNAMONET_STORAGE>/<path>; absolute local → error
        data.cache_dir     empty → <DYNAMONET_STORAGE>/cache (the embedded synthetic set)
        data.root          relative → <DYNAMONET_STORAGE>/<path>; absolute local → error
        placement          empty train.worker_resources → {trainer: 1} and empty
                           data.decode_resources → {decode: data.decode_cpus} when the cluster
                           offers those resources (now or through its autoscaler)

Nodes of a cluster share nothing but object storage: a path on the driver's disk (a cache under
``~``, a relative ``runs/``, a temp dir) does not exist on the node where a decoder or a Train
worker runs. ``DYNAMONET_STORAGE`` (an ``s3://bucket/prefix`` that every node can reach) is the one
setting that says where shared data goes; the cluster YAMLs set it on every node. Without it a
multi-node job stops on the driver, before any worker starts, with one line naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dynamonet.config import Config
from dynamonet.storage import is_remote, join_uri

STORAGE_ENV = "DYNAMONET_STORAGE"
TRAIN_RESOURCE = "trainer"
DECODE_RESOURCE = "decode"


@dataclass
class ClusterInfo:
    """The cluster as the driver sees it once connected."""

    num_nodes: int
    driver_cpus: float
    resources: dict[str, float] = field(default_factory=dict)  # now, plus the autoscaler's maximum

    @property
    def multinode(self) -> bool:
        """Work may run on another node than the driver's."""
        return self.num_nodes > 1 or self.driver_cpus == 0

    def describe(self) -> str:
        where = f"{self.num_nodes} node(s)" + (", the driver's node offers no CPU" if self.driver_cpus == 0 else "")
        return f"multi-node cluster ({where})" if self.multinode else "single-node Ray"


def cluster_info() -> ClusterInfo:
    """Ask the connected Ray (``ray.init`` done) about its nodes and resources."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    driver_cpus = next((float(n["Resources"].get("CPU", 0.0)) for n in alive if n["NodeID"] == here), 0.0)
    resources = dict(ray.cluster_resources())
    for key, value in (_autoscaler_max_resources() or {}).items():
        resources[key] = max(resources.get(key, 0.0), float(value))
    return ClusterInfo(num_nodes=len(alive), driver_cpus=driver_cpus, resources=resources)


def _autoscaler_max_resources() -> dict[str, Any] | None:
    """Resources the autoscaler could add (node types at max_workers); None without an autoscaler.

    Ray Data reads the same (private) accessor to size itself on autoscaling clusters.
    """
    try:
        from ray._private.state import state

        return state.get_max_resources_from_cluster_config()
    except Exception:  # another Ray layout, or no cluster config published
        return None


def cluster_storage(key: str) -> str:
    """``DYNAMONET_STORAGE``, checked; ``key`` names the setting that needed it."""
    root = os.environ.get(STORAGE_ENV, "").strip()
    if not root:
        raise ValueError(f"{STORAGE_ENV}: not set, and {key} needs storage every node of this multi-node cluster "
                         f"can reach: set {STORAGE_ENV}=s3://bucket/prefix on the cluster's nodes (the cluster YAMLs "
                         "do) or pass an s3:// path (docs/cluster.md)")
    if not root.startswith("s3://"):
        raise ValueError(f"{STORAGE_ENV}: must be an s3://bucket/prefix URI every node can reach, got {root!r}")
    return root.rstrip("/")


def _shared_path(value: str, key: str) -> str:
    """A path setting on a multi-node cluster: remote as given, relative under DYNAMONET_STORAGE."""
    if is_remote(value):
        return value
    if os.path.isabs(os.path.expanduser(value)) or value.startswith("file://"):
        raise ValueError(f"{key}: {value!r} is a local path, and the nodes of this multi-node cluster share only "
                         f"object storage; give an s3:// URI, or a relative path (resolved under {STORAGE_ENV})")
    return join_uri(cluster_storage(key), value)


def resolve_for_cluster(cfg: Config, info: ClusterInfo | None = None, *, placement: bool = True) -> Config:
    """``cfg`` with its shared paths and placement set for the connected cluster (see the module
    docstring); unchanged on a single node. Raises ``ValueError`` naming the setting at fault."""
    info = info or cluster_info()
    if not info.multinode:
        return cfg
    updates: dict[str, Any] = {"run.storage_path": _shared_path(cfg.run.storage_path, "run.storage_path")}
    if cfg.data.root:
        updates["data.root"] = _shared_path(cfg.data.root, "data.root")
    else:  # the embedded synthetic set is built by the driver and read by decoders on other nodes
        updates["data.cache_dir"] = _shared_path(cfg.data.cache_dir or "cache", "data.cache_dir")
    if placement and not cfg.train.worker_resources and info.resources.get(TRAIN_RESOURCE, 0) > 0:
        updates["train.worker_resources"] = {TRAIN_RESOURCE: 1}
    if placement and not cfg.data.decode_resources and info.resources.get(DECODE_RESOURCE, 0) > 0:
        updates["data.decode_resources"] = {DECODE_RESOURCE: cfg.data.decode_cpus}
    for key, value in updates.items():
        cfg = cfg.override(key, value)
    return cfg


def ingest_resources(info: ClusterInfo | None = None) -> dict[str, float]:
    """Custom resources an ingest task requests: ``decode`` where the cluster offers it, so ingest
    runs on CPU nodes and never makes the autoscaler start a GPU node."""
    info = info or cluster_info()
    return {DECODE_RESOURCE: 1.0} if info.resources.get(DECODE_RESOURCE, 0) > 0 else {}
