"""A one-node SLURM cluster in a temporary directory, for tests that submit real jobs with sbatch.

Built for Debian's `munge`, `slurmctld`, `slurmd` and `slurm-client` packages (Slurm 22.05 on
Debian 12) and run as root: `munged` runs as the `munge` user, `slurmctld` and `slurmd` as root.
Every file the cluster writes (munge key and socket, slurm.conf, state, spool, logs) lives under
the given root folder, and the daemons listen on free ports of 127.0.0.1, so the cluster touches
no system Slurm or munge installation. :meth:`SlurmCluster.stop` ends only the daemons that
:meth:`SlurmCluster.start` started, by their process ids.

Commands on the submitting side find the configuration through SLURM_CONF. slurmd runs in a
private mount namespace where the configuration folder is bind-mounted over /etc/slurm, the
default path, so jobs find it as on a real compute node. A job cannot rely on SLURM_CONF:
snakemake-executor-plugin-slurm-jobstep 0.6.1 removes every SLURM_* variable except the job ids
before it starts the rule with `srun`, and that srun then fails with "Could not establish a
configuration source".

There is no slurmdbd. `AccountingStorageType=accounting_storage/none` makes `sacct` fail with
"Slurm accounting storage is disabled", so clients query job states with `squeue --states=all`,
and `MinJobAge=3600` keeps finished jobs visible there for an hour. `jobcomp/filetxt` writes one
line per finished job to :attr:`SlurmCluster.jobcomp_log`, the cluster's record of every job.

The node has fake GPUs (`gres/gpu`, type :data:`GPU_MODEL`) backed by character devices that
behave like /dev/null. SLURM accepts and schedules `sbatch --gpus=...` requests for them, but
nothing on the node can compute with them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
SYSTEM_CONF_DIR = Path("/etc/slurm")
PACKAGES = "munge slurmctld slurmd slurm-client"
# Debian installs the daemons to /usr/sbin, which is not on every PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PARTITION = "debug"
GPU_MODEL = "h200"
GPU_COUNT = 2
NULL_DEVICE = (1, 3)  # major and minor number of /dev/null on Linux
DAEMON_STOP_SECONDS = 15


def find_program(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def unavailable_reason() -> str | None:
    """Return why this machine cannot run the cluster, or None when it can."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if find_program(name) is None]
    if missing:
        return f"Slurm programs not found: {', '.join(missing)}; install the Debian packages: apt-get install {PACKAGES}"
    if find_program("unshare") is None:
        return "unshare not found; install the Debian package util-linux"
    if not SYSTEM_CONF_DIR.is_dir():
        return f"{SYSTEM_CONF_DIR} not found; the test cluster mounts its configuration there for the jobs"
    if os.geteuid() != 0:
        return "the one-node Slurm cluster must be started by root: munged runs as user munge, slurmd as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "user munge not found; the Debian package munge creates it"
    return None


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports of 127.0.0.1 that were free a moment ago.

    NOTE: another process can take a port between this call and the daemon's bind. The
    daemon then fails to start, and :meth:`SlurmCluster.start` raises with its log.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


@dataclass
class SlurmJob:
    """One job as `squeue --states=all` reports it."""

    job_id: str
    name: str
    state: str
    comment: str
    tres_per_job: str


