"""Read run folders (config.yaml, metrics.csv, summary.json) written by the trainer.

The analysis layer only reads files from disk: it never imports torch or the trainer, so
reports can be produced on a laptop from folders copied off a cluster.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalelab.config import first_line, is_number

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
REQUIRED_FILES = (SUMMARY_FILE, METRICS_FILE)


class AnalysisError(ValueError):
    """A user-facing problem with the analysed inputs; the message is one line."""


@dataclass
class Run:
    """One training run: its resolved config, per-epoch metrics and end-of-run summary."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    timing: dict[str, Any] = field(init=False)
    comm: dict[str, Any] = field(init=False)
    system: dict[str, Any] = field(init=False)
    data: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        # Older or partial summaries may lack a section; empty dicts keep every reader simple.
        self.timing = self.summary.get("timing") or {}
        self.comm = self.summary.get("comm") or {}
        self.system = self.summary.get("system") or {}
        self.data = self.summary.get("data") or {}

    @property
    def name(self) -> str:
        return str(self.summary.get("run_name") or self.path.name)

    @property
    def preset(self) -> str:
        return str(self.summary.get("preset") or self.config.get("name") or "custom")

    @property
    def world_size(self) -> int:
        return int(self.summary.get("world_size") or 1)

    @property
    def epoch_time_s(self) -> float | None:
        """Mean epoch time (the trainer already excludes the first epoch when there are more)."""
        value = self.summary.get("mean_epoch_time_s")
        if value is None and self.metrics:
            times = [r["epoch_time_s"] for r in self.metrics if r.get("epoch_time_s") is not None]
            times = times[1:] if len(times) > 1 else times  # as the trainer: without epoch 1
            value = sum(times) / len(times) if times else None
        return None if value is None else float(value)

    def phase(self, key: str) -> float | None:
        """A per-step timing (ms) from summary.timing, e.g. 'data_ms'; None when absent or not
        finite (NaN: no step of the run was timed, e.g. all were warm-up)."""
        return _finite_or_none(self.timing.get(key))

    def comm_value(self, key: str) -> float | None:
        """A value from summary.comm; None when absent or not finite."""
        return _finite_or_none(self.comm.get(key))


def _finite_or_none(value: Any) -> float | None:
    if not is_number(value) or not math.isfinite(value):
        return None
    return float(value)


def _number(text: str) -> int | float | str | None:
    """CSV cell -> int/float where it parses (empty -> None); other text stays a string."""
    text = text.strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return None if math.isnan(value) else value


_READ_COLUMNS = ("val_acc", "epoch_time_s")  # what the report reads from metrics.csv


def read_json(path: Path) -> Any:
    """A JSON file, refusing a key given twice in one object (a hand edit: which one counts?);
    every problem of the text is a ValueError (JSONDecodeError is one)."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"key {key!r} appears twice in one object")
            out[key] = value
        return out

    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique)
    except RecursionError:  # nesting no writer of ours produces
        raise ValueError("nested too deeply") from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv -> one dict per epoch row. A file without a header, or a row with more or
    fewer cells than the header (a copy cut off mid-line, a hand edit), is refused: its missing
    cells would otherwise read as empty and the row as an epoch without those figures."""
    with path.open(newline="") as fh:
        table = [row for row in csv.reader(fh) if row]  # blank lines carry nothing
    if not table:
        raise AnalysisError(f"{path}: empty (no header line)")
    header, *body = table
    if "epoch" not in header:
        raise AnalysisError(f"{path}: line 1 is not a metrics.csv header (no 'epoch' column)")
    for column in _READ_COLUMNS:  # the trainer always writes them (empty where not measured)
        if column not in header:
            raise AnalysisError(f"{path}: no {column!r} column in the header (edited file?)")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise AnalysisError(
                f"{path}: line {i} has {len(row)} cells but the header has {len(header)} "
                "(truncated or edited file)"
            )
    return [{k: _number(v) for k, v in zip(header, row, strict=True) if k} for row in body]


