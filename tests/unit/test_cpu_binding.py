"""distributed.bind_cpus: each local rank of a CPU run gets its own slice of the allowed CPUs.

Binding changes the calling process, so every case runs in a fresh interpreter: the test process
keeps its own affinity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs Linux sched_setaffinity"
)

_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    import torch
    from scalelab.distributed import DistEnv, bind_cpus

    local_rank, local_world, threads, device = sys.argv[1:5]
    stop = threading.Event()
    early = threading.Thread(target=stop.wait)  # a thread started before the binding
    early.start()
    env = DistEnv(rank=int(local_rank), local_rank=int(local_rank), world_size=int(local_world),
                  local_world_size=int(local_world), device=torch.device(device))
    bound = bind_cpus(env, int(threads))
    per_thread = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
    stop.set()
    early.join()
    print(json.dumps({"bound": bound, "per_thread": per_thread}))
    """
)


def _bind(local_rank: int, local_world: int, threads: int, device: str = "cpu") -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(local_rank), str(local_world), str(threads), device],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 CPUs")
def test_each_local_rank_gets_its_own_cpus_on_every_thread() -> None:
    for rank in (0, 1):
        out = _bind(rank, 2, 1)
        assert out["bound"] == [ALLOWED[rank]]
        # the thread started before the binding is bound too, not only the caller
        assert len(out["per_thread"]) >= 2
        assert all(cpus == [ALLOWED[rank]] for cpus in out["per_thread"].values())


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 CPUs")
def test_nothing_is_bound_where_the_slices_do_not_fit_or_there_is_no_cpu_run() -> None:
    cases = [
        (1, 2, len(ALLOWED)),  # 2 ranks x all CPUs each: would overlap
        (0, 1, 1),  # one rank per node: nothing to keep apart
        (1, 2, 1, "cuda"),  # a GPU run
    ]
    for case in cases:
        out = _bind(*case)
        assert out["bound"] is None, case
        assert all(cpus == ALLOWED for cpus in out["per_thread"].values()), case
