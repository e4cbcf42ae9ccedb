"""SLURM: an sbatch script that runs one training run over N nodes and survives preemption.

The script is plain SLURM + torchrun, nothing home-made: `srun` starts one torchrun per node, the
torchruns meet at a c10d rendezvous on the job's first node, and each starts the node's ranks.

Preemption and time limits: the job asks for `--signal=B:USR1@<seconds>` (SIGUSR1 to the batch
shell that long before the time limit) and `--requeue`. On SIGUSR1 the batch shell sends SIGTERM
to the job step (`scancel --signal=TERM <job>`; `kill` on srun would make srun kill the tasks).
Every rank then checkpoints after the same step and exits (scalelab.checkpoint.StopSignals); the
batch shell requeues the job (`scontrol requeue`, at most --max-requeues times) and the next
start continues with `train.resume=auto`. When SLURM preempts the job it sends SIGTERM to the
step (under a partition's GraceTime, to the step only): the ranks checkpoint the same way, and
the batch shell, seeing the job's PreemptTime, requeues it too (a job that exits within its
grace time is otherwise FAILED, not requeued: measured on SLURM 22.05). A SIGTERM without a
preemption, such as the user's `scancel <job>`, checkpoints but does not requeue (that would
undo the cancel); `--resume` continues such a run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scalelab.arguments import ArgumentParser, folder
from scalelab.config import ConfigError, load_config
from scalelab.host import LaunchError

# set by the script itself: a user value would point the job at another run folder
_RESERVED_OVERRIDES = ("output.dir", "output.run_name", "train.resume")


# SLURM's --time forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; or no limit
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_NO_LIMIT = ("unlimited", "infinite", "-1", "0")  # sbatch reads --time=0 as no limit
# options the script sets itself, each for a reason (see render_sbatch): another value would break
# the rendezvous, the log, the requeue or the checkpoint signal; the ones with a flag name it
_SCRIPT_OPTIONS = {
    "--nodes": "--nodes", "-N": "--nodes", "--ntasks-per-node": None, "--ntasks": None,
    "-n": None, "--cpus-per-task": "--cpus-per-task", "-c": "--cpus-per-task",
    "--gpus-per-node": "--gpus-per-node", "--output": None, "-o": None, "--open-mode": None,
    "--requeue": None, "--no-requeue": None, "--signal": "--signal-seconds", "--chdir": None,
    "-D": None, "--time": "--time", "-t": "--time", "--partition": "--partition",
    "-p": "--partition", "--account": "--account", "-A": "--account",
}  # fmt: skip
# options no job of one run may take, and why
_REFUSED_OPTIONS = {
    "--array": "every task of the array would train into the one run folder at once; submit "
    "one job per run (scalelab slurm --run-name)",
}
_REFUSED_OPTIONS["-a"] = _REFUSED_OPTIONS["--array"]


def time_limit_s(text: str) -> float | None:
    """Seconds in a SLURM --time value; None for no limit. ValueError for what SLURM refuses."""
    if text.strip().lower() in _NO_LIMIT:
        return None
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise ValueError(text)
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # days-hours[:minutes[:seconds]]
        return ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
    if third is not None:  # hours:minutes:seconds
        return (first * 60 + second) * 60 + third
    return first * 60 + (second or 0)  # minutes[:seconds]


def _option_name(arg: str) -> str:
    """'--mem=4G' -> '--mem', '--mem 4G' -> '--mem', '-J x' / '-Jx' -> '-J'."""
    word = (arg.split() or [arg])[0]
    if word.startswith("--"):
        return word.split("=", 1)[0]
    return word[:2]


class SlurmError(LaunchError):
    """The job cannot be written or submitted (one line; the CLI prints it and exits 2)."""


@dataclass
class SlurmJob:
    """One training run as a SLURM batch job (see `scalelab slurm --help` for each field)."""

    config: Path
    run_name: str
    out_dir: Path
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    signal_seconds: int = 120
    max_requeues: int = 3
    python: str = sys.executable
    sbatch_args: list[str] = field(default_factory=list)
    resume: bool = False  # the run folder may already hold this run: continue it
    workdir: Path = field(default_factory=Path.cwd)  # the job's working directory

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def cpus(self) -> int:
        """CPUs per node for the one srun task (torchrun and all its ranks)."""
        return self.cpus_per_task or self.procs_per_node

    @property
    def script_path(self) -> Path:
        return self.out_dir / "slurm" / f"{self.run_name}.sbatch"

    @property
    def log_pattern(self) -> str:
        """sbatch's --output pattern: %j is SLURM's job id; a literal % is written %%."""
        folder = str(self.out_dir / "slurm").replace("%", "%%")
        return f"{folder}/{self.run_name.replace('%', '%%')}-%j.out"

    def log_path(self, job_id: str) -> Path:
        return self.out_dir / "slurm" / f"{self.run_name}-{job_id}.out"


# The batch script's port probe: the first port from argv[1] on (wrapping within 20000-31999,
# 64 tries) that this host can bind; argv[1] itself when none can.
_FREE_PORT = """import socket, sys
first = int(sys.argv[1])
for i in range(64):
    port = 20000 + (first - 20000 + i) % 12000
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            continue
    print(port)
    break
