"""`scalelab slurm` on a real (local, one-node) SLURM cluster: the job trains with srun + torchrun
on 2 ranks, SIGUSR1 to the batch shell (what `--signal=B:USR1@T` sends before the time limit)
makes the ranks checkpoint, the job requeues itself, resumes, and ends with the weights of an
uninterrupted run; a user's scancel checkpoints too but leaves the job cancelled."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, rank_errors, tiny_slow_run, torchrun
from tests.slurm_cluster import LocalSlurm, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))]
TINY = tiny_slow_run(steps=36, delay_s=0.15)  # ~4.5 s of training left after step 5


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def _wait(what: str, cond, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _submit(slurm: LocalSlurm, out: Path, args: list[str]) -> tuple[str, Callable[[], str]]:
    """`scalelab slurm` a 2-rank job of `args` into `out`: its job id and a reader of its log."""
    res = subprocess.run(
        [sys.executable, "-m", "scalelab", "slurm", "--config", "ag_news_small",
         "--procs-per-node", "2", "--cpus-per-task", "2", "--out", str(out), *args],
        cwd=REPO, env=slurm.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)
    log = out / "slurm" / f"ag_news_small-ws2-{job_id}.out"
    return job_id, lambda: log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of the same run, uninterrupted, under torchrun (2 ranks)."""
    out = tmp_path_factory.mktemp("ref")
    cache = tmp_path_factory.getbasetemp() / "scalelab_cache"
    ref = torchrun(["-m", "scalelab", "train", *TINY, f"data.cache_dir={cache}",
                    f"output.dir={out}", "output.run_name=full"], nproc=2)  # fmt: skip
    assert ref.returncode == 0, rank_errors(ref)
    return out / "full" / "checkpoint.pt"


def _stop_requeue_and_finish(
    slurm: LocalSlurm, out: Path, cache_dir: Path, reference: Path, stop: Callable[[str], None]
) -> str:
    """Submit the run, `stop(job_id)` it mid-training, wait for its requeue, start it again and
    check it ends with the uninterrupted run's weights; returns the job's log."""
    job_id, log_text = _submit(slurm, out, [*TINY, f"data.cache_dir={cache_dir}"])
    _wait("training to start", lambda: "epoch 1/1 step 5/" in log_text())
    stop(job_id)
    _wait("the requeue", lambda: slurm.scontrol_job(job_id).get("Restarts") == "1")
    # A requeued job may not start for ~2 min (SLURM's BeginTime delay): start it now, but only
    # once the node has cleaned up the first run (and any job that preempted it) and a second
    # has passed. slurmd revokes the first run's credential, and a new one issued within the
    # same second counts as revoked ("Killing non-startable batch job: Job credential revoked":
    # the job fails, never resumes).
    _wait(
        "the node to be idle", lambda: slurm.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle"
    )
    time.sleep(2.0)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    _wait("the job to finish", lambda: slurm.scontrol_job(job_id).get("JobState") == "COMPLETED")

    text = log_text()
    assert re.search(r"stopped after \d+ steps on SIGTERM", text), text
    assert "requeueing job" in text and "resumed" in text, text
    run = out / "ag_news_small-ws2"
    assert (run / "summary.json").is_file()
    a = torch.load(reference, weights_only=False)
    b = torch.load(run / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    return text


def test_job_requeues_on_sigusr1_and_resumes_to_the_uninterrupted_weights(
    slurm: LocalSlurm, tmp_path: Path, cache_dir: Path, reference: Path
) -> None:
    def time_limit_near(job_id: str) -> None:  # what --signal=B:USR1@T sends
        slurm.run("scancel", "--signal=USR1", "--batch", job_id)

    text = _stop_requeue_and_finish(
        slurm, tmp_path / "study", cache_dir, reference, time_limit_near
    )
    assert "SIGUSR1 received" in text, text


def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_weights(
    slurm: LocalSlurm, tmp_path: Path, cache_dir: Path, reference: Path
) -> None:
    """A job of the higher-priority partition preempts the run (PreemptMode=REQUEUE with a
    GraceTime: SLURM sends SIGTERM to the step only, and a job that exits within its grace time
    ended FAILED; the batch shell now sees the PreemptTime and requeues it)."""

    def preempt(job_id: str) -> None:
        slurm.run("sbatch", "--partition=urgent", f"--ntasks={os.cpu_count() or 1}",
                  f"--output={tmp_path / 'urgent.out'}", "--wrap", "sleep 2")  # fmt: skip

    text = _stop_requeue_and_finish(slurm, tmp_path / "study", cache_dir, reference, preempt)
    assert "(preempted)" in text and "SIGUSR1" not in text, text


def test_a_users_scancel_checkpoints_and_is_not_requeued(
    slurm: LocalSlurm, tmp_path: Path, cache_dir: Path
) -> None:
    """`scancel <job>` sends SIGTERM as a preemption does: the ranks checkpoint, and the job
    stays cancelled (the batch shell used to requeue it: the job started again 2 minutes later)."""
    out = tmp_path / "study"
    job_id, log_text = _submit(slurm, out, [*TINY, f"data.cache_dir={cache_dir}"])

    _wait("training to start", lambda: "epoch 1/1 step 5/" in log_text())
    slurm.run("scancel", job_id)
    _wait("the batch shell to end", lambda: "stopped on SIGTERM without a preemption" in log_text())
    _wait(
        "the job to leave the node",
        lambda: slurm.scontrol_job(job_id).get("JobState") != "COMPLETING",
    )
    time.sleep(3.0)  # a requeue would show by now: PENDING with Restarts=1
    job = slurm.scontrol_job(job_id)
    assert job.get("JobState") == "CANCELLED" and job.get("Restarts") == "0", job
    text = log_text()
    assert re.search(r"stopped after \d+ steps on SIGTERM", text), text
    assert "requeueing job" not in text and "Invalid job id" not in text, text
    assert (out / "ag_news_small-ws2" / "checkpoint.pt").is_file()