class SlurmCluster:
    """munged, slurmctld and slurmd with one node and one partition, all under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.munge_dir = self.root / "munge"
        self.log_dir = self.root / "log"
        self.conf_dir = self.root / "etc"
        self.conf = self.conf_dir / "slurm.conf"
        self.jobcomp_log = self.log_dir / "jobcomp.log"
        self.processes: dict[str, subprocess.Popen] = {}
        self.node_name = ""

    @property
    def env(self) -> dict[str, str]:
        """The calling environment with SLURM_CONF pointing at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SEARCH_PATH}

    def start(self, timeout: float = 60) -> None:
        """Write the configuration, start the three daemons and wait until `srun hostname` runs."""
        self.root.chmod(0o755)  # munged, as user munge, must reach its folder below root
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_munge_key()
        self._write_slurm_conf()

        socket_path = self.munge_dir / "munge.socket"
        self._spawn(
            "munged",
            [
                "--foreground", f"--key-file={self.munge_dir / 'munge.key'}", f"--socket={socket_path}",
                f"--pid-file={self.munge_dir / 'munged.pid'}", f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            user="munge",
        )
        self._wait_until(socket_path.exists, timeout, "munged created no socket")
        self._spawn("slurmctld", ["-D", "-f", str(self.conf)])
        mount_and_start = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        self._spawn(
            "unshare",
            ["--mount", "--propagation", "private", "sh", "-c", mount_and_start, "sh", str(self.conf_dir), str(SYSTEM_CONF_DIR),
             find_program("slurmd"), "-D", "-f", str(self.conf)],
            name="slurmd",
        )
        self._wait_until(lambda: self.node_state() == "idle", timeout, f"node {self.node_name} did not become idle")

        check = self.run(["srun", "-N1", "hostname"], timeout=timeout)
        if check.returncode != 0:
            raise RuntimeError(f"srun -N1 hostname failed on the test cluster: {check.stderr.strip()}\n{self.log_tails()}")

    def stop(self) -> None:
        """Cancel the cluster's jobs, then stop slurmd, slurmctld and munged by their process ids."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:
                self.run(["scancel", "--full", "--user", "root"], timeout=30)
                # A job still running when slurmd stops would leave its slurmstepd behind.
                deadline = time.monotonic() + DAEMON_STOP_SECONDS
                while time.monotonic() < deadline and any(job.state in ("RUNNING", "COMPLETING") for job in self.jobs()):
                    time.sleep(0.5)
            except (RuntimeError, subprocess.SubprocessError) as error:
                # The daemons must stop regardless, and a leftover job step only shows in the logs.
                print(f"cancelling the test cluster's jobs failed: {error}")
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=DAEMON_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=DAEMON_STOP_SECONDS)

    def run(self, command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def node_state(self) -> str:
        result = self.run(["sinfo", "--noheader", "--Node", "--format=%T"], timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    def jobs(self) -> list[SlurmJob]:
        """Return every job that slurmctld still stores, finished ones included (MinJobAge is one hour)."""
        fields = "JobID:|,Name:|,State:|,Comment:|,tres-per-job:|"
        result = self.run(["squeue", "--states=all", "--noheader", f"--Format={fields}"], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
        jobs = []
        for line in result.stdout.splitlines():
            job_id, name, state, comment, tres, *_ = line.split("|")
            jobs.append(SlurmJob(job_id.strip(), name.strip(), state.strip(), comment.strip(), tres.strip()))
        return jobs

    def completion_records(self) -> dict[str, dict[str, str]]:
        """Return the jobcomp/filetxt records by job id: JobState, ExitCode, Name, NodeList and the other fields."""
        records = {}
        if not self.jobcomp_log.exists():
            return records
        for line in self.jobcomp_log.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                records[fields["JobId"]] = fields
        return records

    def log_tails(self, lines: int = 20) -> str:
        """Return the last lines of every daemon log, for error messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*")) + [self.munge_dir / "munged.log"]:
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _write_munge_key(self) -> None:
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        # munged rejects a socket folder that others cannot enter or that others can write.
        self.munge_dir.chmod(0o755)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        os.chown(key, munge.pw_uid, munge.pw_gid)

    def _write_slurm_conf(self) -> None:
        # `slurmd -C` prints the node line slurmd itself would register, with this machine's
        # name, CPUs and memory: "NodeName=vm CPUs=2 ... RealMemory=24105".
        detected = subprocess.run([find_program("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        node_line = next(line for line in detected.splitlines() if line.startswith("NodeName="))
        self.node_name = node_line.split()[0].removeprefix("NodeName=")

        for index in range(GPU_COUNT):
            os.mknod(self.root / f"gpu{index}", 0o666 | stat.S_IFCHR, os.makedev(*NULL_DEVICE))
        self.conf_dir.mkdir(exist_ok=True)
        gpu_files = f"{self.root}/gpu[0-{GPU_COUNT - 1}]"
        (self.conf_dir / "gres.conf").write_text(f"NodeName={self.node_name} Name=gpu Type={GPU_MODEL} File={gpu_files}\n")
        (self.conf_dir / "plugstack.conf").write_text("")  # no SPANK plugins from the system's /etc/slurm

        controller_port, node_port = free_ports(2)
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(exist_ok=True)
        settings = {
            "ClusterName": "sasqtest",
            "SlurmctldHost": f"{self.node_name}(127.0.0.1)",
            "SlurmctldPort": controller_port,
            "SlurmdPort": node_port,
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_dir / 'munge.socket'}",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.log_dir / "slurmctld.log",
            "SlurmdLogFile": self.log_dir / "slurmd.log",
            "PlugStackConfig": self.conf_dir / "plugstack.conf",
            "MailProg": "/bin/true",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "GresTypes": "gpu",
            # No slurmdbd: see the module docstring for how job states and records are kept.
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "JobCompType": "jobcomp/filetxt",
            "JobCompLoc": self.jobcomp_log,
            "MinJobAge": 3600,
            "KillWait": 5,
            "ReturnToService": 2,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(f"{node_line} Gres=gpu:{GPU_MODEL}:{GPU_COUNT} NodeAddr=127.0.0.1 State=UNKNOWN")
        lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, program: str, arguments: list[str], user: str | None = None, name: str | None = None) -> None:
        """Start `program` in the foreground and record it under `name` (default: the program name).

        A program that execs the daemon, as unshare and sh do for slurmd, keeps one process id.
        """
        name = name or program
        log = open(self.log_dir / f"{name}.out", "w")
        with log:
            self.processes[name] = subprocess.Popen(
                [find_program(program), *arguments], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                user=user, group=user, extra_groups=[] if user else None,
            )

    def _wait_until(self, condition, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {process.returncode} during start-up\n{self.log_tails()}")
            time.sleep(0.2)
        raise RuntimeError(f"{message} within {timeout:.0f} s\n{self.log_tails()}")