def _missing(folder: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def load_run(path: str | Path) -> Run:
    """Load one run folder; raise AnalysisError naming the folder and what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise AnalysisError(f"{folder}: not a run folder (does not exist or is not a directory)")
    missing = _missing(folder)
    if missing:
        raise AnalysisError(f"{folder}: not a complete run folder, missing {', '.join(missing)}")
    try:
        summary = read_json(folder / SUMMARY_FILE)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise AnalysisError(f"{folder / SUMMARY_FILE}: unreadable JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise AnalysisError(f"{folder / SUMMARY_FILE}: expected a JSON object")
    _check_summary(folder / SUMMARY_FILE, summary)
    try:
        metrics = _read_metrics(folder / METRICS_FILE)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{folder / METRICS_FILE}: unreadable CSV ({exc})") from None
    _check_metrics(folder / METRICS_FILE, metrics)
    ranks = {row.get("world_size") for row in metrics} - {None}
    if ranks - {summary["world_size"]}:
        raise AnalysisError(
            f"{folder / METRICS_FILE}: rows of world size {', '.join(f'{n:g}' for n in sorted(ranks))}, "
            f"but {SUMMARY_FILE} is of a {summary['world_size']:g}-rank run: the files are of "
            "different runs"
        )
    epochs = summary.get("num_epochs")
    if is_number(epochs) and epochs != len(metrics):
        raise AnalysisError(
            f"{folder / METRICS_FILE}: {len(metrics)} epoch row(s), but {SUMMARY_FILE} is of a "
            f"run of {epochs:g} epoch(s): the files are of different runs or stages of one "
            "(a run continued and not finished, or a file cut off)"
        )
    config: Any = {}
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise AnalysisError(f"{config_path}: unreadable YAML ({first_line(exc)})") from None
        if not isinstance(config, dict):
            raise AnalysisError(f"{config_path}: expected a mapping of config sections")
    return Run(path=folder, config=config, metrics=metrics, summary=summary)


# What the analysis reads from summary.json, by type: a wrong type must fail at load time with
# the file and field named, not as a traceback deep inside a table or plot.
_TEXT_FIELDS = (
    "run_name", "preset", "dataset", "model_arch", "torch_version", "python_version",
    "device_type", "device_name", "backend", "git_commit", "precision", "compile",
)  # fmt: skip
# the text fields the analysis branches on, and every value the trainer writes there
_TEXT_CHOICES = {
    "device_type": ("cpu", "cuda"),
    "backend": ("none", "gloo", "nccl"),
    "precision": ("fp32", "bf16", "fp16"),
}
_NUMBER_FIELDS = (
    "world_size", "num_nodes", "local_world_size", "device_count", "num_params", "global_batch",
    "per_rank_batch", "grad_accum_steps", "num_epochs", "num_train_samples", "num_test_samples",
    "mean_tokens_per_sample", "final_val_acc", "final_val_loss", "mean_epoch_time_s",
    "samples_per_s", "tokens_per_s", "peak_mem_mb", "steps_per_epoch",
)  # fmt: skip
# the fields of _NUMBER_FIELDS that are at least 1 (the others are at least 0)
_LEAST = dict.fromkeys(
    ("world_size", "num_nodes", "local_world_size", "global_batch", "per_rank_batch",
     "grad_accum_steps", "num_epochs", "num_train_samples", "num_test_samples"),
    1,
)  # fmt: skip
# the fields of _NUMBER_FIELDS that count something: whole numbers (groups and tables key on them)
_COUNT_FIELDS = (*_LEAST, "device_count", "num_params", "steps_per_epoch")
_SECTIONS = ("timing", "comm", "system", "data", "profile")
_COMM_NUMBERS = (
    "grad_bytes", "num_buckets", "bucket_cap_mb", "embedding_grad_bytes",
    "embedding_rows_per_step", "allreduce_ms", "exposed_comm_ms", "compute_ms",
    "compute_to_comm_ratio", "overlap_fraction",
)  # fmt: skip


# comm's text fields the analysis branches on, and every value the trainer writes there
_COMM_CHOICES = {
    "comm_hook": ("none", "fp16", "bf16", "powersgd"),
    "embedding_grad_sync": ("rows", "dense"),
    "grad_sync": ("fused", "buckets"),
    "collective_wait": ("spin", "block"),
    "embedding_grad": ("rows", "dense"),
}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Section fields the analysis reads (diagnosis rules multiply and compare them): what each must be.
_COUNT = (lambda v: _whole(v) and v >= 1, "a whole number >= 1")
_FLAG = (lambda v: isinstance(v, bool), "true or false")
_SECTION_FIELDS: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("system", "hostname"): (lambda v: isinstance(v, str), "text"),
    ("system", "num_cpus"): _COUNT,
    ("system", "num_threads_per_rank"): _COUNT,
    ("system", "num_loader_workers"): (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    ("system", "bound_cpus"): (
        lambda v: isinstance(v, list) and all(_whole(c) for c in v),
        "a list of CPU numbers",
    ),
    ("system", "find_unused_parameters"): _FLAG,
    ("system", "cpu_bf16"): (
        lambda v: isinstance(v, dict) and all(isinstance(x, bool) for x in v.values()),
        "an object of true/false CPU features",
    ),
    ("data", "pad_to_max_len"): _FLAG,
    ("data", "on_device"): _FLAG,
    ("data", "pad_multiple"): _COUNT,
    ("data", "delay_per_batch_s"): (lambda v: is_number(v) and v >= 0, "a number >= 0"),
}


def _check_summary(path: Path, summary: dict[str, Any]) -> None:
    def bad(field: str, want: str) -> AnalysisError:
        return AnalysisError(
            f"{path}: field {field!r} should be {want}, got {summary_get(field)!r}"
        )

    def summary_get(field: str) -> Any:
        node: Any = summary
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    if summary.get("world_size") is None:  # every table groups and divides by it
        raise AnalysisError(f"{path}: field 'world_size' is missing (the trainer always writes it)")
    for key in _TEXT_FIELDS:
        if summary.get(key) is not None and not isinstance(summary[key], str):
            raise bad(key, "text")
    for key, allowed in _TEXT_CHOICES.items():
        if summary.get(key) is not None and summary[key] not in allowed:
            raise bad(key, "one of " + ", ".join(allowed))
    for key in _NUMBER_FIELDS:  # NaN counts as a number: a diverged run's loss is one
        if summary.get(key) is not None and not is_number(summary[key]):
            raise bad(key, "a number")
    for key in _COUNT_FIELDS:  # NaN, 2.5 or 1e300 is no count of ranks, steps or examples
        if summary.get(key) is not None and not _whole(summary[key]):
            raise bad(key, "a whole number")
    for key in _NUMBER_FIELDS:  # counts, sizes, times, rates, losses: none is negative
        if is_number(summary.get(key)) and summary[key] < _LEAST.get(key, 0):
            raise bad(key, f"at least {_LEAST.get(key, 0)}")
    # a speedup divides by it: 0 or less is no time a run can take (NaN: not measured)
    if is_number(summary.get("mean_epoch_time_s")) and summary["mean_epoch_time_s"] <= 0:
        raise bad("mean_epoch_time_s", "a time > 0 s")
    for section in _SECTIONS:
        if summary.get(section) is not None and not isinstance(summary[section], dict):
            raise bad(section, "an object")
    for key, value in (summary.get("timing") or {}).items():
        if value is not None and not is_number(value):
            raise bad(f"timing.{key}", "a number")
        if is_number(value) and value < 0:  # phase times and warm-up counts: never negative
            raise bad(f"timing.{key}", "a number >= 0")
    comm = summary.get("comm") or {}
    for key in _COMM_NUMBERS:
        if comm.get(key) is not None and not is_number(comm[key]):
            raise bad(f"comm.{key}", "a number")
    for key in ("bucket_bytes", "wire_bucket_bytes"):  # the prediction sums and models them
        buckets = comm.get(key)
        if buckets is not None and not (
            isinstance(buckets, list) and all(_whole(v) and v >= 0 for v in buckets)
        ):
            raise bad(f"comm.{key}", "a list of byte counts")
    for key, allowed in _COMM_CHOICES.items():  # the analysis branches on them
        if comm.get(key) is not None and comm[key] not in allowed:
            raise bad(f"comm.{key}", "one of " + ", ".join(allowed))
    for (section, key), (ok, want) in _SECTION_FIELDS.items():
        value = (summary.get(section) or {}).get(key)
        if value is not None and not ok(value):
            raise bad(f"{section}.{key}", want)


def _check_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Every metrics.csv cell the trainer writes is a number >= 0 (or empty), and the rows are
    epochs 1, 2, ... in order (one row per epoch: the tables and plots index them so)."""
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        if row.get("epoch") != i - 1:
            raise AnalysisError(
                f"{path}: line {i}: epoch {row.get('epoch')!r}, expected {i - 1} (one row per "
                "epoch, in order)"
            )
        for key, value in row.items():
            if value is not None and not is_number(value):
                raise AnalysisError(f"{path}: line {i}, column {key!r} is not a number: {value!r}")
            if is_number(value) and value < 0:  # times, rates, losses, counts
                raise AnalysisError(f"{path}: line {i}, column {key!r} is negative: {value!r}")


def _looks_like_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (*REQUIRED_FILES, CONFIG_FILE))


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Load run folders and sweep folders (folders whose sub-folders are runs).

    In a sweep folder, incomplete sub-folders (e.g. a run that crashed) are skipped with a
    warning so one failure does not block the report; a folder named explicitly must be complete.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for raw in paths:
        folder = Path(raw)
        if not folder.is_dir():
            raise AnalysisError(
                f"{folder}: not a run folder (does not exist or is not a directory)"
            )
        if _looks_like_run(folder):
            candidates = [folder]
        else:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and _looks_like_run(p))
            candidates = []
            for child in children:
                missing = _missing(child)
                if missing:
                    warnings.warn(f"skipping {child}: missing {', '.join(missing)}", stacklevel=2)
                else:
                    candidates.append(child)
            if not candidates:
                raise AnalysisError(
                    f"{folder}: no run folders found (need {' and '.join(REQUIRED_FILES)})"
                )
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(candidate))
    if not runs:
        raise AnalysisError("no run folders given")
    return runs
