"""A throw-away single-node SLURM on this machine, for tests/test_slurm.py.

``install()`` puts the Debian packages in place (root and apt-get only; otherwise it says why not, and the
test skips). ``Cluster`` then starts, all as root on 127.0.0.1 and all under one fresh folder in /tmp:

- ``munged`` with its own key and socket (not the system's /run/munge),
- MariaDB + ``slurmdbd`` (job accounting: in SLURM 22.05 ``sacct`` needs slurmdbd; with
  ``AccountingStorageType=accounting_storage/none`` it answers "Slurm accounting storage is disabled"),
- ``slurmctld`` and ``slurmd`` from a generated ``slurm.conf``: one node with the machine's real CPUs and
  memory (``slurmd -C``), the partitions the caller names, one account, free ports.

``stop()`` (or leaving the ``with`` block) cancels what is still queued, ends exactly the daemons it started
(by their process ids) and removes the folder. One cluster at a time per machine (a lock file).

SLURM commands find the configuration through ``SLURM_CONF`` (``Cluster.env``). Inside a job,
snakemake-executor-plugin-slurm-jobstep drops every ``SLURM_*`` variable before it calls ``srun``, so ``srun``
reads the default /etc/slurm/slurm.conf, as on any real cluster: while the cluster runs, that path is a
symlink to the generated file. It is only created where no file is there (a machine with its own SLURM
configuration is left alone: the test skips), and removed again by ``stop()``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
# program -> Debian package (bookworm: SLURM 22.05, MariaDB 10.11)
PACKAGES = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "slurmdbd": "slurmdbd",
    "mariadbd": "mariadb-server",
}
ETC_CONF = Path("/etc/slurm/slurm.conf")
LOCK = Path("/tmp/mpqbench-slurm.lock")
PREFIX = "mpqbench-slurm-"


def _which(program: str) -> str | None:
    return shutil.which(program, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def missing_packages() -> list[str]:
    return sorted({pkg for program, pkg in PACKAGES.items() if _which(program) is None})


def install() -> str | None:
    """Install what is missing (``apt-get``, as root). ``None`` when ready, else why not (to skip)."""
    if os.geteuid() != 0:
        return "not root: the test cluster runs its daemons and jobs as root"
    if _foreign_etc_conf():
        return f"{ETC_CONF} exists: this machine has its own SLURM configuration, which the test leaves alone"
    missing = missing_packages()
    if not missing:
        return None
    apt = _which("apt-get")
    if apt is None:
        return f"apt-get is not available to install {' '.join(missing)}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in ([apt, *lock, "update", "-qq"],
                [apt, *lock, "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    still = missing_packages()
    return f"still missing after apt-get install: {' '.join(still)}" if still else None


def _foreign_etc_conf() -> bool:
    """/etc/slurm/slurm.conf exists and is not a link made by this module (one of a running test cluster, which
    the lock makes the next one wait for, or one left behind by a run that was killed)."""
    if ETC_CONF.is_symlink() and ETC_CONF.readlink().parent.parent.name.startswith(PREFIX):
        return False
    return ETC_CONF.exists() or ETC_CONF.is_symlink()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict[str, str]:
    """``slurmd -C``: CPUs, Boards, SocketsPerBoard, CoresPerSocket, ThreadsPerCore, RealMemory."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[0]
    return {k: v for k, v in re.findall(r"(\w+)=(\S+)", line) if k != "NodeName"}


def slurm_version() -> str:
    out = subprocess.run([_which("slurmctld"), "-V"], capture_output=True, text=True).stdout
    return out.strip().split()[-1] if out.strip() else "unknown"


