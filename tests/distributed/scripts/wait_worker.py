"""torchrun worker for `all_reduce_waiting`: rank 1 reaches each all-reduce late (a peer slower
than the spin window on some calls), rank 0 waits spinning or blocking; prints each rank's
sums and how long rank 0 waited."""

from __future__ import annotations

import json
import sys
import time

import torch

from scalelab.config import DistributedConfig
from scalelab.distributed import SPIN_WAIT_S, all_reduce_waiting, cleanup, init_distributed

spin = sys.argv[1] == "spin"
env = init_distributed(DistributedConfig(backend="gloo"))
late_s = [0.0, 0.01, 3 * SPIN_WAIT_S]  # on time, inside the spin window, beyond it
sums, waited = [], []
for late in late_s:
    t = torch.full((1000,), float(env.rank + 1))
    if env.rank == 1:
        time.sleep(late)
    t0 = time.perf_counter()
    all_reduce_waiting(t, spin)
    waited.append(time.perf_counter() - t0)
    sums.append(float(t[0]))
print(json.dumps({"rank": env.rank, "sums": sums, "waited_s": waited, "late_s": late_s}))
cleanup()
