"""Atomic checkpoints (write temp, fsync, rename), loading them back for resume, and stopping
cleanly on a preemption signal so that a resumed run continues where it stopped."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from scalelab.config import first_line, is_number

CHECKPOINT_NAME = "checkpoint.pt"
#: The run folder's lock file (`lock_run_folder`): who trains into the folder now.
LOCK_NAME = ".lock"
FORMAT_VERSION = 1


def holds_run(folder: Path) -> bool:
    """The folder records a run (a checkpoint, epoch rows or a summary) that a new run would
    overwrite; a config.yaml alone does not (a run that stopped before its first epoch)."""
    return any(
        (folder / name).exists() for name in (CHECKPOINT_NAME, "metrics.csv", "summary.json")
    )


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (one clear line for the user)."""


def lock_run_folder(folder: Path) -> IO[str] | None:
    """Hold `folder` for this process's run: an exclusive lock (flock) on its LOCK_NAME file,
    released when the returned file is closed or this process ends, however it ends (a killed
    run leaves no stale lock). Refuses, with one line naming the holder, a second run into a
    folder another run trains into now: two jobs with one output.run_name, or a job resubmitted
    while the first still runs, would resume from each other's checkpoints and interleave their
    files. None (no lock) where the file system does not lock (some network mounts) or the
    lock file cannot be made (a read-only folder: its writes then fail with their own line)."""
    path = folder / LOCK_NAME
    try:
        f = path.open("a+", encoding="utf-8", errors="replace")
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = (f.read().strip().splitlines() or ["a process that did not say"])[0][:200]
        f.close()
        raise CheckpointError(
            f"run folder {folder} is in use by another run ({holder}): wait until it stops, "
            "or choose another output.run_name"
        ) from None
    except OSError:  # ENOLCK and the like: train unlocked, as before
        f.close()
        return None
    try:  # who holds it, for the refusal above (the lock, not this text, decides)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
    except OSError:
        pass
    return f


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; once, at import, before any thread writes
    os.umask(mask)
    return mask


#: What a plain ``open`` gives a new file (0666 less the umask); mkstemp's own 0600 would hide
#: run folders and caches from the group that shares them.
PLAIN_FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call write(fileobj) on a temp file beside `path`, fsync it, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one. The
    file gets `PLAIN_FILE_MODE`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PLAIN_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make a rename in it durable
    finally:
        os.close(dir_fd)


