"""benchmarks/gpu.py's own logic: run order, the time budget and the profiler-trace arithmetic.

The GPU figures themselves need a GPU; these check what decides and computes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
gpu = pytest.importorskip("gpu")


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
    t = gpu.gpu_timeline(trace, steps=2)
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


def test_gpu_timeline_without_gpu_events() -> None:
    t = gpu.gpu_timeline({"traceEvents": [_x("cpu_op", "aten::mm", 0, 5)]}, steps=3)
    assert t == {"gpu_events": 0, "launches_per_step": 0.0}


def test_plan_runs_the_target_configurations_first() -> None:
    jobs = gpu.plan(tiny=False, cuda=True, only=[])
    first = [(case, v.label) for case, _, _, v in jobs[:3]]
    assert first == [
        ("ag_news_small-b32", "bf16 reduce-overhead pad%16"),
        ("ag_news_large-b128", "bf16 default pad%16"),
        ("distilbert-seq256-b128", "bf16 default pad%16"),
    ]
    assert {case for case, *_ in jobs} == {c for c, _, _ in gpu.cases(False)}
    priorities = [v.priority for *_, v in jobs]
    assert priorities == sorted(priorities)
    only = gpu.plan(tiny=False, cuda=True, only=["distilbert"])
    assert {case for case, *_ in only} == {"distilbert-seq256-b128", "distilbert-seq128-b128"}


def test_spent_budget_skips_variants_and_marks_the_result_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--budget-s", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["cases"] == {}
    import torch

    assert len(res["skipped"]) == len(gpu.plan(tiny=True, cuda=torch.cuda.is_available(), only=[]))
    assert all("budget" in why for why in res["skipped"].values())


def test_bad_data_dir_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert gpu.main(["--tiny", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ag_news folder" in err[0]
    assert not (tmp_path / "o").exists()
