"""Smoke tests of the benchmark scripts: they run in tiny CPU mode and write the expected JSON.

These check the plumbing (scripts start, measure something, write every key), not speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_gpu_tiny_writes_smoke_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    _run([str(BENCH / "gpu.py"), "--tiny", "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    res = json.loads(out.read_text())
    for key in ("device", "torch_version", "date", "command", "git_commit", "cases", "data_prep_s"):
        assert key in res
    assert res["smoke_test"] is True  # a CPU smoke run must never pass for a measurement
    variants = res["cases"]["ag_news_small-b32"]
    assert variants and "error" not in variants[0], variants
    for key in ("samples_per_s", "epoch_time_s_120k", "mfu", "peak_mem_mb", "real_tokens_per_step",
                "mem_baseline_mb", "peak_mem_mb_above_baseline", "tf32", "padding_overhead"):  # fmt: skip
        assert key in variants[0]
    assert variants[0]["samples_per_s"] > 0
    assert res["complete"] is True and res["skipped"] == {}
    # the padded-to-a-multiple path ran too, and each variant was profiled
    assert {v["padding"] for v in variants} == {"longest", "multiple"}
    assert all(v["profile"]["profiled_steps"] == 2 for v in variants), variants


@pytest.mark.slow
def test_run_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    _run([
        str(BENCH / "run.py"), "--quick", "--presets", "ag_news_small", "--skip", "prep,ddp",
        "--max-quiet-wait", "0", "--out", str(out),
    ])  # fmt: skip
    res = json.loads(out.read_text())
    for key in ("device", "torch_version", "git_commit", "command", "date", "checks", "quick"):
        assert key in res
    tp = res["throughput"]["ag_news_small"]
    for key in ("scalelab_samples_per_s", "study_samples_per_s", "ratio", "eval_examples_per_s"):
        assert key in tp
    assert tp["scalelab_samples_per_s"]["median"] > 0 and tp["study_samples_per_s"]["median"] > 0
    assert res["checks"], "the run wrote no checks"
    assert {c["verdict"] for c in res["checks"]} <= {"PASS", "FAIL", "SKIP", "info"}


@pytest.mark.slow
def test_run_quick_ddp_section_writes_every_layout(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    _run([
        str(BENCH / "run.py"), "--quick", "--skip", "throughput,prep", "--max-quiet-wait", "0",
        "--out", str(out),
    ], timeout=900)  # fmt: skip
    ddp = json.loads(out.read_text())["ddp_cpu"]
    sps = ddp["samples_per_s"]
    assert set(sps) == {"1x1", "1x2", "2x1", "2x1-pinned", "2x1-buckets", "2x1-block"}
    assert min(sps.values()) > 0
    assert ddp["speedup_2x1_vs_1x1"] == pytest.approx(sps["2x1"] / sps["1x1"])
    # the pinned run was bound (one core per rank), the default one was not
    runs = ddp["runs"]
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    first = sorted(os.sched_getaffinity(0))[:1]
    assert runs["2x1-pinned"][0]["bound_cpus"] == (first if two_cpus else None)
    assert runs["2x1"][0]["bound_cpus"] is None
    pin = ddp["pinned_vs_unpinned_2x1"]
    assert pin["per_repeat"] == [pytest.approx(sps["2x1-pinned"] / sps["2x1"])]
    assert pin["ratio"] == pin["per_repeat"][0]
    # the default 2x1 fused its gradient all-reduces, the 2x1-buckets run did not
    assert runs["2x1"][0]["grad_sync"] == "fused"
    assert runs["2x1-buckets"][0]["grad_sync"] == "buckets"
    # the steps time a fused all-reduce themselves: that is the exposed communication; with
    # DDP's buckets in the backward the calibration's figure is
    fused_run, buckets_run = runs["2x1"][0], runs["2x1-buckets"][0]
    assert fused_run["exposed_comm_ms"] == fused_run["step_allreduce_ms"] > 0
    assert fused_run["calibrated_exposed_comm_ms"] >= 0
    assert buckets_run["step_allreduce_ms"] is None
    assert buckets_run["exposed_comm_ms"] == buckets_run["calibrated_exposed_comm_ms"]
    assert ddp["exposed_comm_ms_2x1"] == fused_run["exposed_comm_ms"]  # one repeat: its value
    assert ddp["allreduce_ms_2x1"] == fused_run["allreduce_ms"] > 0
    fused = ddp["fused_vs_buckets_2x1"]
    assert fused["per_repeat"] == [pytest.approx(sps["2x1"] / sps["2x1-buckets"])]
    # ... and waited for its all-reduce spinning, the 2x1-block run in gloo's wait()
    assert runs["2x1"][0]["collective_wait"] == "spin"
    assert runs["2x1-block"][0]["collective_wait"] == "block"
    spin = ddp["spin_vs_block_2x1"]
    assert spin["per_repeat"] == [pytest.approx(sps["2x1"] / sps["2x1-block"])]
    assert len(ddp["two_independent_runs"]["samples_per_s"]) == 1
    # every timed block records the background load before it (the README says so)
    assert len(ddp["two_independent_runs"]["background_load_before"]) == 1
    assert "background_busy" in ddp["step_decomposition_2x1"]["background_load_before"]
    assert set(ddp["step_decomposition_2x1"]["step_ms"]) == {
        "plain",
        "independent",
        "lock_step",
        "ddp",
    }


@pytest.mark.slow
def test_embedding_grad_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "emb.json"
    _run([str(BENCH / "embedding_grad.py"), "--quick", "--max-quiet-wait", "0", "--out", str(out)])
    res = json.loads(out.read_text())
    for key in ("device", "torch_version", "git_commit", "command", "date", "quick"):
        assert key in res
    assert set(res["step_ms"]) == {"rows", "dense"}
    assert res["step_ms"]["rows"]["median"] > 0 and res["step_ms"]["dense"]["median"] > 0
    assert len(res["speedup_rows_over_dense_per_round"]) == res["rounds"] == 2


@pytest.mark.slow
def test_cpu_precision_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "precision.json"
    _run([str(BENCH / "cpu_precision.py"), "--quick", "--presets", "ag_news_small",
          "--threads", "1", "--max-quiet-wait", "0", "--out", str(out)])  # fmt: skip
    res = json.loads(out.read_text())
    for key in ("device", "torch_version", "git_commit", "command", "date", "quick"):
        assert key in res
    assert set(res["cpu_bf16_support"]) == {"amx_tile", "avx512_bf16"}
    small = res["presets"]["ag_news_small"]
    assert set(small["step_ms"]) == {"fp32", "bf16"}
    assert small["step_ms"]["fp32"]["median"] > 0 and small["step_ms"]["bf16"]["median"] > 0
    assert len(small["speedup_bf16_over_fp32_per_round"]) == small["rounds"] == 2
    # the same batches: bf16's rounding moves the loss a little, not far
    loss = small["mean_train_loss"]
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05) and loss["bf16"] != loss["fp32"]


@pytest.mark.slow
def test_ddp_lockstep_splits_the_2_rank_step(tmp_path: Path, cache_dir: Path) -> None:
    from tests.conftest import rank_errors, torchrun

    out = tmp_path / "lockstep.json"
    res = torchrun(
        [str(BENCH / "ddp_lockstep.py"), "--out", str(out), "--blocks", "2", "--steps", "2",
         f"data.cache_dir={cache_dir}", "train.num_threads=1", "data.max_train_samples=256"],
        2, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, rank_errors(res) or res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world_size"] == 2 and got["steps_per_mode"] == 2  # the warm-up round is dropped
    assert {"command", "date", "git_commit", "device", "torch_version"} <= got.keys()
    step = got["step_ms"]
    assert set(step) == {"plain", "independent", "lock_step", "ddp"} and min(step.values()) > 0
    assert got["ddp_wrapper_ms"] == pytest.approx(step["independent"] - step["plain"])
    assert got["synchronisation_ms"] == pytest.approx(step["lock_step"] - step["independent"])
    assert got["gradient_communication_ms"] == pytest.approx(step["ddp"] - step["lock_step"])


@pytest.mark.slow
def test_device_check_smoke_runs_every_step_on_cpu(tmp_path: Path) -> None:
    """The one-shot script for a lent GPU, in its CPU mode: it must not first break on a GPU."""
    import os

    out = tmp_path / "dc"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "SCALELAB_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    res = subprocess.run(
        ["bash", str(BENCH / "device_check.sh"), "--smoke"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "train: OK" in res.stdout and "0 failed step(s)" in res.stdout
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["device_type"] == "cpu" and summary["samples_per_s"] > 0
    assert summary["profile"]["profiled_steps"] == 5 and "train profile:" in res.stdout
    bench = json.loads((out / "gpu.json").read_text())
    assert bench["smoke_test"] is True and bench["complete"] is True and bench["cases"]
    assert not (out / "train-run").exists()  # the run folder is removed, its summary kept


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--skip", "ddp,perp"], "--skip: no section perp (sections: throughput, prep, ddp)"),
        (["--presets", "imdb_small"], "--presets: no throughput plan for imdb_small"),
        (["--data-dir", "/nonexistent"], "--data-dir /nonexistent: no ag_news folder in it"),
    ],
)
def test_run_arguments_that_cannot_run_are_one_usage_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    # a typo in --skip ran the section anyway; a preset without a plan was a KeyError traceback
    out = tmp_path / "run.json"
    res = subprocess.run([sys.executable, str(BENCH / "run.py"), *args, "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert says in res.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("embedding_grad.py", ["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        ("cpu_precision.py", ["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
        ("embedding_grad.py", ["--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (
            "ddp_lockstep.py",
            ["--out", "x.json", "--blocks", "1"],
            "argument --blocks: must be >= 2 (the first block is warm-up), got 1",
        ),
    ],
)
def test_benchmark_counts_below_one_are_usage_errors(
    script: str, args: list[str], says: str
) -> None:
    # a ZeroDivisionError, an IndexError, torch's RuntimeError, or NaN in the JSON
    res = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].endswith(says)


def test_default_result_name_does_not_replace_an_earlier_run_of_the_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    first = common.default_out("-quick")
    assert first.parent == tmp_path and first.name.endswith("-quick.json")
    first.write_text("{}")
    second = common.default_out("-quick")
    assert second != first and second.name.startswith(first.stem + "-")
    assert common.busy_text({"background_busy": None}) == "n/a"  # /proc/stat unreadable
    assert common.busy_text({"background_busy": 0.25}) == "25%"


@pytest.mark.slow
def test_quality_tiny_writes_both_accuracies(tmp_path: Path) -> None:
    shared = REPO.parent / "shared" / "data"  # beside the checkout, as in CI
    if not (shared / "ag_news" / "train.csv.gz").is_file():
        pytest.skip(f"no shared data at {shared}")
    out = tmp_path / "quality.json"
    _run([str(BENCH / "quality.py"), "--epochs", "1", "--max-train-samples", "96",
          "--max-test-samples", "64", "--shared-data", str(shared), "--out", str(out)])  # fmt: skip
    res = json.loads(out.read_text())["results"]["ag_news_small"]
    assert res["num_train"] == 96 and res["num_test"] == 64 and res["epochs"] == 1
    for side in ("scalelab", "study"):
        assert 0.0 <= res[side]["test_acc"] <= 1.0 and res[side]["wall_s"] > 0
        assert res[side]["wall_includes"]
    assert res["acc_difference"] == pytest.approx(
        res["scalelab"]["test_acc"] - res["study"]["test_acc"]
    )


def test_a_failed_side_by_side_run_stops_its_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.py's _train_runs starts runs together: when one fails, the others (and the ranks
    under their torchrun) were left running while the caller removed their folder."""
    import signal
    import time

    from scalelab.launch import local

    sys.path.insert(0, str(BENCH))
    try:
        import run as bench_run
    finally:
        sys.path.remove(str(BENCH))
    pid_file = tmp_path / "peer.pid"

    def fake_torchrun(nproc: int, module_args: list[str]) -> list[str]:
        if "output.run_name=fails" in module_args:  # once its peer's rank runs
            wait = f"import os, sys, time\nwhile not os.path.exists({str(pid_file)!r}): time.sleep(0.05)"
            return [sys.executable, "-c", wait + "\nsys.exit(3)"]
        # a rank under torchrun: a grandchild of the benchmark's trampoline process
        code = (f"import os, subprocess, sys, time; open({str(pid_file)!r}, 'w').write("
                "str(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])"
                ".pid)); time.sleep(120)")  # fmt: skip
        return [sys.executable, "-c", code]

    monkeypatch.setattr(local, "torchrun_argv", fake_torchrun)
    with pytest.raises(RuntimeError, match="fails failed"):
        bench_run._train_runs([(1, 1, "fails"), (1, 1, "hangs")], tmp_path, [])
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    rank = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        alive = rank is not None
        while alive and time.monotonic() < deadline:
            try:
                os.kill(rank, 0)
                state = Path(f"/proc/{rank}/stat").read_text().split(") ")[-1][:1]
                alive = state != "Z"  # killed, not yet reaped by its new parent
            except (ProcessLookupError, FileNotFoundError):
                alive = False
            time.sleep(0.1)
        assert rank is not None and not alive, "the hanging run's rank still runs"
    finally:
        if rank is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rank, signal.SIGKILL)
