"""A throw-away single-node SLURM cluster on localhost for the tests, under one temporary folder.

munged, MariaDB + slurmdbd (submitit polls `sacct` for the state of jobs that die without a result),
slurmctld and slurmd, as root, from Debian's packages `slurm-wlm slurmdbd munge mariadb-server`
(`.ci/run` installs them). `start()` raises `ClusterUnavailable` naming what is missing or which daemon did not
come up (with the end of its log), so the tests that need the cluster skip with that reason.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")  # slurmdbd's connections use munge's default socket
# job credentials live this long; SLURM holds a requeued job back for as long (cred_expire + 1 s), because the
# node refuses ("Job credential revoked") an attempt of a job whose earlier credential it has revoked. The
# default is 120 s; 10 s keeps the requeue test short and leaves the delay itself in place.
CREDENTIAL_LIFETIME_S = 10
BINARIES = ("munged", "munge", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "srun", "squeue", "sacct", "sacctmgr", "scontrol", "sinfo")
START_TIMEOUT_S = 90


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the test cluster; the message says why."""


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    pid_files: list[Path] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        def jobs() -> list[str]:
            listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True,
                                    timeout=60)
            return listed.stdout.split() if listed.returncode == 0 else []

        if jobs():  # a failed test may leave jobs: end them, so no job step outlives the cluster
            subprocess.run(["scancel", "--full", *jobs()], env=self.env, capture_output=True, timeout=60)
            deadline = time.time() + 60
            while jobs() and time.time() < deadline:
                time.sleep(0.5)
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=60)
        for pid_file in reversed(self.pid_files):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                pass
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _wait(check, what: str, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise ClusterUnavailable(f"{what} did not come up within {timeout:.0f} s; its log: {_tail(log)}")


def _run(args: list[str], env: dict[str, str] | None = None, what: str = "") -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ClusterUnavailable(f"{what or args[0]} failed (exit {result.returncode}): "
                                 f"{(result.stderr or result.stdout).strip()[-500:]}")


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(root: Path) -> Cluster:
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        raise ClusterUnavailable(f"not installed: {', '.join(missing)} "
                                 "(apt-get install slurm-wlm slurmdbd munge mariadb-server)")
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster's daemons run as root; this user is not root")
    if MUNGE_SOCKET.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        raise ClusterUnavailable(f"a munged already serves {MUNGE_SOCKET}; not starting a second one")
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    db_port, dbd_port, ctld_port, slurmd_port = _free_ports(4)
    cluster = Cluster(root, {**os.environ, "SLURM_CONF": str(root / "slurm.conf")})
    try:
        _start_daemons(cluster, root, host, db_port, dbd_port, ctld_port, slurmd_port)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_daemons(cluster: Cluster, root: Path, host: str, db_port: int, dbd_port: int, ctld_port: int,
                   slurmd_port: int) -> None:
    # munge: a fresh key, on the default socket
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    _run(["munged", "--force", f"--socket={MUNGE_SOCKET}", f"--key-file={key}", f"--log-file={root / 'munged.log'}",
          f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munged.seed'}"], what="munged")
    cluster.pid_files.append(root / "munged.pid")

    # MariaDB for slurmdbd, on a private port and socket
    data = root / "mariadb"
    _run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
          "--auth-root-authentication-method=normal", "--skip-test-db"], what="mariadb-install-db")
    db_socket = root / "mariadb.sock"
    cluster.processes.append(subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root", f"--socket={db_socket}",
         f"--port={db_port}", "--bind-address=127.0.0.1", f"--log-error={root / 'mariadb.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait(lambda: _accepts(db_port), "mariadbd", root / "mariadb.log")
    _run(["mariadb", "--no-defaults", f"--socket={db_socket}", "-uroot", "-e",
          "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
          "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"], what="creating the slurmdbd database user")

    (root / "slurmdbd.conf").write_text("\n".join([
        "AuthType=auth/munge", "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={dbd_port}", "SlurmUser=root",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={db_port}",
        "StorageUser=slurm", "StoragePass=slurm", "StorageLoc=slurm_acct_db",
        f"PidFile={root / 'slurmdbd.pid'}", f"LogFile={root / 'slurmdbd.log'}", ""]))
    (root / "slurmdbd.conf").chmod(0o600)
    (root / "state").mkdir(exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    (root / "slurm.conf").write_text("\n".join([
        "ClusterName=benchtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        "CredType=cred/munge", f"AuthInfo=cred_expire={CREDENTIAL_LIFETIME_S}",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "ReturnToService=2", "JobAcctGatherType=jobacct_gather/none", "MinJobAge=600",
        "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
        f"AccountingStoragePort={dbd_port}",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = cluster.env
    _run(["slurmdbd"], env, "slurmdbd")
    cluster.pid_files.append(root / "slurmdbd.pid")
    _wait(lambda: _accepts(dbd_port), "slurmdbd", root / "slurmdbd.log")
    _run(["sacctmgr", "-i", "add", "cluster", "benchtest"], env, "sacctmgr add cluster")
    _run(["slurmctld", "-i"], env, "slurmctld")
    _run(["slurmd"], env, "slurmd")

    def node_idle() -> bool:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    _wait(node_idle, "slurmd (node idle in sinfo)", root / "slurmd.log")
