"""Shared test helpers: run real processes under the real launcher (torchrun), gloo on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the processes tests start: unbuffered output, and no GPU even on a CUDA
    machine (CUDA_VISIBLE_DEVICES=""), so the multi-process tests run gloo on the CPU as they
    assert."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **(extra or {})}


def run_process_group(
    cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: int
) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in a session of its own: on timeout
    the whole group is killed, so no rank of a hung run is left behind (subprocess.run would kill
    torchrun alone and orphan its ranks)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def torchrun(
    args: list[str],
    nproc: int,
    *,
    cwd: Path | None = None,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N <args>`; --standalone picks a free port itself."""
    full_env = subprocess_env({"OMP_NUM_THREADS": "1", **(env or {})})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *args,
    ]
    return run_process_group(cmd, cwd=cwd or REPO, env=full_env, timeout=timeout)


def rank_errors(res: subprocess.CompletedProcess) -> str:
    """The ranks' own tracebacks from torchrun's output (its summary alone says little)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("[rank")]
    return "\n".join(lines[-60:]) or res.stderr[-3000:]


def scalelab(
    args: list[str],
    *,
    cwd: Path | None = None,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh single process, as a user would."""
    cmd = [sys.executable, "-m", "scalelab", *args]
    return run_process_group(cmd, cwd=cwd or REPO, env=subprocess_env(env), timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2 and exactly one non-empty stderr line: the CLI's error, naming `fragment`."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("scalelab: error:") and fragment in lines[0], lines[0]


def tiny_slow_run(steps: int, delay_s: float) -> list[str]:
    """Overrides for a tiny 1-epoch run of `steps` steps, each batch delayed by `delay_s`, so that a
    signal sent after its first progress line lands mid-training."""
    return [
        "data.max_train_samples=600", "data.max_test_samples=100", "model.vocab_size=2000",
        "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.d_ff=64",
        "model.max_seq_len=64", "train.batch_size=16", "train.epochs=1", "output.progress=plain",
        "train.log_every_steps=5", "train.comm_calibration_steps=2",
        f"train.max_steps_per_epoch={steps}", f"data.delay_per_batch_s={delay_s}",
    ]  # fmt: skip


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One encoded-data cache per test session keeps tests from re-tokenising the sample."""
    return tmp_path_factory.getbasetemp() / "scalelab_cache"


@pytest.fixture
def forked_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A function returning the pids of the forked children started since the last call (via
    scalelab.data.forked; each writes its pid to a file, as its memory is not ours). `forked`
    falls back to running in this process quietly, so a test of the child path checks this."""
    from scalelab.data import forked

    log = tmp_path / "forked-children.txt"
    real = forked._child

    def spy(conn, fn, args, parent_pid=None):  # runs in the child
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        real(conn, fn, args, parent_pid)

    monkeypatch.setattr(forked, "_child", spy)

    def since_last_call() -> list[int]:
        pids = [int(p) for p in log.read_text().split()] if log.exists() else []
        log.unlink(missing_ok=True)
        assert os.getpid() not in pids
        return pids

    return since_last_call
