"""End to end through the CLI, as a user runs it: outputs, resume, and one-line errors on bad input."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalelab.train import METRIC_COLUMNS, cpu_model
from tests.conftest import (
    REPO,
    assert_one_line_error,
    rank_errors,
    scalelab,
    subprocess_env,
    torchrun,
)

pytestmark = pytest.mark.slow
TINY = [
    "data.max_train_samples=600", "data.max_test_samples=203", "model.vocab_size=2000", "model.d_model=32",
    "model.num_layers=1", "model.num_heads=2", "model.d_ff=64", "model.max_seq_len=64", "train.batch_size=16",
    "output.progress=plain", "train.log_every_steps=5",
]  # fmt: skip


def common(tmp: Path, cache: Path) -> list[str]:
    return [*TINY, f"output.dir={tmp / 'exp'}", f"data.cache_dir={cache}"]


def test_torchrun_two_ranks_writes_every_output(tmp_path: Path, cache_dir: Path) -> None:
    res = torchrun(
        ["-m", "scalelab", "train", "--config", "configs/ag_news_small.yaml", *common(tmp_path, cache_dir),
         "train.epochs=2", "output.run_name=e2e", "train.profile_steps=2", "distributed.pin_cpus=true"],
        nproc=2,
    )  # fmt: skip
    assert res.returncode == 0, rank_errors(res)
    run = tmp_path / "exp" / "e2e"
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoint.pt"):
        assert (run / name).stat().st_size > 0, name
    # train.profile_steps: every rank's chrome trace; rank 0's summary of it
    for rank in (0, 1):
        trace = json.loads((run / f"profile-rank{rank}.json").read_text())
        assert any(e.get("cat") == "cpu_op" for e in trace["traceEvents"]), rank
    # the closing line names every file the folder holds, the traces too
    held = "checkpoint.pt, config.yaml, metrics.csv, profile-rank0.json, profile-rank1.json, summary.json"
    assert f"wrote {run}/ ({held})" in res.stdout
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0].keys()) == METRIC_COLUMNS
    assert all(r["world_size"] == "2" and r["global_batch"] == "16" for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["world_size"] == 2
        and summary["backend"] == "gloo"
        and summary["per_rank_batch"] == 8
    )
    assert summary["num_params"] > 0 and 0 < summary["final_val_acc"] <= 1
    assert summary["num_test_samples"] == 203
    # distributed.pin_cpus: rank 0's threads on the first CPUs this job may use (the other
    # ranks' slices: tests/unit/test_cpu_binding.py; unbound by default: the benchmark smoke test)
    threads = summary["system"]["num_threads_per_rank"]
    allowed = sorted(os.sched_getaffinity(0))
    assert summary["system"]["num_cpus"] == len(allowed)
    assert summary["system"]["bound_cpus"] == (
        allowed[:threads] if 2 * threads <= len(allowed) else None
    )
    comm = summary["comm"]
    # a real 2-process run measures non-zero, plausible communication
    # gloo: the token embedding's gradient is all-reduced as the rows a global batch used (d_model 32)
    assert comm["embedding_grad_sync"] == "rows"
    row_bytes = int(comm["embedding_rows_per_step"] * 32 * 4)
    assert 0 < row_bytes < comm["embedding_grad_bytes"]
    assert (
        comm["grad_bytes"] == 4 * summary["num_params"] - comm["embedding_grad_bytes"] + row_bytes
    )
    # gloo's default: DDP's buckets and the rows go in one all-reduce per step
    assert comm["grad_sync"] == "fused" and comm["bucket_bytes"] == [comm["grad_bytes"]]
    assert 0 < comm["allreduce_ms"] < 1000
    assert comm["calibrated_exposed_comm_ms"] >= 0 and comm["compute_ms"] > 0
    # that one all-reduce follows the backward: the steps time it, and its mean over the epochs
    # after the first (as every timing) is the exposed communication, with an epoch column
    in_step = [float(r["step_allreduce_ms"]) for r in rows]
    assert all(0 < ms < float(r["backward_ms"]) for ms, r in zip(in_step, rows, strict=True))
    assert comm["exposed_comm_ms"] == summary["timing"]["step_allreduce_ms"]
    assert comm["exposed_comm_ms"] == pytest.approx(in_step[1], rel=1e-5)
    assert "timed in every training step" in comm["method"]
    assert comm["compute_to_comm_ratio"] == pytest.approx(comm["compute_ms"] / comm["allreduce_ms"])
    prof = summary["profile"]
    assert prof["profiled_steps"] == 2 and prof["trace"] == "profile-rank0.json"
    assert prof["gpu_events"] == 0 and prof["top_host_ops"][0]["self_cpu_ms_per_step"] > 0
    t = summary["timing"]
    assert t["warmup_steps"] == 5 + 2  # the timing warm-up, then the profiled steps
    assert t["warmup_invocations"] == 1
    assert t["step_ms"] > 0 and t["forward_ms"] > 0 and t["backward_ms"] > 0
    # the phase laps (their sum is step_ms) account for the epoch's wall clock, timed apart:
    # epoch 2 has no warm-up, so its steps' laps cover nearly all of it and never exceed it
    ep2 = rows[1]
    laps_s = float(ep2["step_ms"]) * int(ep2["num_steps"]) / 1000
    assert 0.5 * float(ep2["epoch_time_s"]) <= laps_s <= 1.1 * float(ep2["epoch_time_s"])
    # only rank 0 prints progress
    assert res.stdout.count("epoch 2/2:") == 1


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, cache_dir: Path
) -> None:
    base = ["train", *common(tmp_path, cache_dir), "train.epochs=2", "train.max_steps_per_epoch=6",
            "train.num_threads=1"]  # fmt: skip
    assert scalelab([*base, "output.run_name=full"]).returncode == 0
    # stop mid-epoch 2 (as if preempted), then resume; the cut run also profiles a step of
    # epoch 1 (train.profile_steps), which must not change what it trains
    cut = [*base, "output.run_name=cut", "train.profile_steps=2"]
    stopped = scalelab([*cut, "train.stop_after_steps=8"])
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped after 8 steps" in stopped.stdout
    assert not (tmp_path / "exp" / "cut" / "summary.json").exists()
    # the 2 steps of epoch 2 before the stop: their time, tokens and phase means are kept
    saved = torch.load(tmp_path / "exp" / "cut" / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert saved["epoch_elapsed_s"] > 0 and saved["epoch_tokens"][0] > 0
    assert saved["epoch_phases"][0]["measured_steps"] == 2  # the warm-up was in epoch 1
    resumed = scalelab([*cut, "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    _assert_same_run(tmp_path / "exp" / "full", tmp_path / "exp" / "cut")
    # the resumed epoch reports its whole time (it used to count only the steps after the resume)
    ep2 = list(csv.DictReader((tmp_path / "exp" / "cut" / "metrics.csv").open()))[1]
    assert float(ep2["epoch_time_s"]) > saved["epoch_elapsed_s"]
    assert float(ep2["samples_per_s"]) == pytest.approx(
        6 * int(ep2["global_batch"]) / float(ep2["epoch_time_s"]), rel=1e-4
    )
    assert float(ep2["step_ms"]) > 0
    # the profile of the first invocation reaches the summary the second one wrote
    summary = json.loads((tmp_path / "exp" / "cut" / "summary.json").read_text())
    assert summary["profile"]["trace"] == "profile-rank0.json"
    # 6 steps per epoch: warm-up 3, then at most half of the other 3: one step profiled
    assert summary["profile"]["profiled_steps"] == 1
    assert (tmp_path / "exp" / "cut" / "profile-rank0.json").is_file()


def test_crash_after_a_periodic_checkpoint_resumes_to_the_uninterrupted_result(
    tmp_path: Path, cache_dir: Path
) -> None:
    # slow batches so the kill lands mid-epoch 2, after a train.checkpoint_every_steps checkpoint
    base = ["train", *common(tmp_path, cache_dir), "train.epochs=2", "train.max_steps_per_epoch=9",
            "train.num_threads=1", "train.checkpoint_every_steps=3"]  # fmt: skip
    assert scalelab([*base, "output.run_name=full"]).returncode == 0
    cmd = [sys.executable, "-m", "scalelab", *base, "output.run_name=cut",
           "data.delay_per_batch_s=0.15"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env({"OMP_NUM_THREADS": "1"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    ckpt, seen, saved = tmp_path / "exp" / "cut" / "checkpoint.pt", None, None
    try:
        while proc.poll() is None:  # each checkpoint appears whole (written aside, renamed)
            stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if stamp is not None and stamp != seen:
                seen, saved = stamp, torch.load(ckpt, weights_only=False)
                if saved["epoch"] == 1 and saved["step_in_epoch"] > 0:
                    proc.kill()  # a crash: no signal handler, no stop checkpoint
                    break
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert saved["step_in_epoch"] % 3 == 0
    # the checkpoint carries the epoch's phase means so far (the warm-up was in epoch 1)
    assert saved["epoch_phases"][0]["measured_steps"] == saved["step_in_epoch"]
    assert saved["epoch_phases"][0]["step_ms"] > 0 and saved["epoch_elapsed_s"] > 0
    stale = ckpt.parent / ".checkpoint.pt.x1y2z3"  # as a kill during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    resumed = scalelab([*base, "output.run_name=cut", "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert not stale.exists()
    _assert_same_run(tmp_path / "exp" / "full", tmp_path / "exp" / "cut")
    ep2 = list(csv.DictReader((tmp_path / "exp" / "cut" / "metrics.csv").open()))[1]
    assert float(ep2["epoch_time_s"]) > saved["epoch_elapsed_s"] and float(ep2["step_ms"]) > 0


def _assert_same_run(full_dir: Path, cut_dir: Path) -> dict:
    """The resumed run ends with exactly the uninterrupted run's weights and per-epoch metrics.
    Returns the resumed run's checkpoint."""
    full = torch.load(full_dir / "checkpoint.pt", weights_only=False)
    cut = torch.load(cut_dir / "checkpoint.pt", weights_only=False)
    assert full["model"].keys() == cut["model"].keys()
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    rows_full = list(csv.DictReader((full_dir / "metrics.csv").open()))
    rows_cut = list(csv.DictReader((cut_dir / "metrics.csv").open()))
    assert [r["train_loss"] for r in rows_full] == [r["train_loss"] for r in rows_cut]
    assert [r["val_acc"] for r in rows_full] == [r["val_acc"] for r in rows_cut]
    return cut


