"""A rehearsal cluster on one machine whose nodes share nothing but object storage.

The layout of ``cluster/gpu.yaml``, shrunk to one Linux machine:

    node      loopback IP  Ray resources               runs
    head      127.0.0.1    CPU 0, GPU 0                GCS, dashboard, job server, job drivers
    decode    127.0.0.2    CPU 3, decode 3             Ray Data decoders, ingest tasks
    trainer   127.0.0.3    CPU 4, trainer 2            Ray Train workers (``trainer`` stands in for GPUs)
    s3        127.0.0.1    moto in server mode         the only medium the nodes share

Every node is ``ray start --block`` inside its own mount namespace (``unshare --mount``, root
only) with private tmpfs mounts over ``/tmp`` (Ray's session directory, temp files, a job's
working directory), ``~/.cache``, ``~/.config`` and ``~/.ray``: a file a task writes there on one
node is absent on every other node, as on separate machines. What a real node has installed, this
Python environment and this checkout, stays visible inside them (bind mounts) if it lives there. Each node has its own loopback
address, so a job driver finds the raylet of its own node, and its own ports. The nodes get the
token of the cluster (``RAY_AUTH_TOKEN``), the S3 endpoint and credentials (the standard AWS
variables) and the cluster storage setting (``DYNAMONET_STORAGE``), as the cluster YAMLs give
them to real nodes. Nodes can be killed whole (every process in the namespace) and added again.

    python -m dynamonet.cluster rehearsal up        # prints the environment a client needs
    python -m dynamonet.cluster rehearsal status
    python -m dynamonet.cluster rehearsal kill-node trainer
    python -m dynamonet.cluster rehearsal add-node trainer
    python -m dynamonet.cluster rehearsal down

The tests use the same class (``tests/conftest.py``, fixture ``rehearsal``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from dynamonet.cluster.processes import (
    alive,
    free_port_range,
    free_ports,
    kill_all,
    mount_namespace,
    pids_in_namespace,
)

ROLE_LABEL = "dynamonet.io/role"
STORAGE_ENV = "DYNAMONET_STORAGE"
DEFAULT_STATE_DIR = "/var/tmp/dynamonet-rehearsal"
PRIVATE_DIRS = ("/tmp", "~/.cache", "~/.config", "~/.ray")  # tmpfs per node (Ray, caches, temp files)
# Ray system settings of every node: a dead node is declared dead within ~3 s instead of ~30 s.
WORKER_PORTS = 200  # worker processes a node may start (each takes one port of its range)
SYSTEM_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
              "RAY_health_check_initial_delay_ms": "1000"}


class NodeExited(RuntimeError):
    """A rehearsal node's ``ray start`` exited before the node joined."""


@dataclass(frozen=True)
class NodeSpec:
    """What a node of a role offers Ray."""

    num_cpus: int
    resources: dict[str, int] = field(default_factory=dict)
    object_store_mb: int = 300


ROLES = {"head": NodeSpec(0), "decode": NodeSpec(3, {"decode": 3}), "trainer": NodeSpec(4, {"trainer": 2})}


@dataclass
class Node:
    """One running node: the ``unshare`` process, its namespace, address and ports."""

    role: str
    ip: str
    pid: int
    namespace: str
    ports: dict[str, int]
    log: str

    def processes(self) -> list[int]:
        return pids_in_namespace(self.namespace)

    def alive(self) -> bool:
        return alive(self.pid)