class Cluster:
    """One node named after this host; ``partitions``: names, the first is the default; ``account``: the one
    account (root is associated with it)."""

    def __init__(self, partitions=("cpu",), account: str = "mpqtest", name: str = "mpqtest"):
        self.partitions = tuple(partitions)
        self.account = account
        self.name = name
        self.node = socket.gethostname().split(".")[0]
        self.hardware: dict[str, str] = {}
        self.dir: Path | None = None
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._lock = None
        self._linked = False

    # ---- paths and environment -------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    def env(self, base: dict | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{env.get('PATH', '')}:{SBIN}"
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                               + self.logs())
        return proc

    def logs(self, tail: int = 30) -> str:
        if self.dir is None:
            return ""
        parts = []
        for log in sorted((self.dir / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {log.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---- start -----------------------------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._take_lock()
        self.dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
        self.dir.chmod(0o755)  # munged wants every folder above its socket executable for all
        for sub, mode in (("munge", 0o700), ("sock", 0o755), ("etc", 0o755), ("db", 0o700), ("state", 0o700),
                          ("spool", 0o755), ("log", 0o755)):
            (self.dir / sub).mkdir()
            (self.dir / sub).chmod(mode)
        self.ports = {k: free_port() for k in ("ctld", "slurmd", "dbd", "db")}
        self.hardware = node_hardware()
        self._start_munge()
        self._start_mariadb()
        self._write_confs()
        self._link_etc_conf()
        self._start("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait(lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, "slurmdbd")
        for args in (("add", "cluster", self.name),
                     ("add", "account", self.account, "Description=mpqbench-test", "Organization=mpqbench"),
                     ("add", "user", "root", f"account={self.account}")):
            self.run("sacctmgr", "-i", *args)
        self._start("slurmctld", [_which("slurmctld"), "-D", "-i"])
        self._start("slurmd", [_which("slurmd"), "-D", "-N", self.node])

        def idle():
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
            return bool(out) and all(s.rstrip("*") == "idle" for s in out)

        self._wait(idle, "slurmd (node idle)")

    def _take_lock(self) -> None:
        self._lock = open(LOCK, "w")
        deadline = time.monotonic() + 1800
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test cluster holds {LOCK} for 30 minutes")
                time.sleep(2)

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.dir / "log" / f"{name}.out.log", "w")
        proc = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append((name, proc))
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once ({proc.returncode}):\n{self.logs()}")
        return proc

    def _wait(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [(n, p.returncode) for n, p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{self.logs()}")
            time.sleep(0.5)

    def _start_munge(self) -> None:
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = self.dir / "sock" / "munge.socket"
        m = self.dir / "munge"
        self._start("munged", [_which("munged"), "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--log-file={self.dir / 'log' / 'munged.log'}", f"--pid-file={m / 'munged.pid'}",
                               f"--seed-file={m / 'munged.seed'}"])
        self._wait(self.munge_socket.exists, "munged")

    def _start_mariadb(self) -> None:
        db, sock = self.dir / "db", self.dir / "sock" / "mysql.sock"
        proc = subprocess.run([_which("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={db}",
                               "--auth-root-authentication-method=socket", "--skip-test-db"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        self._start("mariadbd", [_which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={db}",
                                 f"--socket={sock}", f"--port={self.ports['db']}", "--bind-address=127.0.0.1",
                                 "--skip-name-resolve", f"--log-error={self.dir / 'log' / 'mariadb.log'}",
                                 f"--pid-file={self.dir / 'mariadb.pid'}", "--innodb-lock-wait-timeout=900"])
        self._wait(sock.exists, "mariadbd")
        sql = ("CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
        subprocess.run([_which("mariadb"), "--no-defaults", f"--socket={sock}", "-u", "root", "-e", sql],
                       check=True, capture_output=True, timeout=60)

    def _write_confs(self) -> None:
        d, hw, node = self.dir, self.hardware, self.node
        hardware = " ".join(f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                      "ThreadsPerCore", "RealMemory") if k in hw)
        partitions = "\n".join(
            f"PartitionName={p} Nodes={node} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
            for i, p in enumerate(self.partitions))
        self.conf.write_text(f"""\
# generated by tests/slurmkit.py: a single-node test cluster, everything as root on 127.0.0.1
ClusterName={self.name}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={self.ports['ctld']}
SlurmdPort={self.ports['slurmd']}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
# no cgroups in a container: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
# accounting through slurmdbd, so that sacct works (and Comment = Snakemake's rule + wildcards is kept)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports['dbd']}
AccountingStoragePass={self.munge_socket}
AccountingStoreFlags=job_comment
JobCompType=jobcomp/filetxt
JobCompLoc={d / 'log' / 'jobcomp.txt'}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
{partitions}
""")
        dbd = d / "etc" / "slurmdbd.conf"  # slurmdbd reads it next to SLURM_CONF; it must be private
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports['dbd']}
SlurmUser=root
LogFile={d / 'log' / 'slurmdbd.log'}
PidFile={d / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['db']}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    def _link_etc_conf(self) -> None:
        if _foreign_etc_conf():
            raise RuntimeError(f"{ETC_CONF} exists: this machine has its own SLURM configuration")
        if ETC_CONF.is_symlink():
            ETC_CONF.unlink()  # left behind by a run of this module that was killed
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        ETC_CONF.symlink_to(self.conf)
        self._linked = True

    # ---- queries ---------------------------------------------------------------------------------------
    def sacct(self, fields: list[str], *args: str) -> list[dict[str, str]]:
        """One dict per job allocation (``-X``) of this cluster's accounting, every job since it started."""
        out = self.run("sacct", "-X", "-P", "--noheader", "-a", "--starttime", "2000-01-01",
                       f"--format={','.join(fields)}", *args).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]

    # ---- stop ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        names = [n for n, p in self.procs if p.poll() is None]
        if "slurmctld" in names:
            self.run("scancel", "--full", "-u", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                left = self.run("squeue", "-h", "-o", "%i", check=False)
                if left.returncode != 0 or not left.stdout.strip():
                    break
                time.sleep(1)
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()
        if self._linked:
            if ETC_CONF.is_symlink() and ETC_CONF.readlink() == self.conf:
                ETC_CONF.unlink()
            self._linked = False
        if self.dir is not None and not os.environ.get("MPQBENCH_KEEP_SLURM"):
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
