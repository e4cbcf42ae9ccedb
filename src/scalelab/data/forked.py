"""One function run in a forked child process while this process does other work.

Data preparation is Python work on one core (reading CSV, encoding), and it comes in pairs:
the training and the test split. With the fork start method the child shares this process's
memory (texts, tokenizer) without copying or pickling it; only its result travels back, pickled
through a pipe. The tokenizers library turns its own thread pool off in a forked child.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any


def fork_context() -> multiprocessing.context.BaseContext | None:
    """The fork start method where it exists, this process may start one (a daemonic
    multiprocessing worker may not) and it may use two or more cores."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    if multiprocessing.current_process().daemon:
        return None
    from scalelab.host import available_cpus

    return multiprocessing.get_context("fork") if available_cpus() > 1 else None


_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this child when its parent dies. Otherwise a SIGKILLed trainer
    left it working for nobody, and then blocked for good sending a result larger than the
    pipe holds (the child's own copy of the read end kept the pipe open). Elsewhere: nothing.
    (Linux ties this to the forking thread: should that thread end first, the child is killed
    early and `result()` computes the answer in the parent instead, as for any dead child.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _child(
    conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], parent_pid: int | None = None
) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    try:
        answer: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:  # the parent re-raises it, with the child's traceback as a note
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"in the forked child process:\n{traceback.format_exc()}")
        answer = ("error", exc)
    gone = (BrokenPipeError, ConnectionResetError)  # the parent left the block early, or died
    try:
        conn.send(answer)
    except gone:
        pass  # nobody to tell
    except Exception as exc:  # an exception that does not pickle
        with contextlib.suppress(*gone):
            conn.send(("error", RuntimeError(f"{fn.__name__} failed in a child process: {exc!r}")))
    finally:
        conn.close()


@contextlib.contextmanager
def forked(fn: Callable[..., Any], *args: Any, enabled: bool = True) -> Iterator[Callable[[], Any]]:
    """``with forked(fn, *args) as result:`` starts ``fn(*args)`` in a forked child; ``result()``
    waits for its value (or re-raises its exception). Without fork or a second core, with
    ``enabled`` false, or if the child dies without answering (killed for memory, say),
    ``result()`` computes ``fn(*args)`` here instead. Leaving the block early stops the child.
    """
    ctx = fork_context() if enabled else None
    if ctx is None:
        yield lambda: fn(*args)
        return
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, args, os.getpid()), daemon=True)  # type: ignore[attr-defined]
    child.start()
    send.close()
    answered = False

    def result() -> Any:
        nonlocal answered
        try:
            status, value = receive.recv()
        except EOFError:
            answered = True
            return fn(*args)
        answered = True
        if status == "error":
            raise value
        return value

    try:
        yield result
    finally:
        receive.close()
        if not answered:
            child.terminate()
        child.join()