def test_resume_at_an_epoch_boundary_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, cache_dir: Path
) -> None:
    base = ["train", *common(tmp_path, cache_dir), "train.epochs=2", "train.max_steps_per_epoch=6",
            "train.num_threads=1"]  # fmt: skip
    assert scalelab([*base, "output.run_name=full"]).returncode == 0
    # stop after exactly the 6 steps of epoch 1: the epoch is finished first (evaluation, metrics
    # row, end-of-epoch checkpoint), so the checkpoint sits at the start of epoch 2
    stopped = scalelab([*base, "output.run_name=cut", "train.stop_after_steps=6"])
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped after 6 steps" in stopped.stdout and "epoch 1/2:" in stopped.stdout
    cut_dir = tmp_path / "exp" / "cut"
    saved = torch.load(cut_dir / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 0, 6)
    assert [r["epoch"] for r in csv.DictReader((cut_dir / "metrics.csv").open())] == ["1"]
    assert not (cut_dir / "summary.json").exists()
    resumed = scalelab([*base, "output.run_name=cut", "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2, step 0" in resumed.stdout and "epoch 1/2:" not in resumed.stdout
    assert _assert_same_run(tmp_path / "exp" / "full", cut_dir)["global_step"] == 12


# DDP equivalence through the real trainer: no dropout, so 1 process and 2 ranks compute the same
# sums on the same global batches (the sampler does not depend on the world size)
EQUIV = [*TINY, "model.dropout=0.0", "train.epochs=1", "train.max_steps_per_epoch=6",
         "train.comm_calibration_steps=0"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ws1")
    cache = tmp_path_factory.getbasetemp() / "scalelab_cache"  # the cache_dir fixture's folder
    res = scalelab(["train", "--config", "ag_news_small", *EQUIV, "train.num_threads=1",
                    f"output.dir={out}", f"data.cache_dir={cache}", "output.run_name=ws1"])  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "ws1"


@pytest.mark.parametrize("embedding_sync", ["rows", "dense"])
def test_two_ranks_under_torchrun_end_with_the_weights_of_one_process(
    tmp_path: Path, cache_dir: Path, one_process_run: Path, embedding_sync: str
) -> None:
    res = torchrun(
        ["-m", "scalelab", "train", "--config", "ag_news_small", *EQUIV, f"output.dir={tmp_path}",
         f"data.cache_dir={cache_dir}", f"distributed.embedding_grad_sync={embedding_sync}",
         "output.run_name=ws2"],
        nproc=2,
    )  # fmt: skip
    assert res.returncode == 0, rank_errors(res)
    summary = json.loads((tmp_path / "ws2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["device_type"] == "cpu" and summary["device_name"] == cpu_model()
    assert summary["comm"]["embedding_grad_sync"] == embedding_sync
    one = torch.load(one_process_run / "checkpoint.pt", weights_only=False)
    two = torch.load(tmp_path / "ws2" / "checkpoint.pt", weights_only=False)
    assert one["global_step"] == two["global_step"] == 6
    assert one["model"].keys() == two["model"].keys()
    for k, a in one["model"].items():
        b = two["model"][k]
        # fp32: the 2-rank all-reduce sums in another order than the 1-process backward
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (k, (a - b).abs().max().item())


def test_a_slow_periodic_checkpoint_is_in_no_ranks_step_time(tmp_path: Path, cache_dir: Path):
    """Rank 0 writes the checkpoint every 4 steps, 0.5 s each time: the other rank waits for it
    paused, not in the next step's all-reduce (before: a backward of 58-61 ms per step on average,
    against 5.6 ms with the wait paused, 2026-12-07)."""
    script = Path(__file__).parent / "scripts" / "faulty_disk_train.py"
    res = torchrun(
        [str(script), "train", *common(tmp_path, cache_dir), "train.epochs=1",
         "train.max_steps_per_epoch=24", "train.checkpoint_every_steps=4",
         "train.comm_calibration_steps=0", "output.run_name=r"],
        nproc=2,
        env={"SAVE_DELAY_S": "0.5"},
    )  # fmt: skip
    assert res.returncode == 0, rank_errors(res)
    timing = json.loads((tmp_path / "exp" / "r" / "summary.json").read_text())["timing"]
    for key in ("backward_ms", "step_ms_max"):
        assert timing[key] < 40.0, (key, timing)


def test_rank_0s_failed_write_is_every_ranks_one_line_error(tmp_path: Path, cache_dir: Path):
    """summary.json cannot be written (a full disk): rank 0 says so in one line and both ranks
    exit 2; rank 1 died in its next collective with a traceback before (exit 1)."""
    script = Path(__file__).parent / "scripts" / "faulty_disk_train.py"
    res = torchrun(
        [str(script), "train", *common(tmp_path, cache_dir), "train.epochs=1",
         "train.max_steps_per_epoch=3", "train.comm_calibration_steps=0", "output.run_name=r"],
        nproc=2,
        env={"FULL_DISK": "summary.json"},
    )  # fmt: skip
    assert res.returncode != 0
    (error,) = [ln for ln in res.stderr.splitlines() if "scalelab: error:" in ln]
    assert "summary.json: cannot write it ([Errno 28]" in error, error
    assert res.stderr.count("exitcode  : 2 ") == 2, res.stderr[-3000:]  # torchrun's summary
    assert "[rank1]" not in res.stderr, res.stderr[-3000:]
    assert (tmp_path / "exp" / "r" / "checkpoint.pt").is_file()  # resumable


def test_sigterm_under_torchrun_checkpoints_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, cache_dir: Path
) -> None:
    # slow batches (data.delay_per_batch_s) so the signal lands mid-training
    base = ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "train.epochs=2",
            "train.max_steps_per_epoch=12", "data.delay_per_batch_s=0.05"]  # fmt: skip
    full = torchrun([*base, "output.run_name=full"], nproc=2)
    assert full.returncode == 0, rank_errors(full)

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *base, "output.run_name=cut"]  # fmt: skip
    env = subprocess_env({"OMP_NUM_THREADS": "1"})
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines = []
    for line in proc.stdout:  # the first progress line: training is under way
        lines.append(line)
        if "epoch 1/2 step 5/" in line:
            proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both ranks
            break
    out, err = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode != 0
    stopped = [ln for ln in out.splitlines() if "on SIGTERM" in ln]
    assert len(stopped) == 1 and "train.resume=auto" in stopped[0], out + err[-2000:]
    assert (tmp_path / "exp" / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "exp" / "cut" / "summary.json").exists()
    saved = torch.load(tmp_path / "exp" / "cut" / "checkpoint.pt", weights_only=False)
    assert 0 < saved["global_step"] < 24

    resumed = torchrun([*base, "output.run_name=cut", "train.resume=auto"], nproc=2)
    assert resumed.returncode == 0, rank_errors(resumed)
    a = torch.load(tmp_path / "exp" / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "exp" / "cut" / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_three_ranks_resume_to_the_uninterrupted_weights(tmp_path: Path, cache_dir: Path) -> None:
    # with 3 ranks a sum's rounding depends on the bucket layout, which DDP rebuilds after its
    # first step: a resumed run must not all-reduce its first step in the initial layout
    base = ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "train.epochs=1",
            "train.batch_size=24", "train.max_steps_per_epoch=6", "train.comm_calibration_steps=0",
            "distributed.bucket_cap_mb=0.01"]  # fmt: skip
    full = torchrun([*base, "output.run_name=full"], nproc=3)
    assert full.returncode == 0, rank_errors(full)
    cut = [*base, "output.run_name=cut"]
    stopped = torchrun([*cut, "train.stop_after_steps=3"], nproc=3)
    assert stopped.returncode == 0, rank_errors(stopped)
    resumed = torchrun([*cut, "train.resume=auto"], nproc=3)
    assert resumed.returncode == 0, rank_errors(resumed)
    a = torch.load(tmp_path / "exp" / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "exp" / "cut" / "checkpoint.pt", weights_only=False)
    assert b["global_step"] == a["global_step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


# one bucket, and many small ones whose boundaries move when DDP re-buckets after the first step
@pytest.mark.parametrize("bucket_cap_mb", [25.0, 0.01])
def test_powersgd_resume_under_torchrun_matches_an_uninterrupted_run(
    tmp_path: Path, cache_dir: Path, bucket_cap_mb: float
) -> None:
    # PowerSGD's per-rank error feedback and warm-start factors travel in the checkpoint
    base = ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "train.epochs=2",
            "train.max_steps_per_epoch=6", "distributed.comm_hook=powersgd",
            "distributed.powersgd_rank=1", f"distributed.bucket_cap_mb={bucket_cap_mb}"]  # fmt: skip
    full = torchrun([*base, "output.run_name=full"], nproc=2)
    assert full.returncode == 0, rank_errors(full)
    stopped = torchrun([*base, "output.run_name=cut", "train.stop_after_steps=8"], nproc=2)
    assert stopped.returncode == 0, rank_errors(stopped)
    saved = torch.load(tmp_path / "exp" / "cut" / "checkpoint.pt", weights_only=False)
    hooks = saved["comm_hook_state"]
    assert saved["global_step"] == 8 and len(hooks) == 2
    assert hooks[0]["slots"]["iter"] == 8
    pieces = [h["per_parameter"] for h in hooks]
    # PowerSGD ran: every DDP parameter has a residual, the compressed matrices warm-start factors
    assert pieces[0].keys() == {k for k in saved["model"] if k != "tok_emb.weight"}
    assert all(p["error"].shape == saved["model"][k].flatten().shape for k, p in pieces[0].items())
    assert "p" in pieces[0]["blocks.0.ff1.weight"] and "p" not in pieces[0]["head.bias"]
    # each rank's residual is its own local gradient's: the two ranks' states differ
    assert not torch.equal(pieces[0]["blocks.0.ff1.weight"]["error"],
                           pieces[1]["blocks.0.ff1.weight"]["error"])  # fmt: skip
    resumed = torchrun([*base, "output.run_name=cut", "train.resume=auto"], nproc=2)
    assert resumed.returncode == 0, rank_errors(resumed)
    _assert_same_run(tmp_path / "exp" / "full", tmp_path / "exp" / "cut")


def test_a_malformed_powersgd_state_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    """PowerSGD's saved state read unchecked: a piece of another size failed the first step's
    all-reduce mid-training, text slots were AttributeErrors and TypeErrors (tracebacks)."""
    base = ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "train.epochs=2",
            "train.max_steps_per_epoch=4", "distributed.comm_hook=powersgd"]  # fmt: skip
    stopped = torchrun([*base, "output.run_name=cut", "train.stop_after_steps=5"], nproc=2)
    assert stopped.returncode == 0, rank_errors(stopped)
    saved = torch.load(tmp_path / "exp" / "cut" / "checkpoint.pt", weights_only=False)

    def size(state: dict) -> None:
        state["per_parameter"]["head.bias"]["error"] = torch.zeros(7)

    def rank(state: dict) -> None:
        state["slots"]["matrix_approximation_rank"] = "x"

    cases = [
        (size, "head.bias: 'error' has 7 values, expected 4"),
        (rank, "slot 'matrix_approximation_rank' is 'x', expected a number"),
    ]
    for i, (corrupt, says) in enumerate(cases):
        bad = {**saved, "comm_hook_state": [dict(h) for h in saved["comm_hook_state"]]}
        for state in bad["comm_hook_state"]:
            state["slots"] = dict(state["slots"])
            state["per_parameter"] = {k: dict(v) for k, v in state["per_parameter"].items()}
            corrupt(state)
        ckpt = tmp_path / f"bad{i}.pt"
        torch.save(bad, ckpt)
        res = torchrun([*base, f"output.run_name=r{i}", f"train.resume={ckpt}"], nproc=2)
        errors = [ln for ln in res.stderr.splitlines() if "scalelab: error:" in ln]
        # (a rank that fails first makes torchrun stop the other, which may not get to say it)
        assert res.returncode != 0 and errors, res.stderr[-3000:]
        assert all("state of rank" in e and says in e for e in errors), errors
        # torchrun adds its own ChildFailedError traceback; the ranks print none
        assert not [ln for ln in res.stderr.splitlines() if "Traceback" in ln and "[rank" in ln]
        assert not (tmp_path / "exp" / f"r{i}").exists()


def test_bad_config_key_is_one_line(tmp_path: Path) -> None:
    res = scalelab(["train", "train.batchsize=3", f"output.dir={tmp_path}"])
    assert_one_line_error(res, "train.batchsize")
    assert not any(tmp_path.iterdir())


def test_indivisible_global_batch_is_refused_before_anything_is_written(
    tmp_path: Path, cache_dir: Path
) -> None:
    res = torchrun(
        ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "train.batch_size=15"], nproc=2
    )
    assert res.returncode != 0
    assert "train.batch_size=15 is not divisible by world_size" in res.stderr
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ('"1","title only"\n', "line 2"),
        ('"9","t","d"\n', "line 2"),
        ('"x","t","d"\n', "line 2"),
        ('"2","",""\n', "line 2"),
    ],
)
def test_malformed_data_rows_are_one_line_naming_file_and_row(
    tmp_path: Path, cache_dir: Path, row: str, fragment: str
) -> None:
    bad = tmp_path / "train.csv.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write('"1","Good title","good description"\n' + row)
    res = scalelab(["train", "data.source=files", f"data.train_path={bad}",
                    "data.test_path=src/scalelab/data/bundled/ag_news_test.csv.gz", *common(tmp_path, cache_dir)])  # fmt: skip
    assert_one_line_error(res, "train.csv.gz")
    assert fragment in res.stderr
    assert not (tmp_path / "exp").exists()


