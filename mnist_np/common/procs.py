"""Processes: which one owns a run, whether it still exists, and whether this one may fork.

A run records ``host:pid:start`` (``start`` = the process's start time in
clock ticks since boot, from ``/proc``), so a later look can tell a process
that died -- ``kill -9``, out of memory -- from one that is still training,
even after the pid has been reused. Only processes on this host, on Linux,
can be judged; anything else is left alone.
"""

from __future__ import annotations

import os
import socket
import sys


def _start_ticks(pid: int) -> str | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    # Field 22 (starttime) comes after the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of this process (or of ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}"


def is_dead(identity: str) -> bool:
    """True only when ``identity`` names a process of this host that no longer exists."""
    try:
        host, pid, start = identity.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname() or start == "?" or not os.path.isdir("/proc/self"):
        return False  # another machine, or no way to know: never guess
    return _start_ticks(int(pid)) != start


def forks_safely() -> bool:
    """Whether this process may ``fork`` children that go on using NumPy: Linux only.

    Elsewhere it is absent (Windows) or unsafe once system frameworks are
    loaded (macOS, where NumPy may use Accelerate); callers then do the work
    in-process instead.
    """
    return sys.platform.startswith("linux")
