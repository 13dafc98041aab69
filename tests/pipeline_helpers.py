"""Helpers for the end-to-end tests of the entry points: a `ray start --head` cluster on loopback,
the small synthetic settings, and running `pipelines/*.py` as real subprocesses.

The cluster is a real Ray head (GCS, raylet, dashboard and job server) started with
``ray start --head --block`` in its own process group, token authentication on (with a private
token if the machine has none), and stopped by signalling that group, never by ``ray stop`` (which
would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from dynamonet.cluster.processes import free_ports

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RayHead:
    proc: subprocess.Popen
    address: str  # GCS address for RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:<port>: job submission and state API
    temp_dir: str
    env: dict[str, str] = field(default_factory=dict)

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment of a process that talks to this cluster."""
        return {**os.environ, **self.env, "RAY_ADDRESS": self.address, **extra}

    def processes(self, needle: str) -> list[psutil.Process]:
        """Live processes of this cluster whose command line contains ``needle``."""
        out = []
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if needle in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops its own processes), SIGKILL to the group after."""
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)  # an idle head stops in about 2 s; one still busy gets SIGKILL below
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass


def start_head(num_cpus: int = 8, timeout: float = 120.0, attempts: int = 3) -> RayHead:
    """Start a Ray head on loopback and wait until its job server answers.

    Ray binds its ports itself, after they were found free: if another process took one in
    between, ``ray start`` exits, and the head is started again on fresh ports (``attempts``)."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Unix socket paths are length-limited
    env = {"RAY_AUTH_MODE": "token"}
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(os.path.expanduser("~/.ray/auth_token"))):
        token_path = os.path.join(temp_dir, "auth_token")
        with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(secrets.token_hex(32))
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    problem = ""
    for _ in range(attempts):
        head = _launch_head(num_cpus, temp_dir, env)
        problem = _wait_for_jobs(head, timeout)
        if not problem:
            return head
        head.stop()
        if "exited" not in problem:  # up but never ready: not a port race
            break
    raise RuntimeError(f"the Ray head did not accept a job: {problem}")


def _launch_head(num_cpus: int, temp_dir: str, env: dict[str, str]) -> RayHead:
    # Free ports for the node's agents too: the defaults (e.g. the job agent's 52365) are taken when
    # another Ray instance of the test session (ray_local) is up, and then no job can be submitted.
    gcs, dash, listen, grpc, runtime_env, metrics = free_ports(6)
    cmd = ["ray", "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
           "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={listen}", f"--dashboard-agent-grpc-port={grpc}",
           f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return RayHead(proc=proc, address=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dash}", temp_dir=temp_dir,
                   env=env)


def _wait_for_jobs(head: RayHead, timeout: float) -> str:
    """"" once the job server accepts a job; otherwise why not.

    `ray job list` answers before the head's dashboard agent has registered, and a submission in
    that window fails with "No available agent to submit job": so the probe is a real submission."""
    probe = ["ray", "job", "submit", "--no-wait", "--address", head.dashboard, "--", "true"]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = subprocess.run(probe, env=head.client_env(), capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return ""
        if head.proc.poll() is not None:
            return f"ray start exited with {head.proc.returncode}"
        last = (r.stderr.strip().splitlines() or [""])[-1]
        time.sleep(0.5)
    return f"not ready in {timeout:.0f} s: {last}"


def small_settings(cache_dir: str, storage: str, epochs: int = 3) -> list[str]:
    """A tiny synthetic task that still learns: 4 translation classes, 32 px, clips of 8 (+1) frames,
    4 clips per video: 24 steps of 2 × 16 per epoch (per-worker batches of 8 barely learn: BN)."""
    sets = {
        "data.cache_dir": cache_dir,
        "data.synthetic.num_classes": 4, "data.synthetic.train_per_class": 48, "data.synthetic.val_per_class": 3,
        "data.synthetic.num_frames": 12, "data.synthetic.size": 32,
        "data.clip_len": 8, "data.crop_size": 24, "data.resize_short": 32, "data.batch_size": 16,
        "data.clips_per_video": 4, "data.decode_actors": 1, "data.decode_cpus": 0.5,
        "loss.alpha": 0.1, "model.dmr_dim": 64, "model.ar_dim": 32, "model.head_channels": 16, "model.dropout": 0.0,
        "optim.warmup_epochs": 0, "optim.schedule": "constant", "optim.lr": 0.4,
        "train.epochs": epochs, "train.log_every": 1, "run.storage_path": storage,
    }
    out: list[str] = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def pipeline(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / script), *args]


def run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run to completion; output is returned (and shown by pytest on failure)."""
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-6000:] + p.stderr[-6000:])
    return p


class LineReader:
    """Collect a process's merged stdout/stderr lines in a thread; wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {needle!r}:\n" + self.tail())
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no line with {needle!r} within {timeout}s:\n" + self.tail())

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc

    def text(self) -> str:
        return "".join(self.lines)

    def tail(self, n: int = 80) -> str:
        return "".join(self.lines[-n:])


def popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own process group with merged, line-buffered output."""
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)


def checkpoint_epochs(run_dir: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("checkpoint_epoch")) for p in run_dir.glob("checkpoint_epoch*")
                  if (p / "checkpoint.pt").exists())


def ray_head_fixture():
    """Session fixture body: a Ray head for every test that needs one (see conftest.py)."""
    head = start_head()
    try:
        yield head
    finally:
        head.stop()
