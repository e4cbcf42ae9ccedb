"""scalelab.profiling: the trace arithmetic, and train.profile_steps end to end on the CPU."""

from __future__ import annotations

import json
import time

import pytest
import torch

from scalelab import profiling


def _x(cat: str, name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_gpu_timeline_unions_overlaps_and_measures_the_gaps() -> None:
    trace = {
        "traceEvents": [
            _x("kernel", "gemm", 0, 10),
            _x("kernel", "softmax", 5, 15),  # overlaps gemm (another stream): counted once
            _x("kernel", "gemm", 30, 10),  # 10 us gap before it
            _x("gpu_memcpy", "Memcpy HtoD", 60, 5),  # 20 us gap before it
            _x("cpu_op", "aten::mm", 0, 100),  # host work: not GPU time
            _x("cuda_runtime", "cudaLaunchKernel", 0, 1),
            _x("cuda_runtime", "cudaLaunchKernel", 1, 1),
            _x("cuda_driver", "cuLaunchKernel", 2, 1),
            _x("cuda_runtime", "cudaGraphLaunch", 3, 1),
            _x("cuda_runtime", "cudaStreamSynchronize", 4, 1),
            {"ph": "M", "name": "process_name"},  # metadata rows are skipped
        ]
    }
    t = profiling.gpu_timeline(trace, steps=2)
    assert t["gpu_events"] == 4 and t["gpu_events_per_step"] == 2
    assert t["launches_per_step"] == 2  # 4 launch calls over 2 steps; the sync is not one
    assert t["span_ms_per_step"] == pytest.approx(65 / 1000 / 2)
    assert t["gpu_busy_ms_per_step"] == pytest.approx((20 + 10 + 5) / 1000 / 2)
    assert t["gpu_idle_ms_per_step"] == pytest.approx(30 / 1000 / 2)
    assert t["gpu_busy_fraction"] == pytest.approx(35 / 65)
    assert t["largest_gaps_us"] == [20.0, 10.0] and t["gaps_over_10us"] == 1
    top = t["top_kernels"]
    assert [k["name"] for k in top] == ["gemm", "softmax", "Memcpy HtoD"]
    assert top[0]["ms_per_step"] == pytest.approx(20 / 1000 / 2) and top[0]["calls_per_step"] == 1
    # the sync at ts 4 precedes no launch (as the one that ends a profile): not inside the steps
    assert t["host_syncs_per_step"] == 0 and t["pageable_copies_per_step"] == 0


def test_gpu_timeline_counts_host_syncs_and_pageable_copies_inside_the_steps() -> None:
    trace = {
        "traceEvents": [
            _x("cuda_runtime", "cudaLaunchKernel", 0, 1),
            _x("kernel", "gemm", 2, 10),
            _x("cuda_runtime", "cudaMemcpyAsync", 3, 1),
            _x("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 12, 1),  # a value read back
            _x("cuda_runtime", "cudaStreamSynchronize", 4, 9),  # ... waited for: inside
            _x("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 14, 1),
            _x("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 15, 1),  # asynchronous: fine
            _x("cuda_driver", "cuLaunchKernel", 20, 1),
            _x("kernel", "softmax", 21, 5),
            _x("cuda_runtime", "cudaDeviceSynchronize", 22, 5),  # ends the profile: left out
        ]
    }
    t = profiling.gpu_timeline(trace, steps=2)
    assert t["host_syncs_per_step"] == 0.5
    assert t["pageable_copies_per_step"] == 1.0


def test_gpu_timeline_without_gpu_events() -> None:
    t = profiling.gpu_timeline({"traceEvents": [_x("cpu_op", "aten::mm", 0, 5)]}, steps=3)
    assert t == {"gpu_events": 0, "launches_per_step": 0.0}


def test_step_profiler_profiles_the_steps_it_was_given(tmp_path) -> None:
    model = torch.nn.Linear(8, 8)
    path = tmp_path / "run" / "profile-rank0.json"  # a folder this rank did not make
    prof = profiling.StepProfiler(2, start=1, device=torch.device("cpu"), trace_path=path)
    ended = []
    for step in range(5):
        prof.before_step(step)
        model(torch.randn(4, 8)).sum().backward()
        ended.append(prof.after_step())
    assert ended == [False, False, True, False, False]  # steps 1 and 2, then the trace
    res = prof.result
    assert res["profiled_steps"] == 2 and res["trace"] == path.name and res["gpu_events"] == 0
    names = [op["name"] for op in res["top_host_ops"]]
    assert any("addmm" in n or "linear" in n for n in names), names
    assert json.loads(path.read_text())["traceEvents"]
    assert prof.close() is False  # nothing left to stop


def test_step_profiler_closed_early_summarises_what_ran(tmp_path) -> None:
    prof = profiling.StepProfiler(10, 0, torch.device("cpu"), tmp_path / "t.json")
    prof.before_step(0)
    torch.randn(3, 3).sum()
    assert prof.after_step() is False
    assert prof.close() is True and prof.result["profiled_steps"] == 1


def test_untimed_lap_counts_in_no_phase() -> None:
    from scalelab.timing import StepTimer

    timer = StepTimer(torch.device("cpu"))
    for _ in range(2):
        timer.lap("data")
        timer.lap("forward")
        timer.end_step()
        time.sleep(0.2)  # e.g. a trace being written
        timer.untimed()
    out = timer.epoch_summary()
    assert out["measured_steps"] == 2
    # the 200 ms sleeps are in no phase (counted, the mean would be >= 100 ms)
    assert out["data_ms"] < 50 and out["step_ms"] < 50