else:
    print(first)"""


def render_sbatch(job: SlurmJob) -> str:
    """The batch script for `job` (bash; every line explained in the script's comments)."""
    q = shlex.quote
    sbatch = [
        f"--job-name={q('scalelab-' + job.run_name)}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",  # one torchrun per node; it starts the node's ranks
        f"--cpus-per-task={job.cpus}",
        f"--output={q(job.log_pattern)}",
        "--open-mode=append",  # a requeued job appends to the same log
        "--requeue",
        f"--signal=B:USR1@{job.signal_seconds}",
        # relative paths in overrides mean what they meant where the script was written
        f"--chdir={q(str(job.workdir))}",
    ]
    if job.gpus_per_node:
        sbatch.append(f"--gpus-per-node={job.gpus_per_node}")
    if job.time:
        sbatch.append(f"--time={q(job.time)}")
    if job.partition:
        sbatch.append(f"--partition={q(job.partition)}")
    if job.account:
        sbatch.append(f"--account={q(job.account)}")
    sbatch += job.sbatch_args
    threads = max(1, job.cpus // job.procs_per_node)
    # the script's own variables, filled in at run time; every other word is quoted, so no user
    # value (a path, an override) is ever expanded by the shell
    rendezvous = '--nnodes="$SLURM_NNODES" --rdzv-backend=c10d --rdzv-endpoint="$head_addr:$port" --rdzv-id="$SLURM_JOB_ID"'
    train = [
        "-m", "scalelab", "train", "--config", str(job.config),
        f"output.dir={job.out_dir}", f"output.run_name={job.run_name}", "train.resume=auto",
        *job.overrides,
    ]  # fmt: skip
    train_cmd = (
        f"{q(job.python)} -m torch.distributed.run {rendezvous} "
        f"--nproc-per-node={job.procs_per_node} {shlex.join(train)}"
    )
    lines = [
        "#!/bin/bash",
        f"# Written by `scalelab slurm` for run {job.run_name} ({job.world_size} ranks = "
        f"{job.nodes} node(s) x {job.procs_per_node}). Submit with: sbatch {q(str(job.script_path))}",
        *(f"#SBATCH {a}" for a in sbatch),
        "",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "# the address SLURM itself reaches that node by: a node name need not resolve as a host",
        'head_addr=$(scontrol -o show node "$head_node" 2>/dev/null | tr " " "\\n" | sed -n "s/^NodeAddr=//p")',
        "head_addr=${head_addr:-$head_node}",
        "# rendezvous port, distinct per job, below Linux's ephemeral ports (32768 and up); on the",
        "# head node, where this script runs, the first of it and the next 63 that is free (with a",
        "# port another process listens on, torchrun's rendezvous would join that process instead)",
        "port=$((20000 + SLURM_JOB_ID % 12000))",
        'if [ "${SLURMD_NODENAME:-}" = "$head_node" ]; then',
        f'    port=$({q(job.python)} -c {q(_FREE_PORT)} "$port" 2>/dev/null || echo "$port")',
        "fi",
        f"export OMP_NUM_THREADS={threads}",
        "# torchrun kills its ranks this long after passing them a SIGTERM (its default: 30 s);",
        "# they poll for a stop every few seconds and then checkpoint",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={job.signal_seconds}",
        'echo "scalelab: job $SLURM_JOB_ID start ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST,'
        ' rendezvous $head_addr:$port"',
        "",
        "# SIGUSR1 (time limit near) or SIGTERM (preemption, scancel): every rank checkpoints and",
        '# stops. scancel signals the job step (torchrun and its ranks), not this shell; "kill" on',
        "# srun would make srun kill the tasks at once. (On a SIGTERM SLURM signals the step too, and",
        "# a job it is ending no longer takes signals: scancel's complaint is dropped there.)",
        'stop_signal=""',
        "on_signal() {",
        "    # the first signal decides: a time limit reached while the ranks checkpoint after",
        "    # SIGUSR1 (SLURM's SIGTERM) still requeues",
        '    stop_signal="${stop_signal:-$1}"',
        '    echo "scalelab: SIG$1 received: asking every rank to checkpoint and stop"',
        '    if [ "$1" = TERM ]; then scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null;'
        ' else scancel --signal=TERM "$SLURM_JOB_ID"; fi',
        "}",
        "trap 'on_signal USR1' USR1",
        "trap 'on_signal TERM' TERM",
        "",
        # srun no longer passes --cpus-per-task on (SLURM >= 22.05): give it explicitly
        "# --export=ALL: this script's own exports reach the ranks even when the job was",
        "# submitted with --export=NONE (SBATCH_EXPORT=NONE), which srun would inherit",
        f'srun --kill-on-bad-exit=1 --export=ALL --cpus-per-task="$SLURM_CPUS_PER_TASK" {train_cmd} &',
        "step=$!",
        'wait "$step"; code=$?',
        "# a trapped signal interrupts wait: wait again until the step has really ended",
        'while kill -0 "$step" 2>/dev/null; do wait "$step"; code=$?; done',
        "# the step may have ended while a trap ran: the interrupted wait's code (128 + the",
        "# signal) is then not the step's, which bash keeps for one more wait",
        'if [ "$code" -gt 128 ]; then wait "$step" 2>/dev/null; last=$?; [ "$last" -eq 127 ] || code=$last; fi',
        "# SLURM preempting the job (PreemptTime set; under a GraceTime it signals only the step,",
        "# and a job that then exits is FAILED, not requeued) and the time limit requeue it. Other",
        "# SIGTERMs do not (the user's scancel: a requeue would undo it), nor a finished step.",
        "# (SLURM clears PreemptTime when it requeues: a later scancel is not taken for one.)",
        'preempted=""',
        'if scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | grep -q "PreemptTime=[0-9]"; then',
        "    preempted=1",
        "fi",
        'if [ "$code" -eq 0 ]; then',
        "    :",
        'elif [ "$stop_signal" = TERM ] && [ -z "$preempted" ]; then',
        '    echo "scalelab: stopped on SIGTERM without a preemption (e.g. scancel), not requeued;'
        ' submit again with --resume to continue from the checkpoint"',
        'elif [ -n "$stop_signal$preempted" ]; then',
        f'    if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {job.max_requeues} ]; then',
        '        echo "scalelab: requeueing job $SLURM_JOB_ID${preempted:+ (preempted)}; the run'
        ' resumes from its checkpoint"',
        '        scontrol requeue "$SLURM_JOB_ID"',
        "    else",
        f'        echo "scalelab: stopped after {job.max_requeues} requeues; resubmit to continue"',
        "    fi",
        "fi",
        'exit "$code"',
        "",
    ]
    return "\n".join(lines)


def check_job(job: SlurmJob) -> None:
    """Refuse a job that could never run, before anything is written or submitted."""
    for name, value in (("--nodes", job.nodes), ("--procs-per-node", job.procs_per_node)):
        if value < 1:
            raise SlurmError(f"{name} must be >= 1, got {value}")
    if job.gpus_per_node < 0:
        raise SlurmError(f"--gpus-per-node must be >= 0, got {job.gpus_per_node}")
    if job.gpus_per_node and job.procs_per_node > job.gpus_per_node:
        raise SlurmError(
            f"--procs-per-node {job.procs_per_node} > --gpus-per-node {job.gpus_per_node}: "
            "two ranks would share one GPU"
        )
    if job.cpus_per_task is not None and job.cpus_per_task < job.procs_per_node:
        raise SlurmError(
            f"--cpus-per-task {job.cpus_per_task} < --procs-per-node {job.procs_per_node}: "
            "give every rank at least one CPU"
        )
    if job.signal_seconds < 1 or job.max_requeues < 0:
        raise SlurmError("--signal-seconds must be >= 1 and --max-requeues >= 0")
    # An #SBATCH line ends at a newline: what follows one would run as a shell command.
    for name, value in (
        ("--time", job.time), ("--partition", job.partition), ("--account", job.account),
        ("--run-name", job.run_name), ("--out", str(job.out_dir)),
        ("working directory", str(job.workdir)),
        *(("--sbatch-arg", a) for a in job.sbatch_args), *(("override", o) for o in job.overrides),
    ):  # fmt: skip
        if value and any(c in value for c in "\n\r\0"):
            raise SlurmError(f"{name} {value!r}: contains a line break or NUL")
    if not job.python.strip():  # the script ran srun '' -m torch.distributed.run
        raise SlurmError("--python is empty: give the python of the compute nodes")
    if job.time is not None:
        try:
            limit = time_limit_s(job.time)
        except ValueError:
            raise SlurmError(
                f"--time {job.time!r}: not a SLURM time limit (minutes, MM:SS, HH:MM:SS, "
                "D-HH, D-HH:MM or D-HH:MM:SS)"
            ) from None
        if limit is not None and limit <= job.signal_seconds:
            raise SlurmError(
                f"--time {job.time!r} is not longer than --signal-seconds {job.signal_seconds}: "
                "the checkpoint signal would come before any training"
            )
    for arg in job.sbatch_args:
        name = _option_name(arg.strip())
        if not name.startswith("-") or name in ("-", "--"):
            raise SlurmError(f"--sbatch-arg {arg!r}: not an sbatch option (e.g. --mem=16G)")
        # sbatch reads every word of an #SBATCH line: a second option would pass unchecked
        # ("--nice -5" and --comment="a -b" hold none)
        try:
            words = shlex.split(arg)
        except ValueError:  # an unclosed quote
            words = arg.split()
        if any(re.match(r"--?[A-Za-z]", word) for word in words[1:]):
            raise SlurmError(
                f"--sbatch-arg {arg!r}: one sbatch option per --sbatch-arg (repeat the flag)"
            )
        if name in _REFUSED_OPTIONS:
            raise SlurmError(f"--sbatch-arg {arg!r}: {_REFUSED_OPTIONS[name]}")
        if name in _SCRIPT_OPTIONS:
            flag = _SCRIPT_OPTIONS[name]
            instead = f"use scalelab's {flag}" if flag else "it would break the job"
            raise SlurmError(f"--sbatch-arg {arg!r}: the script sets {name} itself ({instead})")
    if "/" in job.run_name or job.run_name in ("", ".", ".."):
        raise SlurmError(f"--run-name {job.run_name!r}: must be a folder name, without '/'")
    for item in job.overrides:
        if item.partition("=")[0].strip() in _RESERVED_OVERRIDES:
            raise SlurmError(f"override '{item}' is set by the job itself; use --out/--run-name")
    from scalelab.checkpoint import holds_run

    run_dir = job.out_dir / job.run_name
    if holds_run(run_dir) and not job.resume:
        # the job itself always resumes (a requeued job must), so a new job would silently
        # continue the old run, or find it finished and train nothing
        raise SlurmError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
            "--run-name or --out"
        )
    try:
        load_config(job.config, job.overrides).validate(world_size=job.world_size)
    except ConfigError as exc:
        raise SlurmError(str(exc)) from None


#: squeue states of a job that has ended (squeue lists them briefly, or with --states=all).
_ENDED_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})  # fmt: skip