def move_aside(path: Path, dest: Path) -> None:
    """Rename `path` to `dest` (same folder; replaces `dest`) in one atomic, durable step: a crash
    leaves the file under one of the two names, whole."""
    os.replace(path, dest)
    _fsync_dir(dest.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _free_space(folder: Path) -> str:
    try:
        return f"; {shutil.disk_usage(folder).free / 1e9:.2f} GB free there"
    except OSError:
        return ""


def write_run_file(path: Path, text: str) -> None:
    """A run folder's text file (config.yaml, metrics.csv, summary.json) written atomically; a
    failed write (a full disk, a read-only folder) is one line and leaves the old file whole."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write it ({first_line(exc)}){_free_space(path.parent)}; the "
            "previous file, if any, is unchanged"
        ) from None


def numpy_rng_plain(state: tuple[Any, ...]) -> tuple[Any, ...]:
    """`np.random.get_state()` with its key array as a tensor: a checkpoint then holds only
    tensors and plain values, which `torch.load(weights_only=True)` reads without running code."""
    name, keys, *rest = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), *rest)


def numpy_rng_state(plain: tuple[Any, ...]) -> tuple[Any, ...]:
    """Undo `numpy_rng_plain` (an older checkpoint's numpy array passes through)."""
    name, keys, *rest = plain
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), *rest)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": numpy_rng_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    # only where this process used CUDA: a CPU run on a GPU machine creates no CUDA context
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(numpy_rng_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda"])  # a GPU run has its model on the GPU by now


@contextlib.contextmanager
def _ctrl_c_after(pending: list[int]) -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back until the block ends, then raise it. Raised inside torch.save,
    whose C++ writer calls the file's write, it surfaced as a failed write ("unexpected pos")
    instead of an interrupt, and the checkpoint being written was lost. A second Ctrl-C
    interrupts at once (a write stuck on a network file system must stay stoppable)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield  # only the main thread may set handlers; a handler of the caller's stays in charge
        return

    def hold(signum: int, frame: Any) -> None:  # `pending`: the Ctrl-Cs received
        pending.append(signum)
        if len(pending) > 1:  # the second: the previous checkpoint stays (atomic_write_bytes)
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically; a failed write (a full disk) is one line, and the previous
    checkpoint stays as it was. Ctrl-C during the write stops the run after it."""
    state = {"format_version": FORMAT_VERSION, **state}
    ctrl_c: list[int] = []
    try:
        with _ctrl_c_after(ctrl_c):
            atomic_write_bytes(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as exc:  # torch.save reports a short write as RuntimeError
        if len(ctrl_c) > 1:  # a second Ctrl-C, raised inside the writer: an interrupt
            raise KeyboardInterrupt from None
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({first_line(exc)})"
            f"{_free_space(path.parent)}; the previous checkpoint, if any, is unchanged"
        ) from None


def _numpy_array_globals() -> list[Any]:
    """numpy arrays and RandomState (PowerSGD's), as checkpoints from before numpy_rng_plain
    pickled them: constructors of data, none that runs arbitrary code."""
    from numpy.random import _mt19937, _pickle

    core = getattr(np, "_core", None) or np.core
    return [
        core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
        _pickle.__randomstate_ctor, _pickle.__bit_generator_ctor, _mt19937.MT19937,
        np.random.RandomState,
    ]  # fmt: skip


_OLD_NUMPY_GLOBALS = _numpy_array_globals()


def _why(exc: Exception) -> str:
    """The telling line of a torch.load failure (weights_only's starts with advice to load
    unsafely, which a user should not take for a file of unknown origin)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        found = next((ln for ln in lines[1:] if "global" in ln.lower()), "")
        text = "it holds objects other than tensors and plain values, which scalelab does not load"
        text += f": {found}" if found else ""
    else:
        telling = lines[0].split("  (Could this error message be improved?")[0] if lines else ""
        if isinstance(exc, (RuntimeError, OSError, EOFError)):
            telling = f"truncated or corrupt: {telling}" if telling else "truncated or corrupt"
        text = f"{type(exc).__name__}: {telling}" if telling else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "rng")

#: The config sections a checkpoint's `config` holds (Config.to_dict); each must be a mapping.
_CONFIG_SECTIONS = ("model", "data", "train", "distributed", "output")
#: metrics.csv columns every version of the trainer wrote into an epoch's row
_METRIC_CORE = ("epoch", "train_loss", "val_loss", "val_acc", "epoch_time_s", "samples_per_s")


def _describe(value: Any) -> str:
    """A field's value as an error shows it: a short repr of a plain value, else its kind."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, torch.Tensor):
        return "a tensor"
    if isinstance(value, (list, tuple)):  # the length is what a per-rank field gets wrong
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, dict):  # the keys are what a row or record gets wrong
        keys = ", ".join(
            _describe(k) if not isinstance(k, str) else k[:20] for k in list(value)[:6]
        )
        keys = " ".join(keys.split()) + (", ..." if len(value) > 6 else "")  # one line
        return f"a dict of {keys}" if value else "an empty dict"
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _plain(value: Any) -> bool:
    """A config value as YAML holds it: None, a bool, a number or text."""
    return value is None or isinstance(value, (bool, int, float, str))


def is_count(value: Any) -> bool:
    """A whole number >= 0 (not a bool)."""
    return is_number(value) and isinstance(value, int) and value >= 0


def _check_fields(path: Path, state: dict[str, Any]) -> None:
    """Raise CheckpointError naming the file and the first field of the wrong type: resuming
    indexes and adds these, so a wrong type would otherwise be a traceback mid-way (or after
    config.yaml was rewritten)."""

    def bad(field: str, value: Any, expected: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: checkpoint field {field} is {_describe(value)}, expected {expected}"
        )

    for key in ("model", "optimizer", "scheduler"):
        if not isinstance(state[key], dict):
            raise bad(key, state[key], "a dict (a state_dict)")
    optimizer = state["optimizer"]
    for key, kind in (("state", dict), ("param_groups", list)):
        if key not in optimizer:
            raise CheckpointError(f"{path}: checkpoint field optimizer lacks {key}")
        if not isinstance(optimizer[key], kind):
            raise bad(f"optimizer.{key}", optimizer[key], f"a {kind.__name__}")
    for i, group in enumerate(optimizer["param_groups"]):
        if not isinstance(group, dict):
            raise bad(f"optimizer.param_groups[{i}]", group, "a dict")
    for key, value in state["model"].items():
        if not isinstance(value, torch.Tensor):
            raise bad(f"model.{key}", value, "a tensor")
        if value.is_meta:  # holds no values: the first .item() on it was a traceback
            raise CheckpointError(
                f"{path}: checkpoint field model.{key} is a meta tensor (no data)"
            )
        # a run that diverged was saved so (fp16's scaler skips such steps, the others do not):
        # resumed, every step after would compute NaN
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{path}: checkpoint field model.{key} holds NaN or infinite weights (the "
                "run had diverged when it was saved); start again, e.g. with a lower train.lr"
            )
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        raise bad("scaler", state["scaler"], "a dict or None")
    for key in ("epoch", "step_in_epoch", "global_step"):
        if not is_count(state[key]):
            raise bad(key, state[key], "a whole number >= 0")
    if state["step_in_epoch"] > state["global_step"]:
        raise bad(
            "step_in_epoch",
            state["step_in_epoch"],
            f"at most global_step ({state['global_step']})",
        )
    rngs = state["rng"]
    if not isinstance(rngs, list) or not rngs:
        raise bad("rng", rngs, "a list with one RNG state per rank")
    for r, rng in enumerate(rngs):
        if not isinstance(rng, dict):
            raise bad(f"rng[{r}]", rng, "a dict of RNG states")
        if missing := [k for k in ("python", "numpy", "torch") if k not in rng]:
            raise CheckpointError(f"{path}: checkpoint field rng[{r}] lacks {', '.join(missing)}")
    ranks = len(rngs)
    if "world_size" in state and state["world_size"] != ranks:
        raise bad("world_size", state["world_size"], f"the number of RNG states ({ranks})")
    # one entry per rank (None: saved by a version that did not record it, or a stateless hook)
    per_rank = {
        # a loss sum may be NaN (fp16 skips the steps that overflow), never negative or infinite
        "epoch_loss_sums": (
            "a number >= 0",
            lambda v: is_number(v) and (math.isnan(v) or (math.isfinite(v) and v >= 0)),
        ),
        "epoch_tokens": ("a whole number >= 0", is_count),
        "epoch_phases": ("a dict or None", lambda v: v is None or isinstance(v, dict)),
        "comm_hook_state": ("a dict", lambda v: isinstance(v, dict)),
    }
    for key, (want, ok) in per_rank.items():
        values = state.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != ranks:
            raise bad(key, values, f"a list of {ranks} (one per rank)")
        for r, v in enumerate(values):
            if not ok(v):
                raise bad(f"{key}[{r}]", v, want)
    for r, phases in enumerate(state.get("epoch_phases") or []):
        # phase means (ms; NaN: no step measured yet) and their step count
        for key, value in (phases or {}).items():
            if not (is_number(value) and (math.isnan(value) or value >= 0) and value != math.inf):
                raise bad(f"epoch_phases[{r}].{key}", value, "a number >= 0")
    elapsed = state.get("epoch_elapsed_s")
    if elapsed is not None and not (is_number(elapsed) and math.isfinite(elapsed) and elapsed >= 0):
        raise bad("epoch_elapsed_s", elapsed, "a number >= 0 or None")
    warmup = state.get("timing_warmup")  # absent in checkpoints from before it was kept
    if warmup is not None:
        if not isinstance(warmup, dict):
            raise bad("timing_warmup", warmup, "a dict")
        for key, value in warmup.items():  # steps, seconds and invocations left out of timing
            if not (is_number(value) and value >= 0):
                raise bad(f"timing_warmup.{key}", value, "a number >= 0")
    changes = state.get("config_changes")  # absent in checkpoints from before they were kept
    if changes is not None:
        if not isinstance(changes, list):
            raise bad("config_changes", changes, "a list")
        for i, change in enumerate(changes):
            if not (
                isinstance(change, dict)
                and isinstance(change.get("key"), str)
                and is_count(change.get("epoch"))
                and is_count(change.get("step"))
            ):
                raise bad(
                    f"config_changes[{i}]",
                    change,
                    "a dict of key (text), epoch and step (whole numbers >= 0), before, after",
                )
    settings = state.get("timed_settings")  # absent in checkpoints from before they were kept
    if settings is not None and not (
        isinstance(settings, dict)
        and all(isinstance(k, str) and _plain(v) for k, v in settings.items())
    ):
        raise bad("timed_settings", settings, "a dict of setting names to plain values")
    metrics = state.get("metrics")
    if metrics is None and state["epoch"] > 0:
        # the resume rewrites metrics.csv from these rows: without them it would lose its rows
        raise bad("metrics", metrics, f"a list of {state['epoch']} per-epoch rows")
    if metrics is not None:
        if not isinstance(metrics, list):
            raise bad("metrics", metrics, "a list of per-epoch rows (dicts)")
        for i, row in enumerate(metrics):
            if not isinstance(row, dict):
                raise bad(f"metrics[{i}]", row, "a dict (one epoch's row)")
            for k, v in row.items():
                if not isinstance(k, str) or not (v is None or is_number(v)):
                    raise bad(f"metrics[{i}].{k}", v, "a number")
                # every figure the trainer records is >= 0 (a loss may be NaN: diverged); the
                # resume writes these rows back to metrics.csv
                if is_number(v) and (v < 0 or (k == "val_acc" and not 0 <= v <= 1)):
                    want = "a fraction in [0, 1]" if k == "val_acc" else "a number >= 0"
                    raise bad(f"metrics[{i}].{k}", v, want)
        # one row per finished epoch: the resume rewrites metrics.csv from them
        if len(metrics) != state["epoch"]:
            raise CheckpointError(
                f"{path}: checkpoint field metrics has {len(metrics)} rows, expected one per "
                f"finished epoch ({state['epoch']})"
            )
        # rows that replace metrics.csv's: epoch i + 1's, with the figures every version of the
        # trainer recorded
        for i, row in enumerate(metrics):
            if row.get("epoch") != i + 1:
                raise bad(f"metrics[{i}].epoch", row.get("epoch"), f"{i + 1} (rows in epoch order)")
            if missing := [k for k in _METRIC_CORE if k not in row]:
                raise CheckpointError(
                    f"{path}: checkpoint field metrics[{i}] lacks {', '.join(missing)} (every "
                    "epoch's row records them)"
                )
    config = state.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise bad("config", config, "a dict of config sections")
        for section in _CONFIG_SECTIONS:
            if config.get(section) is not None and not isinstance(config[section], dict):
                raise bad(f"config.{section}", config[section], "a dict")
    for key, want in (("profile", dict), ("data_key", str)):
        if state.get(key) is not None and not isinstance(state[key], want):
            raise bad(key, state[key], f"{'a dict' if want is dict else 'text'} or None")
    if state.get("profile") is not None:
        try:  # it goes into summary.json as it is
            json.dumps(state["profile"], allow_nan=True)
        except (TypeError, ValueError):
            raise bad("profile", state["profile"], "a dict of plain values (JSON)") from None


def load_error(exc: BaseException) -> str:
    """One line saying why a load_state_dict failed, naming the first offending key.

    torch's message starts "Error(s) in loading state_dict for X:", which names nothing; the
    problems follow, one a line (missing keys, unexpected keys, then each size mismatch).
    """
    if isinstance(exc, KeyError) and exc.args:
        return f"missing key {exc.args[0]!r}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text, more = lines[0], 0
    if text.startswith("Error(s) in loading state_dict") and len(lines) > 1:
        text, more = lines[1], len(lines) - 2
    text = text.rstrip(" .")
    text = text if len(text) <= 200 else text[:197] + "..."
    if more:
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return text


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, checking it is one of ours and its fields' types."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({first_line(exc)})") from None
    # torch.save writes a zip archive (PK..) or, in its legacy format, a pickle (protocol 2+)
    if head and not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{path}: not a checkpoint (torch.save files start with a zip or pickle header; "
            f"this one starts with {head!r})"
        )
    try:
        # weights_only: tensors and plain values only, so a foreign file cannot run code; the
        # numpy types admit the RNG states of checkpoints from before numpy_rng_plain
        with torch.serialization.safe_globals(_OLD_NUMPY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"{path}: not a readable checkpoint ({_why(exc)})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a scalelab checkpoint (no format_version)")
    version = state["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:  # True and 1.0 equal 1
        raise CheckpointError(
            f"{path}: checkpoint format_version is {_describe(version)}; this scalelab reads "
            f"format {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    _check_fields(path, state)
    return state


# ----------------------------------------------------------------------------- preemption


class TrainingStopped(Exception):
    """The run checkpointed and stopped because a signal asked it to (exit code 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGTERM (preemption; torchrun forwards it to its ranks) and SIGUSR1 (SLURM's warning before
    the time limit, `sbatch --signal=USR1@120`) ask the run to stop at a step boundary.

    The handler only records the signal; the loop polls `agreed()` so every rank stops after the
    same step even when the signal reaches them at different times. Under DDP that poll is one
    tiny all-reduce, so it runs every `every` steps (the loop passes train.log_every_steps) and
    at each epoch's end, never per step. Used as a context manager: the previous handlers come
    back on exit. Outside the main thread (where Python cannot install handlers) it never fires.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def agreed(self, all_reduce_max: Any) -> int | None:
        """The signal to stop for if any rank received one (`all_reduce_max`: float -> max over
        ranks; identity in one process). Collective: call it at the same step on every rank."""
        signum = int(all_reduce_max(float(self.received or 0)))
        return signum or None
