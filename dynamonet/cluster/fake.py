"""``cluster/fake_multinode.yaml`` brought up on this machine by Ray's own autoscaler.

Ray's ``fake_multinode`` provider starts every node type of a cluster YAML as a local raylet, so
this exercises the autoscaler reading node types, resources and labels from a YAML that mirrors
``cluster/gpu.yaml``. Its nodes share this machine's filesystem; :mod:`dynamonet.cluster.rehearsal`
is the rehearsal that shares nothing but object storage.

:func:`start_fake_cluster` starts it on free ports with a private ``--temp-dir`` and token auth;
:meth:`FakeCluster.stop` ends only that cluster's processes (never ``ray stop``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import yaml

from dynamonet.cluster.processes import free_ports, kill_all, pids_with_cmdline
from dynamonet.cluster.yaml_check import load_cluster_yaml


@dataclass
class FakeCluster:
    """A ``fake_multinode`` cluster started by :func:`start_fake_cluster` (Linux only)."""

    address: str  # GCS address for ray.init(address=...)
    temp_dir: str  # Ray's --temp-dir: every process of this cluster names it or the address
    env: dict[str, str] = field(default_factory=dict)  # token auth settings a client process needs
    dashboard: str = ""  # http://127.0.0.1:<port>: state API and job server

    def pids(self) -> list[int]:
        """This cluster's processes and their descendants, found through /proc."""
        return pids_with_cmdline(self.temp_dir, f"--address={self.address} ")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop only this cluster's processes (never `ray stop`: it kills every Ray of the user)."""
        kill_all(self.pids(), grace_s)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_fake_cluster(config_path: str, timeout_s: float = 60.0) -> FakeCluster:
    """``RAY_FAKE_CLUSTER=1 ray start --head --num-cpus=0 --num-gpus=0 --autoscaling-config=...``
    on free ports with a private temp dir, so it never collides with another Ray on the machine.

    The fake provider's workers connect to port 6379 unless ``provider.gcs_address`` says
    otherwise, so a copy of the config with that key is what Ray reads.
    """
    import ray._private.services

    gcs, dashboard, client, agent = free_ports(4, "")
    ip = ray._private.services.get_node_ip_address()
    cluster = FakeCluster(f"{ip}:{gcs}", tempfile.mkdtemp(prefix="rfk", dir="/tmp"),  # short: socket paths
                          dashboard=f"http://127.0.0.1:{dashboard}")
    config = load_cluster_yaml(config_path)
    config["provider"]["gcs_address"] = cluster.address
    config_copy = os.path.join(cluster.temp_dir, "fake_multinode.yaml")
    with open(config_copy, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh)
    cmd = ["ray", "start", "--head", "--num-cpus=0", "--num-gpus=0", f"--port={gcs}",
           f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--temp-dir={cluster.temp_dir}",
           f"--autoscaling-config={config_copy}", "--disable-usage-stats"]
    cluster.env["RAY_AUTH_MODE"] = "token"  # token auth on, as on the real clusters
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (
        os.path.isfile(os.path.expanduser("~/.ray/auth_token")))
    if not has_token:  # a private token for this cluster only
        token_path = os.path.join(cluster.temp_dir, "auth_token")
        with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(secrets.token_hex(32))
        cluster.env["RAY_AUTH_TOKEN_PATH"] = token_path
    env = {**os.environ, **cluster.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=timeout_s)
    except (subprocess.SubprocessError, OSError):
        cluster.stop()
        raise
    return cluster
