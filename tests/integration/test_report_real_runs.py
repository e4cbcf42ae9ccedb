"""The analysis on real runs: a slow input pipeline is diagnosed as input-bound, and the report's
numbers are the run folders' numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scalelab.analysis.collect import load_runs
from scalelab.analysis.diagnose import diagnose
from scalelab.analysis.report import write_report
from tests.conftest import rank_errors, scalelab, torchrun

pytestmark = pytest.mark.slow
TINY = [
    "data.max_train_samples=480", "data.max_test_samples=100", "model.vocab_size=2000", "model.d_model=32",
    "model.num_layers=1", "model.num_heads=2", "model.d_ff=64", "model.max_seq_len=64", "train.batch_size=16",
    "train.epochs=2", "output.progress=none", "train.comm_calibration_steps=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def slow_input_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.getbasetemp() / "scalelab_cache"
    args = [*TINY, f"output.dir={out}", f"data.cache_dir={cache}", "data.delay_per_batch_s=0.03"]
    res = scalelab(["train", *args, "output.run_name=slow-ws1", "train.num_threads=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun(["-m", "scalelab", "train", *args, "output.run_name=slow-ws2"], nproc=2)
    assert res.returncode == 0, rank_errors(res)
    return out


def test_slow_input_pipeline_is_diagnosed_as_input_bound(slow_input_runs: Path) -> None:
    runs = load_runs([slow_input_runs])
    assert sorted(r.world_size for r in runs) == [1, 2]
    findings = diagnose(runs)
    input_bound = [f for f in findings if f.rule == "input_bound"]
    assert input_bound, [f.title for f in findings]
    assert "data" in input_bound[0].evidence.lower()
    # the measured data wait really is the injected delay (30 ms per batch)
    for r in runs:
        # (at least the sleep; the gather and a loaded machine may add to it)
        assert 29.9 <= r.summary["timing"]["data_ms"] < 60, r.summary["timing"]


def test_report_numbers_match_the_run_folders(slow_input_runs: Path, tmp_path: Path) -> None:
    outputs = write_report([slow_input_runs], tmp_path / "report")
    rows = {
        int(r["world_size"]): r
        for r in csv.DictReader((tmp_path / "report" / "comprehensive_summary.csv").open())
    }
    summaries = {
        json.loads(p.read_text())["world_size"]: json.loads(p.read_text())
        for p in slow_input_runs.glob("*/summary.json")
    }
    for n, s in summaries.items():
        assert float(rows[n]["epoch_time_s"]) == pytest.approx(s["mean_epoch_time_s"], rel=1e-3)
        assert float(rows[n]["final_val_acc"]) == pytest.approx(s["final_val_acc"], rel=1e-3)
    speedup = summaries[1]["mean_epoch_time_s"] / summaries[2]["mean_epoch_time_s"]
    assert float(rows[2]["speedup"]) == pytest.approx(speedup, rel=1e-3)
    html = Path(outputs["html"]).read_text()
    # the diagnosis reaches the page (its title; "input" alone is in the method text)
    assert "Input-bound: the input pipeline is the bottleneck" in html
    assert "data:image/png;base64," in html


def test_report_and_predict_commands(slow_input_runs: Path, tmp_path: Path) -> None:
    res = scalelab(["report", str(slow_input_runs), "--out", str(tmp_path / "r")])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r" / "report.html").stat().st_size > 0 and "report.html" in res.stdout
    res = scalelab(
        ["predict", str(slow_input_runs / "slow-ws1"), "--busbw-gbps", "2", "--world-sizes", "2,4"]
    )
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines() if ln[:1].isdigit()]
    assert [r[0] for r in rows] == ["2", "4"]
    # CPU runs: the threads/rank column (the base run's), then the step
    assert rows[0][1] == rows[1][1] == "1" and "threads/rank  step (ms)" in res.stdout
    assert float(rows[1][2]) < float(rows[0][2])  # more ranks, shorter predicted step
    res = scalelab(["predict", str(slow_input_runs / "slow-ws2"), "--busbw-gbps", "2"])
    assert res.returncode == 2 and "needs a 1-rank run" in res.stderr
    res = scalelab(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")])
    assert res.returncode == 2 and res.stderr.count("\n") == 1
