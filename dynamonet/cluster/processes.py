"""Finding and stopping the processes of one local Ray cluster, never anyone else's.

``ray stop`` stops every Ray process of the user on the machine; the rehearsal and the fake
cluster run beside other Ray instances (a test session's own, a developer's), so they find their
processes through ``/proc`` instead:

* by command line: every process of a cluster started with a private ``--temp-dir`` names it, or
  the GCS address, on its command line; their descendants are found through ``/proc/*/task/*/children``;
* by mount namespace: every process of a rehearsal node lives in the mount namespace its
  ``unshare --mount`` created (``/proc/<pid>/ns/mnt``), descendants included.

Linux only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import time
from collections.abc import Iterable


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace") + " "
    except OSError:
        return None


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them."""
    found, frontier = set(roots), list(roots)
    while frontier:
        children = []
        for pid in frontier:
            for path in glob.glob(f"/proc/{pid}/task/*/children"):
                with contextlib.suppress(OSError), open(path) as fh:
                    children += [int(c) for c in fh.read().split()]
        frontier = [c for c in children if c not in found]
        found.update(frontier)
    return found


def pids_with_cmdline(*needles: str) -> list[int]:
    """Processes whose command line contains one of ``needles``, and their descendants."""
    roots = [int(p) for p in os.listdir("/proc") if p.isdigit()
             and any(n in (_cmdline(p) or "") for n in needles)]
    return sorted(descendants(roots) - {os.getpid()})


def mount_namespace(pid: int) -> str:
    """The mount namespace of ``pid``, e.g. ``mnt:[4026532301]`` ("" once it has exited)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def pids_in_namespace(namespace: str) -> list[int]:
    """Every live process in the mount namespace ``namespace``."""
    if not namespace:
        return []
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and mount_namespace(int(p)) == namespace
                  and alive(int(p)))


def kill_all(pids: Iterable[int], grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL whatever is left."""
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (the OS picks them).

    They are released before Ray binds them, so another process could take one in between; the
    OS hands out ephemeral ports in rotation, which makes that rare, and a process that cannot bind
    exits: its starter then starts it again on fresh ports.
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_range(count: int, host: str = "127.0.0.1", lo: int = 20000, hi: int = 32000) -> tuple[int, int]:
    """``(first, last)`` of ``count`` consecutive ports that are all free on ``host`` now (below the
    ephemeral range, so the OS does not hand them out meanwhile)."""
    windows = (hi - lo) // count
    offset = (os.getpid() * 7919) % windows  # processes on one machine start their search apart
    for k in range(windows):  # every window of the range, wrapping around from the offset
        first = lo + (offset + k) % windows * count
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return first, first + count - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports in {lo}..{hi} on {host}")