def job_name(job: SlurmJob) -> str:
    """The job's name in the queue: ours, or the last --job-name/-J of --sbatch-arg."""
    name = f"scalelab-{job.run_name}"
    for arg in job.sbatch_args:  # "--job-name=x", "--job-name x", "-J x", "-Jx"
        if m := re.fullmatch(r"\s*(?:--job-name(?:=|\s+)|-J\s*)(\S.*?)\s*", arg):
            try:  # sbatch takes -J "a b" as the name a b: squeue lists it without the quotes
                name = " ".join(shlex.split(m.group(1)))
            except ValueError:  # an unclosed quote: as written
                name = m.group(1)
    return name


def queued_jobs(job: SlurmJob, *, required: bool) -> list[tuple[str, str]]:
    """(job id, state) of the jobs in the queue, pending or running, that run this job's script,
    and so write its run folder. ``required``: a failing or missing squeue is a SlurmError;
    otherwise it gives [] (a script only written, maybe on a machine without SLURM)."""
    if shutil.which("squeue") is None:
        if required and shutil.which("sbatch") is not None:  # without sbatch, submit says so
            raise SlurmError(
                "squeue not found on this machine: cannot check that no job of this run is "
                "queued; use --no-submit to only write the script"
            )
        return []
    name = job_name(job)
    # --name takes a comma-separated list: a name holding a comma lists every job instead
    by_name = [] if "," in name else [f"--name={name}"]
    cmd = ["squeue", "--noheader", *by_name, "--format=%i|%T|%o"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if required:
            raise SlurmError(f"cannot list the queue to check this run's jobs ({exc})") from None
        return []
    if res.returncode != 0:
        if required:
            msg = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise SlurmError(f"squeue failed, so this run's jobs cannot be checked: {msg}")
        return []
    mine = job.script_path.resolve()
    found = []
    for line in res.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, command = rest.partition("|")
        state = state.strip().upper()
        # %o: the batch script, as an absolute path (sbatch resolves a relative one)
        if state in _ENDED_STATES or not command.strip():
            continue
        if Path(command.strip()).resolve() == mine:
            found.append((job_id.strip(), state))
    return found


def check_not_queued(job: SlurmJob, *, required: bool = True) -> None:
    """Refuse a second job for a run whose first is still pending or running: both would train
    into the same run folder (each resumes the other's checkpoints and overwrites its files)."""
    found = queued_jobs(job, required=required)
    if found:
        ids = ", ".join(f"{i} ({state.lower()})" for i, state in found)
        raise SlurmError(
            f"{job.out_dir / job.run_name}: SLURM job {ids} of this run is still queued or "
            "running, and a second job would train into the same run folder at the same time; "
            f"wait for it to end (or scancel {found[0][0]}), or choose another --run-name or --out"
        )


@contextlib.contextmanager
def submission_lock(run_dir: Path) -> Iterator[None]:
    """Held from the queue check to the submission: two `scalelab slurm` for one run folder on
    this machine go one after the other, so the second sees the first's job in the queue (two
    squeue checks at the same moment would both find none). A lock file in the temp folder, not
    the run's: a refused submission writes nothing there. Without a usable temp folder, the
    queue check alone."""
    key = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    try:
        fh = open(Path(tempfile.gettempdir()) / f"scalelab-slurm-{key}.lock", "a")  # noqa: SIM115
    except OSError:
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another scalelab slurm submitting {run_dir} ...", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_script(job: SlurmJob) -> Path:
    from scalelab.checkpoint import atomic_write_text

    check_job(job)
    try:
        job.script_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job.script_path, render_sbatch(job))
        job.script_path.chmod(0o755)
    except OSError as exc:
        raise SlurmError(f"cannot write {job.script_path} ({exc})") from None
    return job.script_path


