"""exit_process: a rank that joined a process group leaves without the interpreter's teardown."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    from scalelab import distributed as D
    atexit.register(lambda: print("teardown ran", flush=True))
    print("before exit", end="")  # no newline, no flush: exit_process must flush it
    D._joined_process_group = {joined}
    sys.exit(D.exit_process(3))
    """
)


def _run(joined: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(joined=joined)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rank_that_joined_a_group_skips_teardown_and_keeps_its_output() -> None:
    res = _run(joined=True)
    assert res.returncode == 3
    assert res.stdout == "before exit"  # flushed, and atexit handlers did not run


def test_process_without_a_group_exits_normally() -> None:
    res = _run(joined=False)
    assert res.returncode == 3
    assert res.stdout == "before exitteardown ran\n"
