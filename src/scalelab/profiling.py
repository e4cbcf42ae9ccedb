"""torch.profiler over a few training steps: a chrome trace per rank, and what the GPU did in it.

`StepProfiler` wraps N optimizer steps of a run (``train.profile_steps``) and writes
``profile-rank<r>.json`` (open it in Perfetto or chrome://tracing). `gpu_timeline` reads such a
trace: how busy the GPU was, how long it sat idle between kernels waiting for the host, how many
kernels were launched and which took the time -- the question the phase timers cannot answer
(a launch-bound step looks like slow compute there). `benchmarks/gpu.py` uses the same code.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

#: Trace event categories that occupy the GPU (chrome trace of torch.profiler / Kineto).
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_timeline(trace: dict[str, Any], steps: int, top: int = 8) -> dict[str, Any]:
    """GPU busy time, idle gaps and top kernels from a chrome trace of `steps` training steps.

    Busy = the union of kernel / memcpy / memset intervals (overlapping streams count once);
    span = first GPU event start to last GPU event end; idle = span - busy: the time the GPU
    waited for the host between kernels. Launches = CUDA runtime / driver launch calls
    (cudaLaunchKernel, Triton's cuLaunchKernel, cudaGraphLaunch). Two signs of a host that
    waits for the GPU inside the steps: host syncs = the runtime / driver *Synchronize calls
    made before the last launch (the one that ends a profile, after it, is left out), and
    pageable copies = memcpys from or to pageable host memory (a read of a value to the host,
    or an upload CUDA may serialise with the stream; scalelab's batches come from pinned memory).
    """
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict)]
    gpu = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", "?"))
        for e in events
        if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES and "ts" in e
    )
    launches = sum(
        1
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "Launch" in str(e.get("name", ""))
    )
    if not gpu:
        return {"gpu_events": 0, "launches_per_step": launches / max(1, steps)}
    host = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver") and "ts" in e]
    last_launch = max(
        (float(e["ts"]) for e in host if "Launch" in str(e.get("name", ""))), default=-math.inf
    )
    syncs = sum(
        1
        for e in host
        if str(e.get("name", "")).endswith("Synchronize") and float(e["ts"]) < last_launch
    )
    pageable = sum(1 for _, _, name in gpu if "Pageable" in name)
    busy, gaps, cur_s, cur_e = 0.0, [], gpu[0][0], gpu[0][1]
    for s, e, _ in gpu[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = max(e for _, e, _ in gpu) - gpu[0][0]
    per_name: dict[str, list[float]] = {}
    for s, e, name in gpu:
        acc = per_name.setdefault(name, [0.0, 0])
        acc[0] += e - s
        acc[1] += 1
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:top]
    gaps.sort(reverse=True)
    return {
        "gpu_events": len(gpu),
        "gpu_events_per_step": len(gpu) / steps,
        "launches_per_step": launches / steps,
        "span_ms_per_step": span / 1000.0 / steps,
        "gpu_busy_ms_per_step": busy / 1000.0 / steps,
        "gpu_idle_ms_per_step": (span - busy) / 1000.0 / steps,
        "gpu_busy_fraction": busy / span if span > 0 else None,
        "largest_gaps_us": [round(g, 1) for g in gaps[:5]],
        "gaps_over_10us": sum(1 for g in gaps if g > 10.0),
        "host_syncs_per_step": syncs / steps,
        "pageable_copies_per_step": pageable / steps,
        "top_kernels": [
            {"name": n[:120], "ms_per_step": t / 1000.0 / steps, "calls_per_step": c / steps}
            for n, (t, c) in ranked
        ],
    }


def top_host_ops(prof: torch.profiler.profile, steps: int, top: int = 8) -> list[dict[str, Any]]:
    """The operators with the most host (self CPU) time per step."""
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [
        {
            "name": e.key[:120],
            "self_cpu_ms_per_step": e.self_cpu_time_total / 1000.0 / steps,
            "calls_per_step": e.count / steps,
        }
        for e in rows
    ]


def summarize(prof: torch.profiler.profile, steps: int, trace_path: Path) -> dict[str, Any]:
    """Export the chrome trace to `trace_path` (atomically) and summarise it."""
    trace_path = Path(trace_path)
    tmp = trace_path.with_name(f".{trace_path.name}.tmp")
    prof.export_chrome_trace(str(tmp))
    os.replace(tmp, trace_path)
    with trace_path.open(encoding="utf-8") as fh:
        trace = json.load(fh)
    return {
        "profiled_steps": steps,
        "trace": trace_path.name,
        **gpu_timeline(trace, steps),
        "top_host_ops": top_host_ops(prof, steps),
    }


class StepProfiler:
    """Profiles optimizer steps ``[start, start + steps)`` of a run; call `before_step` /
    `after_step` around every step (with the run's step count) and `close` when the steps end
    early. `result` then holds `summarize`'s figures, and the trace is at `trace_path`."""

    def __init__(self, steps: int, start: int, device: torch.device, trace_path: Path) -> None:
        self.steps, self.start, self.trace_path = steps, start, Path(trace_path)
        self.cuda = device.type == "cuda"
        self.result: dict[str, Any] | None = None
        self._prof: torch.profiler.profile | None = None
        self._done = 0
        self.export_s = 0.0  # host time `close` took to stop, write and summarise (not training)

    def before_step(self, step: int) -> None:
        if self.steps and self._prof is None and self.result is None and step == self.start:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=acts)
            self._prof.start()

    def after_step(self) -> bool:
        """Count a profiled step; True when this one ended the profile (the trace was written)."""
        if self._prof is not None:
            self._done += 1
            if self._done >= self.steps:
                return self.close()
        return False

    def close(self) -> bool:
        """Stop, write the trace and summarise it; True if a profile was running."""
        if self._prof is None:
            return False
        if self.cuda:
            torch.cuda.synchronize()  # the profiled steps' kernels finish inside the window
        t0 = time.perf_counter()
        prof, self._prof = self._prof, None
        prof.stop()
        try:  # a rank on another node may not see the run folder rank 0 made
            self.trace_path.parent.mkdir(parents=True, exist_ok=True)
            self.result = summarize(prof, max(1, self._done), self.trace_path)
        except (OSError, ValueError, RuntimeError) as exc:  # a diagnostic must not end the run
            self.result = {"profiled_steps": self._done, "error": f"{type(exc).__name__}: {exc}"}
        self.export_s = time.perf_counter() - t0
        return True
