"""The cores this process may really use: affinity mask, cgroup CPU quota, the scheduler's allocation.

``os.cpu_count()`` counts the machine's cores, not this process's. A run
under ``taskset -c 0``, in a container with a CPU limit, or in a Slurm
allocation of one CPU gets fewer, and a run that starts one shard process
per machine core there gets several processes taking turns on one core,
each waiting for the others. :func:`available_cores` takes the smallest of:

- the affinity mask (``os.sched_getaffinity``; ``taskset``, ``cpuset``
  cgroups, Slurm's and Kubernetes' CPU pinning all end up there);
- the cgroup CPU quota of this process's cgroup and of every ancestor up to
  the hierarchy's root: cgroup v2 ``cpu.max`` (``"150000 100000"``: 1.5
  cores), cgroup v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``; the cores it
  allows are rounded down (1.5 cores make 1: a second process would be
  throttled half of the time), at least 1;
- ``SLURM_CPUS_PER_TASK``, the scheduler's own figure, where it is set.

It says which of them decided and what each said (:meth:`Cores.tags`), so a
run can log it. Standard library only; Linux files are read where they
exist, and elsewhere only ``os.cpu_count()`` is left.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

SLURM_VARIABLE = "SLURM_CPUS_PER_TASK"


@dataclass(frozen=True)
class Cores:
    """``count`` cores, decided by ``source``; ``found``: what every source said, in words."""

    count: int
    source: str
    found: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Run tags: ``cores``, ``cores_source`` and ``cores_found`` (every figure looked at)."""
        return {"cores": str(self.count), "cores_source": self.source,
                "cores_found": "; ".join(f"{k}: {v}" for k, v in self.found.items())}


def available_cores(environ: Mapping[str, str] | None = None, root: str | Path = "/",
                    affinity: Callable[[], set[int]] | None = None) -> Cores:
    """The cores this process may use (see the module doc).

    ``environ``, ``root`` (where ``proc/`` and the cgroup mounts are read)
    and ``affinity`` stand in for the real ones in tests.
    """
    environ = os.environ if environ is None else environ
    root = Path(root)
    machine = os.cpu_count() or 1
    found = {"os.cpu_count": str(machine)}
    candidates: list[tuple[int, str]] = []  # (cores, source), in order of preference on a tie
    mask = _affinity(affinity)
    if mask is not None:
        candidates.append((mask, "affinity"))
        found["affinity"] = f"{mask} core(s)"
    quota = cgroup_quota(root)
    if quota is not None:
        cores, where = quota
        candidates.append((max(1, math.floor(cores)), f"cgroup quota ({where})"))
        found["cgroup quota"] = f"{cores:g} core(s) in {where}"
    else:
        found["cgroup quota"] = "none"
    slurm = environ.get(SLURM_VARIABLE)
    if slurm:
        try:
            candidates.append((max(1, int(slurm)), SLURM_VARIABLE))
            found[SLURM_VARIABLE] = slurm
        except ValueError:
            found[SLURM_VARIABLE] = f"{slurm!r} (not a number: ignored)"
    if not candidates:
        return Cores(machine, "os.cpu_count", found)
    count, source = min(candidates, key=lambda c: c[0])  # min() keeps the first of equals
    return Cores(count, source, found)


def _affinity(affinity: Callable[[], set[int]] | None) -> int | None:
    if affinity is None:
        if not hasattr(os, "sched_getaffinity"):  # macOS, Windows
            return None
        affinity = lambda: os.sched_getaffinity(0)  # noqa: E731
    try:
        return len(affinity()) or None
    except OSError:
        return None


def cgroup_quota(root: Path = Path("/")) -> tuple[float, str] | None:
    """The tightest CPU quota over this process's cgroups and their ancestors, in cores, and the file that set it.

    None without a quota (``max``, ``-1``) or where there are no cgroups.
    Both hierarchies are read where both are mounted (a "hybrid" system):
    the cpu controller sits in one of them.
    """
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    best: tuple[float, str] | None = None
    for line in memberships:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            found = _tightest(root, _mount_dir(mounts, path, "cgroup2", None), _v2_quota)
        elif "cpu" in controllers.split(","):
            found = _tightest(root, _mount_dir(mounts, path, "cgroup", "cpu"), _v1_quota)
        else:
            continue
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    return best


def _mount_dir(mounts: list[str], path: str, fstype: str, controller: str | None) -> tuple[Path, Path] | None:
    """(the hierarchy's mount point, this cgroup's directory in it) from ``/proc/self/mountinfo`` lines."""
    for line in mounts:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != fstype:
            continue
        if controller is not None and controller not in tail[2].split(","):
            continue
        mount_root, mount_point = fields[3], Path(fields[4])
        # The path is the cgroup's place in the whole hierarchy; the mount may show only a subtree of it
        # (a container's), whose root is then this cgroup or an ancestor. A path outside it: the mount's top.
        if mount_root == "/":
            relative = path
        elif path == mount_root or path.startswith(mount_root + "/"):
            relative = path[len(mount_root):]
        else:
            relative = "/"
        return mount_point, mount_point / relative.lstrip("/")
    return None


def _tightest(root: Path, dirs: tuple[Path, Path] | None,
              read: Callable[[Path], float | None]) -> tuple[float, str] | None:
    """The smallest quota from the cgroup's directory up to the mount point (an ancestor's quota limits it too)."""
    if dirs is None:
        return None
    top, here = dirs
    best: tuple[float, str] | None = None
    while True:
        cores = read(root / here.relative_to("/"))
        if cores is not None and (best is None or cores < best[0]):
            best = (cores, str(here))
        if here == top or here == here.parent:
            return best
        here = here.parent


def _v2_quota(directory: Path) -> float | None:
    """``cpu.max``: ``"max 100000"`` (no quota) or ``"<quota> <period>"`` in microseconds."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1: no quota) over ``cpu.cfs_period_us``."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


class IdleMeter:
    """Idle cores among this process's allowed ones, between two calls, from ``/proc/stat``.

    Each call returns how many of the allowed cores stood idle, on average,
    since the previous call (``0.0`` to the number of cores; idle and I/O
    wait count), or None on the first call and where ``/proc/stat`` cannot
    be read. It says whether a second process of ours would find a core:
    a busy neighbour or another run leaves none idle. A host-wide figure:
    a cgroup quota does not show in it.
    """

    def __init__(self, stat: str | Path = "/proc/stat", cores: set[int] | None = None) -> None:
        self.stat = Path(stat)
        if cores is None:
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.names = {f"cpu{c}" for c in cores}
        self._last: tuple[int, int] | None = None

    def __call__(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return len(self.names) * (now[0] - last[0]) / (now[1] - last[1])

    def _read(self) -> tuple[int, int] | None:
        """(idle ticks, all ticks) summed over the allowed cores."""
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        idle = total = 0
        for line in lines:
            name, _, rest = line.partition(" ")
            if name in self.names:
                ticks = [int(v) for v in rest.split()]
                idle += ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                total += sum(ticks[:8])  # user .. steal; guest time is already in user
        return (idle, total) if total else None