def test_bad_encoding_and_missing_file(tmp_path: Path, cache_dir: Path) -> None:
    bad = tmp_path / "latin.csv"
    bad.write_bytes('"1","caf\xe9","d"\n'.encode("latin-1"))
    test = "src/scalelab/data/bundled/ag_news_test.csv.gz"
    res = scalelab(
        [
            "train",
            "data.source=files",
            f"data.train_path={bad}",
            f"data.test_path={test}",
            *common(tmp_path, cache_dir),
        ]
    )
    assert_one_line_error(res, "latin.csv")
    res = scalelab(
        [
            "train",
            "data.source=files",
            f"data.train_path={tmp_path}/nope.csv",
            f"data.test_path={test}",
            *common(tmp_path, cache_dir),
        ]
    )
    assert_one_line_error(res, "nope.csv")


def test_existing_run_is_never_overwritten_and_bad_checkpoint_is_one_line(
    tmp_path: Path, cache_dir: Path
) -> None:
    args = [
        "train",
        *common(tmp_path, cache_dir),
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
        "output.run_name=r",
    ]
    assert scalelab(args).returncode == 0
    metrics = (tmp_path / "exp" / "r" / "metrics.csv").read_bytes()
    res = scalelab(args)
    assert_one_line_error(res, "already holds a run")
    assert (tmp_path / "exp" / "r" / "metrics.csv").read_bytes() == metrics
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    res = scalelab([*args[:-1], "output.run_name=r2", f"train.resume={junk}"])
    assert_one_line_error(res, "junk.pt: not a checkpoint (torch.save files start with a zip")
    junk.write_bytes(b"PK\x03\x04 cut off")  # a zip header, then nothing torch can read
    res = scalelab([*args[:-1], "output.run_name=r2", f"train.resume={junk}"])
    assert_one_line_error(res, "not a readable checkpoint")


