"""What launching a job needs to know without importing torch: the launch error, and the CPUs
this process may use. The CLI's parsers and the sweep/SLURM launchers use these, so that
`scalelab config`, `report` or `slurm` do not pay torch's import; `scalelab.distributed`
re-exports both."""

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