def submit(script: Path) -> str:
    """`sbatch --parsable script`; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "sbatch not found on this machine; use --no-submit to only write the script"
        )
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SlurmError(f"sbatch refused {script}: {msg}")
    return res.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="scalelab slurm",
        description="Write (and submit) an sbatch script that trains one run on N nodes with "
        "srun + torchrun, checkpoints on SIGUSR1/SIGTERM and requeues itself after SIGUSR1 or a preemption.",
    )
    p.add_argument("--config", required=True, help="preset name or YAML path")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="0 = CPU nodes (gloo)")
    p.add_argument(
        "--procs-per-node", type=int, default=None, help="ranks per node (default: GPUs, or 1)"
    )
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node (default: ranks)")
    p.add_argument("--time", help="time limit, e.g. 02:00:00")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument(
        "--signal-seconds", type=int, default=120, help="SIGUSR1 this long before the time limit"
    )
    p.add_argument("--max-requeues", type=int, default=3)
    p.add_argument("--out", type=folder, default="experiments", help="output.dir of the run")
    p.add_argument("--run-name", help="output.run_name (default: <preset>-ws<ranks>)")
    p.add_argument("--python", default=sys.executable, help="python on the compute nodes")
    p.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        help="one extra #SBATCH option, repeatable; write it with '=' as the option starts with "
        "'-': --sbatch-arg=--mem=16G",
    )
    p.add_argument("--no-submit", action="store_true", help="only write the script")
    p.add_argument(
        "--resume",
        action="store_true",
        help="the run folder already holds this run: continue it (refused otherwise)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides like train.epochs=5")
    return p


def slurm_main(argv: list[str]) -> int:
    """CLI entry point for `scalelab slurm`; returns the process exit code."""
    from scalelab.cli import find_config

    args = _parser().parse_args(argv)
    try:
        try:
            config = find_config(args.config).resolve()
            preset = load_config(config, args.overrides).name
        except ConfigError as exc:
            raise SlurmError(str(exc)) from None
        procs = (
            args.procs_per_node if args.procs_per_node is not None else max(1, args.gpus_per_node)
        )
        job = SlurmJob(
            config=config,
            run_name=args.run_name or f"{preset}-ws{args.nodes * procs}",
            out_dir=Path(args.out).resolve(),
            overrides=args.overrides,
            nodes=args.nodes,
            procs_per_node=procs,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            time=args.time,
            partition=args.partition,
            account=args.account,
            signal_seconds=args.signal_seconds,
            max_requeues=args.max_requeues,
            python=args.python,
            sbatch_args=args.sbatch_arg,
            resume=args.resume,
        )
        check_job(job)
        with submission_lock(job.out_dir / job.run_name):
            # before the script is rewritten: a written script may still be submitted by hand
            check_not_queued(job, required=not args.no_submit)
            script = write_script(job)
            print(f"wrote {script}")
            if args.no_submit:
                return 0
            job_id = submit(script)
    except SlurmError as exc:
        print(f"scalelab: error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}: run {job.out_dir / job.run_name}")
    print(f"log: {job.log_path(job_id)}")
    return 0
