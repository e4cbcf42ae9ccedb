"""A private one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd from
Debian (`make test-deps` installs them), a slurm.conf in a temp folder, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NEEDED = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why a local cluster cannot be started here, or None."""
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        return f"SLURM/munge not installed ({', '.join(missing)} missing)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_munged() -> None:
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return  # already running
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(key, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", shutil.which("munged")], check=True)
    for _ in range(50):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("munged did not come up")


CONF = """\
ClusterName=scalelab-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
# a job in partition "urgent" preempts the jobs of "test": SIGTERM, SIGKILL after GraceTime,
# then SLURM requeues them (a job submitted with --requeue)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={host} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
"""


class LocalSlurm:
    """Start with `start()`, stop with `stop()`; `env` holds SLURM_CONF for the clients."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        # no GPU for the jobs either: the test's ranks run gloo on the CPU
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "CUDA_VISIBLE_DEVICES": ""}
        self._procs: list[subprocess.Popen] = []

    def start(self) -> None:
        _ensure_munged()
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            CONF.format(
                host=host,
                ctld_port=_free_port(),
                d_port=_free_port(),
                root=self.root,
                cpus=os.cpu_count() or 1,
            )
        )
        for daemon in ("slurmctld", "slurmd"):
            log = (self.root / f"{daemon}.out").open("w")
            self._procs.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(self.conf)],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.time() + 60
        while time.time() < deadline:
            res = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            if res.returncode == 0 and res.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"local SLURM did not come up; see {self.root}/*.log")

    def stop(self) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self._procs.clear()

    def scontrol_job(self, job_id: str) -> dict[str, str]:
        res = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True, text=True
        )
        fields = {}
        for item in res.stdout.split():
            key, _, value = item.partition("=")
            fields.setdefault(key, value)
        return fields

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=True)
