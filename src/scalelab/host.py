"""What launching a job needs to know without importing torch: the launch error, and the CPUs
this process may use. The CLI's parsers and the sweep/SLURM launchers use these, so that
`scalelab config`, `report` or `slurm` do not pay torch's import; `scalelab.distributed`
re-exports both."""

from __future__ import annotations

import os


class LaunchError(RuntimeError):
    """The distributed environment cannot run this job (one clear line for the user)."""

    every_rank = False  # printed by rank 0 only, unless each rank has its own to say


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS/Windows have no sched_getaffinity
        return os.cpu_count() or 1
