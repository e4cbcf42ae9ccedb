"""The launch environment, read without importing torch: the one place that reads
RANK/LOCAL_RANK/WORLD_SIZE/SLURM_* (the layout of ranks; `scalelab.distributed` joins the group
it describes), the CPUs this process may use, and the launch error. The CLI and the sweep/SLURM
launchers use these, so that `scalelab config`, `report` or `predict` do not pay torch's import,
and the CLI's error path can tell rank 0 before (or without) torch."""

from __future__ import annotations

import os
import re


class LaunchError(RuntimeError):
    """The distributed environment cannot run this job (one clear line for the user)."""

    every_rank = False  # printed by rank 0 only, unless each rank has its own to say


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS/Windows have no sched_getaffinity
        return os.cpu_count() or 1


def omp_threads_error(num_threads: int) -> str | None:
    """Why $OMP_NUM_THREADS cannot size this run's thread pool (None: it can, or is not used).

    Checked before torch is imported where possible: libgomp then only warns, on its own line,
    and torch takes every core, so the run would not be the one asked for. A count, or OpenMP's
    list of counts per nesting level ("4,2"), is fine; ``num_threads`` > 0 overrides it."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if num_threads or not omp or re.fullmatch(r"\s*[1-9][0-9]*(\s*,\s*[1-9][0-9]*)*\s*", omp):
        return None
    return (
        f"OMP_NUM_THREADS={omp!r} is not a whole number >= 1: set it to the threads per rank, or "
        "unset it (or set train.num_threads)"
    )


def env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise LaunchError(
                    f"environment variable {name}={value!r} is not a whole number (set by "
                    "torchrun or SLURM; unset it to run one process)"
                ) from None
    return default


def check_layout(world_size: int, rank: int, local_rank: int, local_world_size: int) -> None:
    """The launcher's numbers must describe a layout that exists, or the rendezvous would wait
    for a rank that never comes (a timeout after minutes) or index past the world."""
    if world_size < 1 or local_world_size < 1:
        raise LaunchError(
            f"world size {world_size}, {local_world_size} on this node: both must be >= 1 "
            "(WORLD_SIZE and LOCAL_WORLD_SIZE, or SLURM's task counts)"
        )
    if not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise LaunchError(
            f"rank {rank} (local rank {local_rank}) is outside world size {world_size} "
            f"({local_world_size} on this node): ranks run 0..size-1 (RANK/LOCAL_RANK, or "
            "SLURM_PROCID/SLURM_LOCALID)"
        )


def _tasks_on_this_node(spec: str) -> int | None:
    """This node's entry of SLURM_STEP_TASKS_PER_NODE ("2(x3),1": 2 on nodes 0-2, 1 on node 3),
    by SLURM_NODEID; None when the spec does not parse."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            return None
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = env_int("SLURM_NODEID", default=0)
    return counts[node] if 0 <= node < len(counts) else counts[0]


def launch_layout() -> tuple[int, int, int, int]:
    """(world size, rank, local rank, local world size) from torchrun's variables, else a plain
    srun step's; one process otherwise."""
    slurm = slurm_step()
    world_size = env_int("WORLD_SIZE", default=slurm.get("world_size", 1))
    rank = env_int("RANK", default=slurm.get("rank", 0))
    local_rank = env_int("LOCAL_RANK", default=slurm.get("local_rank", 0))
    local_world_size = env_int(
        "LOCAL_WORLD_SIZE", default=slurm.get("local_world_size", world_size)
    )
    return world_size, rank, local_rank, local_world_size


def slurm_step() -> dict[str, int]:
    """World size, rank, local rank and local world size of a task that plain `srun` started;
    {} elsewhere. Only a job step has SLURM_STEP_NUM_TASKS: an sbatch or salloc shell also has
    SLURM_NTASKS and SLURM_PROCID, but it is one process, not one rank of many."""
    if not os.environ.get("SLURM_STEP_NUM_TASKS"):
        return {}
    per_node = _tasks_on_this_node(os.environ.get("SLURM_STEP_TASKS_PER_NODE", ""))
    world = env_int("SLURM_STEP_NUM_TASKS", default=1)
    return {
        "world_size": world,
        "rank": env_int("SLURM_PROCID", default=0),
        "local_rank": env_int("SLURM_LOCALID", default=0),
        "local_world_size": per_node if per_node is not None else world,
    }


def count_nodes(world_size: int, local_world_size: int) -> int:
    """Nodes of the job: torchrun's agents (one per node, GROUP_WORLD_SIZE) or a plain srun
    step's nodes. Nodes may run unequal numbers of ranks ("2(x2),1"), which world_size //
    local_world_size, the fallback, would miscount."""
    nodes = env_int("GROUP_WORLD_SIZE", default=0)
    if not nodes and os.environ.get("SLURM_STEP_NUM_TASKS") and "LOCAL_RANK" not in os.environ:
        nodes = env_int("SLURM_STEP_NUM_NODES", default=0)
    if 1 <= nodes <= world_size:
        return nodes
    return max(1, world_size // max(1, local_world_size))


def is_main_process() -> bool:
    """Rank 0 (or no launcher); usable before the process group exists, e.g. to print errors once
    (and every process, when the launcher's variables are broken, to say so)."""
    try:
        layout = launch_layout()
        check_layout(*layout)
    except LaunchError:  # not a number, or a rank outside the world
        return True
    return layout[1] == 0


def no_gpu_visible() -> bool:
    """Whether this process surely runs on the CPU, told without torch: CUDA_VISIBLE_DEVICES hides
    every GPU, or the machine has no NVIDIA device node. (A GPU run keeps torch's own pool size,
    whatever OMP_NUM_THREADS says: see `omp_threads_error`'s callers.)"""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return True
    try:
        return not any(re.fullmatch(r"nvidia\d+", name) for name in os.listdir("/dev"))
    except OSError:
        return False
