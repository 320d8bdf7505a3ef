"""The cores a run may use: affinity, cgroup v1 and v2 quotas and Slurm's figure, from fake files, and one real
taskset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_np.common.cores import available_cores, cgroup_quota

TWO = lambda: {0, 1}  # noqa: E731 -- an affinity mask of two cores
V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
V1_MOUNTS = ("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
             "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n")


def fake_root(tmp: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A directory standing for ``/``: ``proc/self/{cgroup,mountinfo}`` and cgroup files at their absolute paths."""
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/self/cgroup").write_text(cgroup)
    (tmp / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        target = tmp / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return tmp


def test_affinity_mask_decides_when_nothing_else_limits(tmp_path: Path) -> None:
    cores = available_cores(environ={}, root=tmp_path, affinity=lambda: {3})
    assert (cores.count, cores.source) == (1, "affinity")
    assert cores.tags()["cores"] == "1" and "affinity: 1 core(s)" in cores.tags()["cores_found"]


def test_v2_quota_rounds_down_and_an_ancestor_limits_too(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/jobs/run1\n", V2_MOUNT, {
        "/sys/fs/cgroup/jobs/run1/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/jobs/cpu.max": "350000 100000\n",  # 3.5 cores for the parent
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
    })
    cores = available_cores(environ={}, root=root, affinity=lambda: set(range(8)))
    assert cores.count == 3 and cores.source == "cgroup quota (/sys/fs/cgroup/jobs)"
    assert "3.5 core(s) in /sys/fs/cgroup/jobs" in cores.tags()["cores_found"]


def test_v2_quota_below_one_core_still_gives_one(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert available_cores(environ={}, root=root, affinity=TWO).count == 1


def test_v2_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/a\n", V2_MOUNT, {"/sys/fs/cgroup/a/cpu.max": "max 100000\n"})
    cores = available_cores(environ={}, root=root, affinity=TWO)
    assert (cores.count, cores.source) == (2, "affinity") and "cgroup quota: none" in cores.tags()["cores_found"]


def test_v1_quota_in_a_hybrid_system(tmp_path: Path) -> None:
    """cgroup v1's cpu controller (mounted together with cpuacct) beside an empty v2 hierarchy."""
    root = fake_root(tmp_path, "5:cpuset:/\n4:cpu,cpuacct:/slurm/job7\n0::/\n",
                     V1_MOUNTS + V2_MOUNT.replace("/sys/fs/cgroup ", "/sys/fs/cgroup/unified "), {
        "/sys/fs/cgroup/cpu,cpuacct/slurm/job7/cpu.cfs_quota_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/slurm/job7/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    cores = available_cores(environ={}, root=root, affinity=TWO)
    assert (cores.count, cores.source) == (1, "cgroup quota (/sys/fs/cgroup/cpu,cpuacct/slurm/job7)")


def test_v1_no_quota(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "4:cpu,cpuacct:/\n", V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_quota(root) is None


def test_a_container_sees_its_own_cgroup_at_the_mount_point(tmp_path: Path) -> None:
    """Without a cgroup namespace a container's mount shows its own subtree, whose root is its cgroup's path."""
    mounts = "50 40 0:29 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    root = fake_root(tmp_path, "0::/docker/abc\n", mounts, {"/sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cgroup_quota(root) == (2.0, "/sys/fs/cgroup")


def test_slurm_cpus_per_task_limits(tmp_path: Path) -> None:
    cores = available_cores(environ={"SLURM_CPUS_PER_TASK": "1"}, root=tmp_path, affinity=TWO)
    assert (cores.count, cores.source) == (1, "SLURM_CPUS_PER_TASK")
    # Slurm's figure never raises the count above the mask; a value that is not a number is ignored, and said so.
    assert available_cores(environ={"SLURM_CPUS_PER_TASK": "4"}, root=tmp_path, affinity=TWO).count == 2
    odd = available_cores(environ={"SLURM_CPUS_PER_TASK": "two"}, root=tmp_path, affinity=TWO)
    assert odd.count == 2 and "not a number" in odd.tags()["cores_found"]


def test_the_smallest_figure_wins_and_names_its_source(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "300000 100000\n"})
    cores = available_cores(environ={"SLURM_CPUS_PER_TASK": "2"}, root=root, affinity=lambda: set(range(4)))
    assert (cores.count, cores.source) == (2, "SLURM_CPUS_PER_TASK")


def test_without_affinity_or_cgroups_the_machine_count_is_left(tmp_path: Path) -> None:
    def no_affinity() -> set[int]:
        raise OSError("not supported")

    cores = available_cores(environ={}, root=tmp_path, affinity=no_affinity)
    assert (cores.count, cores.source) == (os.cpu_count() or 1, "os.cpu_count")


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and 2 cores")
def test_a_real_taskset_gives_one_core() -> None:
    code = "import json; from mnist_np.common.cores import available_cores; print(json.dumps(available_cores().tags()))"
    first = min(os.sched_getaffinity(0))
    out = subprocess.run(["taskset", "-c", str(first), sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    tags = json.loads(out.stdout)
    assert tags["cores"] == "1" and "affinity: 1 core(s)" in tags["cores_found"]


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and 2 cores")
def test_a_run_under_taskset_takes_one_core_and_tags_where_it_came_from() -> None:
    """``trainer.threads`` unset: the run's threads are the cores found; its environment tags say what was found."""
    code = ("import json; from omegaconf import OmegaConf; "
            "from mnist_np.experiment.run.context import HydraContext, blas_threads; "
            "from mnist_np.experiment.run.provenance import environment_tags; "
            "cfg = OmegaConf.create({'trainer': {'threads': None}}); "
            "print(json.dumps({'threads': blas_threads(cfg, HydraContext()), **environment_tags()}))")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CPUS_PER_TASK"}
    first = str(min(os.sched_getaffinity(0)))
    one = json.loads(subprocess.run(["taskset", "-c", first, sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True, env=env).stdout)
    assert one["threads"] == 1 and one["cores"] == "1" and one["cores_source"] == "affinity"
    every = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env=env).stdout)
    assert every["threads"] == int(every["cores"])
