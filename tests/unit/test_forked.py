"""scalelab.data.forked: a child that outlives nobody and leaves quietly when nobody listens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scalelab.data.forked import fork_context, forked

needs_fork = pytest.mark.skipif(fork_context() is None, reason="needs fork and 2 cores")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _started_child(pid_file: Path) -> int:
    """The pid the child wrote into `pid_file` once it started (and still runs)."""
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    return child


@needs_fork
def test_the_child_dies_with_its_sigkilled_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import os, time
        from scalelab.data.forked import forked

        def work():
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(60)  # still working when its parent is killed
            return 1

        with forked(work) as result:
            time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    child = _started_child(pid_file)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = not _alive(child)
    if not gone:  # the old behaviour: an orphan working (or blocked sending) for nobody
        os.kill(child, signal.SIGKILL)
    assert gone, "the forked child outlived its SIGKILLed parent"
    out, err = parent.communicate(timeout=10)  # the child held these pipes too: now closed
    assert err.decode() == "" and out.decode() == ""


def _write_pid_and_sleep(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(30)


@needs_fork
def test_leaving_the_block_early_stops_the_child_quietly(tmp_path, capfd):
    pid_file = tmp_path / "child.pid"
    with forked(_write_pid_and_sleep, pid_file):
        child = _started_child(pid_file)
        # result() never called: the block is left while the child still works
    assert not _alive(child), "the child still runs after the block"
    assert capfd.readouterr().err == ""


@needs_fork
def test_the_result_and_the_error_of_the_child_come_back():
    with forked(os.getpid) as result:
        assert result() != os.getpid()
    with forked(int, "not a number") as result, pytest.raises(ValueError, match="not a number"):
        result()
