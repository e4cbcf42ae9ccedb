"""torchrun worker for `all_reduce_waiting` and `barrier`: rank 1 reaches each late (a peer slower
than the spin window on some calls), rank 0 waits spinning or blocking; writes each rank's
sums and waits into OUT/rank<r>.json (argv: spin|block OUT)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from scalelab.config import DistributedConfig
from scalelab.distributed import (
    SPIN_WAIT_S,
    all_reduce_waiting,
    barrier,
    cleanup,
    init_distributed,
)

spin = sys.argv[1] == "spin"
env = init_distributed(DistributedConfig(backend="gloo"))
late_s = [0.0, 0.01, 3 * SPIN_WAIT_S]  # on time, inside the spin window, beyond it
sums, waited, met = [], [], []
for late in late_s:
    # the calibration's barrier: rank 0 leaves only once the late rank has arrived
    if env.rank == 1:
        time.sleep(late)
    t0 = time.perf_counter()
    barrier(env, spin=spin)
    met.append(time.perf_counter() - t0)
for late in late_s:
    t = torch.full((1000,), float(env.rank + 1))
    if env.rank == 1:
        time.sleep(late)
    t0 = time.perf_counter()
    all_reduce_waiting(t, spin)
    waited.append(time.perf_counter() - t0)
    sums.append(float(t[0]))
mine = {"rank": env.rank, "sums": sums, "waited_s": waited, "met_s": met, "late_s": late_s}
(Path(sys.argv[2]) / f"rank{env.rank}.json").write_text(json.dumps(mine))
cleanup()