@dataclass
class Rehearsal:
    """A running rehearsal cluster (see the module docstring); ``state_dir`` holds its logs and state."""

    state_dir: str
    token: str
    s3_endpoint: str
    storage: str  # DYNAMONET_STORAGE of every node: s3://bucket/prefix
    nodes: list[Node] = field(default_factory=list)
    moto_pid: int = 0  # the S3 server this cluster started (0: an external one)
    gcs_port: int = 0
    dashboard_port: int = 0

    # ------------------------------------------------------------------ addresses and environments

    @property
    def dashboard(self) -> str:
        """The dashboard, job server and state API: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def address(self) -> str:
        """The GCS address (what ``RAY_ADDRESS`` holds on the cluster's own nodes)."""
        return f"127.0.0.1:{self.gcs_port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a process on this machine that talks to the cluster (``ray job submit``,
        ``ray list``): token auth and the S3 endpoint, no ``RAY_ADDRESS`` (give ``--address``)."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return {**env, **self._aws_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **extra}

    def _aws_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": "rehearsal",
                "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

    def _node_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_")) and k != STORAGE_ENV}
        return {**env, **self._aws_env(), **SYSTEM_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                STORAGE_ENV: self.storage, "PYTHONUNBUFFERED": "1"}

    # ------------------------------------------------------------------ nodes

    def node(self, role: str) -> Node:
        """The live node of ``role`` started last."""
        live = [n for n in self.nodes if n.role == role and n.alive()]
        if not live:
            raise LookupError(f"no live {role} node in the rehearsal at {self.state_dir}")
        return live[-1]

    def add_node(self, role: str, timeout_s: float = 120.0, attempts: int = 3) -> Node:
        """Start a node of ``role`` in a new mount namespace and wait until the cluster lists it.

        Its ports are found free, then bound by Ray: a node that exits because another process took
        one in between is started again on fresh ports, up to ``attempts`` times."""
        for _ in range(attempts - 1):
            with contextlib.suppress(NodeExited):
                return self._start_node(role, timeout_s)
        return self._start_node(role, timeout_s)

    def _start_node(self, role: str, timeout_s: float) -> Node:
        spec = ROLES[role]
        ip = f"127.0.0.{len(self.nodes) + 1}"
        names = ["node_manager", "object_manager", "runtime_env_agent", "dashboard_agent_grpc",
                 "dashboard_agent_listen", "metrics_export"]
        ports = dict(zip(names, free_ports(len(names), ip), strict=True))
        ports["worker_min"], ports["worker_max"] = free_port_range(WORKER_PORTS, ip)
        args = ["ray", "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={spec.num_cpus}",
                f"--object-store-memory={spec.object_store_mb * 1_000_000}", f"--labels={ROLE_LABEL}={role}",
                f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
                f"--runtime-env-agent-port={ports['runtime_env_agent']}",
                f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
                f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
                f"--metrics-export-port={ports['metrics_export']}",
                f"--min-worker-port={ports['worker_min']}", f"--max-worker-port={ports['worker_max']}",
                "--disable-usage-stats"]
        if spec.resources:
            args.append(f"--resources={json.dumps(spec.resources)}")
        if role == "head":
            self.gcs_port, self.dashboard_port, client = free_ports(3, ip)
            args += ["--head", f"--port={self.gcs_port}", "--num-gpus=0", "--include-dashboard=true",
                     f"--dashboard-host={ip}", f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={client}"]
        else:
            args.append(f"--address={self.address}")
        log = os.path.join(self.state_dir, f"node-{len(self.nodes)}-{role}.log")
        staging = os.path.join(self.state_dir, f"mnt-{len(self.nodes)}")
        script = f"set -e; {private_mounts(role, staging)}; cd /tmp; exec {shlex.join(args)}"
        with open(log, "ab") as out:
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                                    env=self._node_env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = Node(role, ip, proc.pid, "", ports, log)
        deadline = time.monotonic() + 10
        while not node.namespace and time.monotonic() < deadline:  # unshare has switched when the id differs
            ns = mount_namespace(proc.pid)
            node.namespace = ns if ns and ns != mount_namespace(os.getpid()) else ""
            time.sleep(0.05)
        self.nodes.append(node)
        self.save()
        self._wait_for(node, proc, timeout_s)
        return node

    def _wait_for(self, node: Node, proc: subprocess.Popen, timeout_s: float) -> None:
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.nodes.remove(node)
                self.save()
                raise NodeExited(f"the {node.role} node exited with {proc.returncode}: {_tail(node.log)}")
            try:
                if node.role == "head":
                    self.http_json("/api/version")
                    return
                if any(n["node_ip"] == node.ip and n["state"] == "ALIVE" for n in self.list_nodes()):
                    return
            except (OSError, ValueError) as e:
                last = str(e)
            time.sleep(0.5)
        raise RuntimeError(f"the {node.role} node did not join in {timeout_s:.0f} s ({last}): {_tail(node.log)}")

    def kill_node(self, role: str) -> Node:
        """SIGKILL every process of the live ``role`` node (its namespace and tmpfs go with them)."""
        node = self.node(role)
        for pid in node.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while node.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        return node

    # ------------------------------------------------------------------ the dashboard's HTTP API

    def http_json(self, path: str, timeout_s: float = 30.0) -> Any:
        """GET ``path`` of the dashboard with the cluster's token; the decoded JSON."""
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def state(self, kind: str, limit: int = 10000, detail: bool = True) -> list[dict[str, Any]]:
        """Ray's state API over HTTP: ``kind`` in nodes, actors, tasks, jobs, ..."""
        body = self.http_json(f"/api/v0/{kind}?limit={limit}&detail={int(detail)}")
        return body["data"]["result"]["result"]

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.state("nodes", detail=True)

    def roles(self) -> dict[str, str]:
        """``{node_id: role}`` of every node the cluster has known (dead ones included)."""
        return {n["node_id"]: (n.get("labels") or {}).get(ROLE_LABEL, "?") for n in self.list_nodes()}

    # ------------------------------------------------------------------ life cycle

    def save(self) -> None:
        with open(os.path.join(self.state_dir, "state.json"), "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=1)

    @classmethod
    def load(cls, state_dir: str = DEFAULT_STATE_DIR) -> Rehearsal:
        try:
            with open(os.path.join(state_dir, "state.json"), encoding="utf-8") as fh:
                d = json.load(fh)
        except FileNotFoundError:
            raise RuntimeError(f"no rehearsal cluster recorded in {state_dir}") from None
        d["nodes"] = [Node(**n) for n in d["nodes"]]
        return cls(**d)

    def down(self) -> None:
        """Stop every node (all processes of each namespace) and the S3 server this cluster started."""
        for node in reversed(self.nodes):
            kill_all([node.pid, *node.processes()], grace_s=5.0)
        if self.moto_pid:
            kill_all([self.moto_pid], grace_s=5.0)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def software_paths() -> list[str]:
    """What a real node has installed: this Python environment and this checkout. They stay
    visible on every node even when they live under a private directory (a checkout in /tmp)."""
    import dynamonet

    return sorted({os.path.realpath(sys.prefix), os.path.dirname(os.path.dirname(os.path.realpath(dynamonet.__file__)))})


def private_mounts(role: str, staging: str) -> str:
    """Shell commands, run inside the node's new mount namespace, that put a fresh tmpfs over each
    of :data:`PRIVATE_DIRS`. Each tmpfs is prepared at ``staging`` (bind mounts of the
    :func:`software_paths` under it) and then moved into place."""
    steps = []
    for i, d in enumerate(os.path.realpath(os.path.expanduser(p)) for p in PRIVATE_DIRS):
        stage = os.path.join(staging, str(i))
        steps += [f"mkdir -p {shlex.quote(d)} {shlex.quote(stage)}",
                  f"mount -t tmpfs -o mode=1777 dynamonet-{role} {shlex.quote(stage)}"]
        for keep in software_paths():
            if keep == d or keep.startswith(d + os.sep):
                inner = os.path.join(stage, os.path.relpath(keep, d))
                steps += [f"mkdir -p {shlex.quote(inner)}", f"mount --bind {shlex.quote(keep)} {shlex.quote(inner)}"]
        steps.append(f"mount --move {shlex.quote(stage)} {shlex.quote(d)}")
    return "; ".join(steps)


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(fh.read().strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def start_s3_server(state_dir: str, timeout_s: float = 30.0, attempts: int = 3) -> tuple[str, int]:
    """moto in server mode on a free loopback port, as its own process; ``(endpoint, pid)``.

    A server that exits at once (another process took the port after it was found free) is
    started again on a fresh port, up to ``attempts`` times."""
    log_path = os.path.join(state_dir, "moto.log")
    for _ in range(attempts):
        (port,) = free_ports(1)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(endpoint, timeout=2).close()
                return endpoint, proc.pid
            time.sleep(0.2)
        if proc.poll() is None:  # up but not answering: not a port race
            kill_all([proc.pid])
            break
    raise RuntimeError(f"the S3 server (moto) did not start: {_tail(log_path)}")


def check_supported() -> str:
    """Why a rehearsal cannot run here ("" if it can): Linux, root, ``unshare --mount``."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (mount namespaces)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare --mount` is not permitted here (needs root): {probe.stderr.strip()}"
    return ""


def up(state_dir: str = DEFAULT_STATE_DIR, *, s3_endpoint: str = "", bucket: str = "rehearsal",
       workers: tuple[str, ...] = ("decode", "trainer")) -> Rehearsal:
    """Start the S3 server (unless ``s3_endpoint`` is given), the head and the worker nodes."""
    problem = check_supported()
    if problem:
        raise RuntimeError(f"rehearsal cluster: {problem}")
    if os.path.exists(os.path.join(state_dir, "state.json")):
        raise RuntimeError(f"a rehearsal is already recorded in {state_dir}: run `down` first")
    os.makedirs(state_dir, exist_ok=True)
    moto_pid = 0
    if not s3_endpoint:
        s3_endpoint, moto_pid = start_s3_server(state_dir)
    cluster = Rehearsal(state_dir=state_dir, token=secrets.token_hex(32), s3_endpoint=s3_endpoint,
                        storage=f"s3://{bucket}/dynamonet", moto_pid=moto_pid)
    try:
        _create_bucket(cluster, bucket)
        for role in ("head", *workers):
            cluster.add_node(role)
    except BaseException:
        cluster.down()
        raise
    return cluster


def _create_bucket(cluster: Rehearsal, bucket: str) -> None:
    import boto3

    env = cluster._aws_env()
    client = boto3.client("s3", endpoint_url=cluster.s3_endpoint, region_name=env["AWS_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
