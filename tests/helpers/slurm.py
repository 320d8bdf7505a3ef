"""A throwaway one-node Slurm cluster for tests: munge, slurmctld and slurmd on 127.0.0.1.

The cluster recipe (docs/clusters.md) sends a sweep's members to Slurm as a job array
(``+sweep=slurm``, Hydra's submitit launcher). The tests run it against a
real Slurm started here from Debian's packages (``slurmctld``, ``slurmd``,
``slurm-client``, ``munge``; ``.ci/run`` installs them as root): every file
it uses -- munge key and socket, ``slurm.conf``, state, spool, logs -- lives
in one temp dir, both daemons listen on free ports on the loopback, and
clients find the cluster through ``SLURM_CONF``. Nothing in ``/etc`` is
touched, and nothing outlives :meth:`SlurmCluster.stop`.

The daemons run as root (Slurm's own user would need its files chowned and
a login of its own); so jobs run as the user who submits them, root in CI.
No cgroups: processes are tracked through /proc (``proctrack/linuxproc``),
which a container without a writable cgroup tree allows.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.servers import LOOPBACK, free_port

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
# A cold slurmctld reads its state and waits for the node to register: seconds here,
# generous for a loaded CI machine.
START_TIMEOUT_SECONDS = 60.0


def _find(name: str) -> str | None:
    """A Slurm or munge program on PATH or in the sbin folders root's PATH may lack."""
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/sbin")
                                       if os.access(f"{d}/{name}", os.X_OK)), None)


PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")  # Debian's


def _missing() -> list[str]:
    return [p for p in (*DAEMONS, "mungekey", *CLIENTS) if _find(p) is None]


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can), after installing Debian's packages where root may."""
    if os.geteuid() != 0:
        return "a throwaway Slurm runs its daemons as root; not root here"
    if _missing() and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-qq", *PACKAGES], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", *PACKAGES]):
            if not _missing():
                break
            subprocess.run(cmd, capture_output=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
    missing = _missing()
    if missing:
        return f"no Slurm here ({', '.join(missing)} missing) and apt-get could not install {' '.join(PACKAGES)}"
    return None


def node_resources() -> tuple[str, int, int]:
    """The node as slurmd will see it: short host name, CPUs, memory in MB (a little held back for the OS)."""
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    memory_mb = pages * page_size // 2**20
    return socket.gethostname().split(".")[0], os.cpu_count() or 1, max(512, memory_mb - 1024)


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int) -> str:
    """The whole ``slurm.conf`` of a one-node cluster living in ``root``."""
    host, cpus, memory_mb = node_resources()
    return f"""\
ClusterName=mnistnp
SlurmctldHost={host}({LOOPBACK})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also holds a requeued job back (cred_expire + 1 s; the default is 120 s).
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# No cgroups: a container may have no writable cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# No accounting daemon: sacct has nothing to say, squeue and the result files are enough.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName={host} NodeAddr={LOOPBACK} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running one-node cluster; :attr:`env` is what a client process needs to reach it."""

    root: Path
    partition: str = PARTITION
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster (``squeue``, ``scancel``, ...)."""
        program = _find(cmd[0]) or cmd[0]
        return subprocess.run([program, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL, env={**os.environ, **self.env})

    def jobs(self) -> list[dict[str, str]]:
        """The cluster's queue: one dict per job (``id``: e.g. ``3_1`` for array task 1, ``state``, ``name``,
        ``restarts``)."""
        out = self.run("squeue", "--noheader", "--array", "--format=%i|%T|%j|%r").stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        return [{"id": r[0], "state": r[1], "name": r[2], "reason": r[3]} for r in rows]

    def log_tail(self, lines: int = 40) -> str:
        """The daemons' logs' last lines, for a failing test's message."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / name
            if path.is_file():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, remove the temp dir."""
        if self.env:
            self.run("scancel", "--full", "--user", "root", check=False)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _kill_from(self.root / pid_file)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_from(pid_file: Path, grace: float = 10.0) -> None:
    """SIGTERM the daemon ``pid_file`` names, SIGKILL it if it outlives ``grace`` seconds."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def start_cluster() -> SlurmCluster:
    """Start munge, slurmctld and slurmd in a new temp dir and wait until the node takes jobs.

    Raises:
        RuntimeError: a daemon did not start or the node never became idle (the message carries the logs' tails).
    """
    # Not under pytest's tmp dirs: munged refuses a socket dir others may write to, and the
    # paths must stay short (a unix socket's path has at most 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="mnist-np-slurm-"))
    root.chmod(0o755)
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(mode=0o700)
    (root / "munge").chmod(0o755)
    cluster = SlurmCluster(root)
    try:
        key = root / "munge.key"
        subprocess.run([_find("mungekey") or "mungekey", "--create", f"--keyfile={key}"], check=True,
                       capture_output=True, timeout=30)
        key.chmod(0o600)
        subprocess.run([_find("munged") or "munged", "--force", f"--socket={root}/munge/munge.socket",
                        f"--key-file={key}", f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                        f"--seed-file={root}/munged.seed"],
                       check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        conf = root / "slurm.conf"
        conf.write_text(slurm_conf(root, free_port(), free_port()))
        cluster.env = {"SLURM_CONF": str(conf)}
        env = {**os.environ, **cluster.env}
        for daemon in ("slurmctld", "slurmd"):
            # -i: no leftover state to read (a new cluster); daemons fork into the background.
            args = [_find(daemon) or daemon, "-f", str(conf)] + (["-i"] if daemon == "slurmctld" else [])
            subprocess.run(args, check=True, capture_output=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
        _wait_until_idle(cluster)
    except Exception as e:
        tail = cluster.log_tail()
        cluster.stop()
        raise RuntimeError(f"could not start a one-node Slurm: {e}\n{tail}") from e
    return cluster


def _wait_until_idle(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    state = ""
    while time.monotonic() < deadline:
        result = cluster.run("sinfo", "--noheader", "--format=%t", check=False)
        state = result.stdout.strip()
        if result.returncode == 0 and state == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the node never became idle (sinfo says {state!r})")