def test_distilbert_preset_trains_a_few_steps(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("transformers")
    res = scalelab(
        ["train", "--config", "ag_news_distilbert", f"output.dir={tmp_path}", f"data.cache_dir={cache_dir}",
         "output.run_name=db", "data.max_train_samples=64", "data.max_test_samples=16", "train.epochs=1",
         "train.batch_size=8", "model.max_seq_len=32", "train.max_steps_per_epoch=2"]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "db" / "summary.json").read_text())
    assert summary["model_arch"] == "distilbert" and summary["num_params"] > 60_000_000
    assert summary["timing"]["step_ms"] > 0  # 2 steps: 1 warm-up, 1 measured


def test_bf16_comm_hook_on_gloo_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    res = torchrun(
        ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "distributed.comm_hook=bf16"],
        nproc=2,
    )
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("scalelab: error:")]
    assert len(errors) == 1 and "comm_hook=bf16 needs CUDA" in errors[0]


def test_bf16_autocast_trains_on_a_cpu_as_fp32_does(tmp_path: Path, cache_dir: Path) -> None:
    """train.precision=bf16 on a CPU: autocast there (fp32 weights and optimizer), recorded as
    bf16, and the same batches end near fp32's losses (the bf16 matmuls round, nothing else)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        res = scalelab(
            ["train", *common(tmp_path, cache_dir), "train.epochs=2", "train.num_threads=1",
             f"train.precision={precision}", f"output.run_name={precision}"]
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads((tmp_path / "exp" / precision / "summary.json").read_text())
        assert summary["precision"] == precision and summary["device_type"] == "cpu"
        with (tmp_path / "exp" / precision / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        losses[precision] = [float(r["train_loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses["bf16"])
    assert losses["bf16"][1] < losses["bf16"][0]  # it learns
    for fp32, bf16 in zip(losses["fp32"], losses["bf16"], strict=True):
        assert bf16 == pytest.approx(fp32, rel=0.05)
    assert losses["bf16"] != losses["fp32"]  # autocast did run: the rounding shows


def test_checkpoint_of_another_model_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    args = ["train", *common(tmp_path, cache_dir), "train.epochs=1", "train.max_steps_per_epoch=2"]
    assert scalelab([*args, "output.run_name=a"]).returncode == 0
    ckpt = tmp_path / "exp" / "a" / "checkpoint.pt"
    res = scalelab([*args, "output.run_name=b", "model.d_model=48", f"train.resume={ckpt}"])
    # the saved config names the difference before any weight loads
    assert_one_line_error(res, "its weights are of a model with model.d_model=")
    # a checkpoint whose config records no model: the weights' own line, naming the first
    # tensor that does not fit (torch's first line names none)
    state = torch.load(ckpt, weights_only=False)
    state["config"]["model"] = {}
    torch.save(state, tmp_path / "no-model-config.pt")
    res = scalelab(
        [
            *args,
            "output.run_name=c",
            "model.d_model=48",
            f"train.resume={tmp_path / 'no-model-config.pt'}",
        ]
    )
    assert_one_line_error(res, "does not fit this model/config")
    assert (
        "model weights (size mismatch for tok_emb.weight: copying a param with shape" in res.stderr
    )


def test_static_graph_with_grad_accum_trains_under_torchrun(
    tmp_path: Path, cache_dir: Path
) -> None:
    # DDP(static_graph=True) asserts ("expect_autograd_hooks_") if its first iteration runs under
    # no_sync, which every accumulation step but the last does.
    res = torchrun(
        ["-m", "scalelab", "train", *common(tmp_path, cache_dir), "train.epochs=1",
         "train.max_steps_per_epoch=3", "train.grad_accum_steps=2", "distributed.static_graph=true",
         "train.comm_calibration_steps=2", "output.run_name=sg"],
        nproc=2,
    )  # fmt: skip
    assert res.returncode == 0, rank_errors(res)
    assert (tmp_path / "exp" / "sg" / "summary.json").is_file()


def test_stopped_run_is_not_overwritten_and_finished_run_is_not_remeasured(
    tmp_path: Path, cache_dir: Path
) -> None:
    args = ["train", *common(tmp_path, cache_dir), "train.epochs=1", "train.max_steps_per_epoch=3",
            "train.num_threads=1", "train.precision=auto"]  # fmt: skip
    # stopped in its first epoch: a checkpoint but no metrics.csv yet
    assert scalelab([*args, "output.run_name=s", "train.stop_after_steps=1"]).returncode == 0
    ckpt = (tmp_path / "exp" / "s" / "checkpoint.pt").read_bytes()
    res = scalelab([*args, "output.run_name=s"])
    assert_one_line_error(res, "already holds a run")
    assert (tmp_path / "exp" / "s" / "checkpoint.pt").read_bytes() == ckpt
    # resume=auto on a finished run leaves its summary (warm-up timing included) alone
    assert scalelab([*args, "output.run_name=s", "train.resume=auto"]).returncode == 0
    summary = (tmp_path / "exp" / "s" / "summary.json").read_bytes()
    # the warm-up really excluded (capped at half of what is left of the 3-step epoch), in both
    # invocations: 1 step before the stop, 1 of the 2 after; and the precision used
    t = json.loads(summary)["timing"]
    assert (t["warmup_steps"], t["warmup_invocations"]) == (2, 2) and t["warmup_time_s"] > 0
    assert json.loads(summary)["precision"] == "fp32"  # train.precision=auto on CPU
    again = scalelab([*args, "output.run_name=s", "train.resume=auto"])
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert (tmp_path / "exp" / "s" / "summary.json").read_bytes() == summary


def test_compiled_run_trains_and_its_checkpoint_resumes_without_compile(
    tmp_path: Path, cache_dir: Path
) -> None:
    """train.compile=true (here with data.pad_multiple, as on a GPU) writes the plain model's
    state: the same keys as an eager run, and an eager run resumes from it."""
    base = ["train", *common(tmp_path, cache_dir), "train.max_steps_per_epoch=3",
            "train.num_threads=1", "train.comm_calibration_steps=0"]  # fmt: skip
    compiled = scalelab([*base, "train.epochs=1", "output.run_name=c", "train.compile=true",
                         "data.pad_multiple=16"])  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    eager = scalelab([*base, "train.epochs=1", "output.run_name=e"])
    assert eager.returncode == 0, eager.stderr[-3000:]
    ck_c = torch.load(tmp_path / "exp" / "c" / "checkpoint.pt", weights_only=False)
    ck_e = torch.load(tmp_path / "exp" / "e" / "checkpoint.pt", weights_only=False)
    assert ck_c["model"].keys() == ck_e["model"].keys()
    summary = json.loads((tmp_path / "exp" / "c" / "summary.json").read_text())
    assert summary["data"]["pad_multiple"] == 16 and summary["final_val_loss"] > 0
    assert summary["data"]["on_device"] is False  # the config says True; CPU keeps it on the host
    resumed = scalelab([*base, "train.epochs=2", "output.run_name=c", "train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "exp" / "c" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_resuming_a_checkpoint_into_another_runs_folder_is_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    base = ["train", *common(tmp_path, cache_dir), "train.epochs=1", "train.max_steps_per_epoch=6",
            "train.num_threads=1", "train.stop_after_steps=2"]  # fmt: skip
    for name in ("a", "b"):
        assert scalelab([*base, f"output.run_name={name}"]).returncode == 0
    b_ckpt = tmp_path / "exp" / "b" / "checkpoint.pt"
    before = b_ckpt.read_bytes()
    # b's files would have been replaced by a's run continued there
    res = scalelab(
        [*base, "output.run_name=b", f"train.resume={tmp_path / 'exp' / 'a' / 'checkpoint.pt'}"]
    )
    assert_one_line_error(res, "already holds another run")
    assert b_ckpt.read_bytes() == before
