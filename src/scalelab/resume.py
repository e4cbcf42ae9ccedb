"""Resuming a run: what a checkpoint and the run folder allow, and loading the saved states.

Every check here runs before a step trains or a file of the run folder is rewritten, and each
refusal is one line naming the checkpoint and what to change (`train._fit` calls them in order:
`resume_source`, `check_resume_config`, `load_states`, `run_record`, `resume_is_finished`).
"""

from __future__ import annotations

import csv
import math
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalelab import distributed as D
from scalelab.checkpoint import CHECKPOINT_NAME, CheckpointError, holds_run, is_count, load_error
from scalelab.config import Config, ConfigError, first_line, is_number


def check_same_resume(views: list[tuple[str, str]], run_dir: Path) -> None:
    """`views`: each rank's (host, checkpoint it would resume from or ''). Raise the same
    LaunchError on every rank if they differ."""

    def does(resume: str) -> str:
        return f"resumes {resume}" if resume else "finds no checkpoint"

    for r, (host, resume) in enumerate(views):
        if resume != views[0][1]:
            raise D.LaunchError(
                f"rank {r} ({host}) {does(resume)} but rank 0 ({views[0][0]}) {does(views[0][1])}"
                f" in {run_dir}: output.dir must be a folder every node shares"
            )


def resume_source(cfg: Config, env: D.DistEnv, run_dir: Path) -> tuple[Path | None, bool]:
    """The checkpoint this run continues from (None: it starts afresh) and whether it lies
    outside `run_dir` (resuming another folder's run into this one). Collective: every rank
    decides alike. Refuses, before anything is written, a fresh start or a foreign checkpoint
    that would overwrite the run `run_dir` already holds."""
    ckpt_path = run_dir / CHECKPOINT_NAME
    resume_from: Path | None = None
    if cfg.train.resume == "auto":
        resume_from = ckpt_path if ckpt_path.exists() else None  # a folder: load says so
    elif cfg.train.resume:
        resume_from = Path(cfg.train.resume).expanduser()
    # Every rank decides alike, or all stop with one line: a run folder that the nodes do not
    # share would make one node resume and another start afresh.
    check_same_resume(
        D.gather_objects((socket.gethostname(), str(resume_from or "")), env), run_dir
    )
    recorded_run = holds_run(run_dir)
    # resuming another folder's checkpoint into this one
    elsewhere = resume_from is not None and resume_from.resolve() != ckpt_path.resolve()
    if elsewhere and recorded_run:
        raise ConfigError(
            f"output folder {run_dir} already holds another run; resuming {resume_from} there "
            "would overwrite it: choose another output.run_name"
        )
    # A run stopped in its first epoch has a checkpoint but no metrics.csv yet: starting afresh
    # would silently overwrite that checkpoint.
    if resume_from is None and recorded_run:
        hint = (
            f"it has no {CHECKPOINT_NAME} to continue from (train.save_checkpoint was off)"
            if cfg.train.resume == "auto"
            else "set train.resume=auto to continue it"
        )
        raise ConfigError(
            f"output folder {run_dir} already holds a run; {hint}, or choose another output.run_name"
        )
    return resume_from, elsewhere


# Keys that define an epoch's sequence of global batches (TrainBatchSampler); the position saved
# mid-epoch only means something with the same values (train.seed and train.batch_size, which
# define them too, are refused at any step: _RECORDED_KEYS).
_BATCH_ORDER_KEYS = (
    ("data", "bucket_multiplier"),
    ("data", "max_train_samples"),
)


# Restored from the checkpoint's optimizer and scheduler, whatever the config says: a changed
# value would be recorded in config.yaml but never used.
_OPTIMIZER_KEYS = (("train", "lr"), ("train", "weight_decay"))
# Keys that define the function the saved weights compute: some changes (model.num_heads) keep
# every tensor's shape, so loading the weights alone would not notice.
_MODEL_KEYS = tuple(
    ("model", k)
    for k in ("arch", "vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len",
              "num_classes")
)  # fmt: skip


# Not restored from the checkpoint, so a changed value would train the later epochs while
# config.yaml (rewritten on resume) gives it for the whole run, the epochs before included.
# (train.batch_size and train.max_steps_per_epoch set the schedule's length: a larger batch at
# an epoch boundary put the restored step past the new plan's end, at learning rate 0; train.seed
# draws the batches of later epochs.)
_RECORDED_KEYS = (
    ("train", "lr_schedule"), ("train", "warmup_ratio"), ("train", "max_grad_norm"),
    ("train", "batch_size"), ("train", "max_steps_per_epoch"), ("train", "seed"),
    ("train", "precision"), ("model", "dropout"),
    # the micro-batches a global batch splits into (each draws its own dropout masks), and the
    # gradients' compression: the arithmetic of the steps to come
    ("train", "grad_accum_steps"), ("distributed", "comm_hook"),
)  # fmt: skip

# How the steps run and what they send, not what they compute: a resume may change them (a
# compiled run resumed where compile fails, a simulated loader delay dropped), but the epochs
# before were timed with the saved value, so `timed_changes` lists each change for the log,
# the checkpoint and summary.json's `config_changes` (the report names such runs).
TIMED_KEYS = (
    ("train", "compile"), ("train", "compile_mode"), ("train", "embedding_grad"),
    ("train", "num_threads"),
    ("data", "pad_to_max_len"), ("data", "pad_multiple"), ("data", "on_device"),
    ("data", "delay_per_batch_s"),
    ("distributed", "backend"), ("distributed", "bucket_cap_mb"),
    ("distributed", "static_graph"), ("distributed", "gradient_as_bucket_view"),
    ("distributed", "find_unused_parameters"), ("distributed", "embedding_grad_sync"),
    ("distributed", "grad_sync"), ("distributed", "collective_wait"),
    ("distributed", "pin_cpus"),
)  # fmt: skip

#: What a load_state_dict (or an RNG restore) raises on a state of the wrong shape or type.
LOAD_ERRORS = (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _check_scheduler_state(
    scheduler: torch.optim.lr_scheduler.LRScheduler, groups: int, global_step: int
) -> None:
    """LambdaLR.load_state_dict takes any dict (it updates its attributes): check what the next
    scheduler.step() reads, or a bad value would be a traceback after training started. The
    scheduler steps once per optimizer step, so its last_epoch is the checkpoint's global_step:
    another count would resume the learning rate at another point of its schedule."""
    last = scheduler.last_epoch
    if not is_count(last):
        raise ValueError(f"last_epoch is {last!r}, expected a whole number >= 0")
    if last != global_step:
        raise ValueError(
            f"last_epoch is {last}, expected the checkpoint's global_step ({global_step}): "
            "one scheduler step per optimizer step"
        )
    for key in ("base_lrs", "_last_lr"):
        lrs = getattr(scheduler, key, None)
        if not (isinstance(lrs, list) and len(lrs) == groups and all(map(is_number, lrs))):
            raise ValueError(f"{key} is not a list of {groups} learning rates")


def _check_saved_optimizer(state: dict[str, Any]) -> None:
    """The saved optimizer state's entries before torch reads them: per parameter index a
    mapping of names to tensors or numbers (torch's own message for a text value names a
    generator). That `state` and its 'state' are dicts, checkpoint.load_checkpoint checked."""
    for index, entry in state["state"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"the state of parameter {index!r} is not a mapping")
        for key, value in entry.items():
            if not (isinstance(value, torch.Tensor) or is_number(value)):
                raise ValueError(f"parameter {index!r}: {key!r} is {type(value).__name__}")


def _check_saved_groups(saved: list[Any], groups: list[dict[str, Any]]) -> None:
    """Each saved param group's hyperparameters against this run's optimizer: the learning rates
    (set by the scheduler) are numbers >= 0, the rest as this run's (train.weight_decay and the
    like may not change at a resume): AdamW's fused step took text as a traceback, amsgrad a
    KeyError, a NaN rate trained to NaN."""
    for g, (old, new) in enumerate(zip(saved, groups, strict=False)):  # torch counts them
        for key, value in new.items():
            if key == "params" or key not in old:
                continue
            got = old[key]
            if key in ("lr", "initial_lr"):
                if isinstance(got, torch.Tensor) and got.numel() == 1:
                    got = got.item()
                if not (is_number(got) and math.isfinite(got) and got >= 0):
                    raise ValueError(f"group {g}: {key!r} is {got!r}, expected a rate >= 0")
            elif not _same(got, value):
                raise ValueError(f"group {g}: {key!r} is {got!r}, this run's optimizer {value!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b or (is_number(a) and is_number(b) and a == b)


def _check_scaler_state(state: dict[str, Any]) -> None:
    """GradScaler.load_state_dict stores these unchecked (train.precision=fp16): text for the
    scale was a traceback in the first step, a NaN or zero scale skipped every step."""
    checks = (
        ("scale", "a number > 0", lambda v: math.isfinite(v) and v > 0),
        ("growth_factor", "a number > 1", lambda v: math.isfinite(v) and v > 1),
        ("backoff_factor", "a number in (0, 1)", lambda v: 0 < v < 1),
        ("growth_interval", "a whole number > 0", lambda v: isinstance(v, int) and v > 0),
        ("_growth_tracker", "a whole number >= 0", lambda v: isinstance(v, int) and v >= 0),
    )
    for key, want, ok in checks:
        if key not in state:
            raise ValueError(f"no {key!r}")
        value = state[key]
        if not (is_number(value) and ok(value)):
            raise ValueError(f"{key!r} is {value!r}, expected {want}")


def _check_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW reads each parameter's moments unchecked: a moment of another shape crashed the
    fused step (a segfault on CPU), a missing one was a KeyError in the first step."""
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            state = optimizer.state.get(param)
            if not state:  # a parameter the saved run never stepped
                continue
            where = f"parameter {i} of group {g}"
            for key in ("step", "exp_avg", "exp_avg_sq"):
                if key not in state:
                    raise ValueError(f"{where} has no {key!r}")
            step = state["step"]
            if isinstance(step, torch.Tensor):
                step = step.item() if step.numel() == 1 else None
            if not (is_number(step) and step >= 0):
                raise ValueError(f"{where}: 'step' is not a count >= 0")
            for key in ("exp_avg", "exp_avg_sq"):
                moment = state[key]
                if not isinstance(moment, torch.Tensor):
                    raise ValueError(f"{where}: {key!r} is not a tensor")
                if moment.shape != param.shape:
                    raise ValueError(
                        f"{where}: {key!r} has shape {list(moment.shape)}, the parameter "
                        f"{list(param.shape)}"
                    )
                if not bool(torch.isfinite(moment).all()):  # every later step would be NaN
                    raise ValueError(f"{where}: {key!r} holds NaN or infinite values")
            if bool((state["exp_avg_sq"] < 0).any()):  # a mean of squares; its sqrt is NaN
                raise ValueError(f"{where}: 'exp_avg_sq' has negative values")


def load_states(
    saved: dict[str, Any],
    path: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load the checkpoint's model (unwrapped: no DDP or compile prefix), optimizer, scheduler
    and grad-scaler states; a state that does not load is one line naming what and why (the
    first offending key)."""

    def refuse(what: str, exc: BaseException) -> CheckpointError:
        return CheckpointError(f"{path}: {what} ({load_error(exc)})")

    expected = model.state_dict()
    for key, value in saved["model"].items():  # load_state_dict casts: int weights truncated
        if key in expected and expected[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"{path}: does not fit this model/config: model weights ({key} is "
                f"{value.dtype}, the model's {expected[key].dtype})"
            )
    try:
        model.load_state_dict(saved["model"])
    except LOAD_ERRORS as exc:
        raise refuse("does not fit this model/config: model weights", exc) from None
    try:
        _check_saved_optimizer(saved["optimizer"])
        _check_saved_groups(saved["optimizer"]["param_groups"], optimizer.param_groups)
        optimizer.load_state_dict(saved["optimizer"])
        _check_adamw_state(optimizer)
    except LOAD_ERRORS as exc:
        raise refuse("does not fit this model/config: optimizer state", exc) from None
    try:
        scheduler.load_state_dict(saved["scheduler"])
        _check_scheduler_state(scheduler, len(optimizer.param_groups), saved["global_step"])
    except LOAD_ERRORS as exc:
        raise refuse("its learning-rate scheduler state does not load", exc) from None
    if scaler is not None and saved.get("scaler"):
        try:
            _check_scaler_state(saved["scaler"])
            scaler.load_state_dict(saved["scaler"])
        except LOAD_ERRORS as exc:
            raise refuse("its grad scaler state does not load", exc) from None


def run_record(run_dir: Path) -> tuple[int | str, bool]:
    """What a run folder already records: the epoch rows of its metrics.csv (0 without one; a
    one-line error as text when it cannot be read), and whether it holds a summary.json."""
    path = run_dir / "metrics.csv"
    has_summary = (run_dir / "summary.json").is_file()
    if not path.exists():
        return 0, has_summary
    fix = "a resume would overwrite it: move it aside or start a new run (another output.run_name)"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            table = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"{path}: unreadable ({first_line(exc)}); {fix}", has_summary
    if not table:
        return 0, has_summary
    # The rows decide what the resume trains and keeps: a cut-off, extra or repeated row would
    # be counted as an epoch, so it must read as epochs 1, 2, ... in the header's columns.
    header, *rows = table
    for i, row in enumerate(rows, start=2):
        if "epoch" not in header:
            why = "no 'epoch' column in its header"
        elif len(row) != len(header):
            why = f"line {i} has {len(row)} cells, the header {len(header)}"
        elif (epoch := row[header.index("epoch")]).strip() != str(i - 1):
            why = f"line {i} is epoch {epoch!r}, expected {i - 1}"
        else:
            continue
        return (
            f"{path}: not the run's own epoch rows ({why}; truncated or edited); {fix}",
            has_summary,
        )
    return len(rows), has_summary


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def resume_is_finished(
    saved_epoch: int,
    recorded: int,
    has_summary: bool,
    epochs: int,
    path: Path | None,
    run_dir: Path,
    step_in_epoch: int = 0,
) -> str | None:
    """Decide a resume against what the run folder records: the line to log when the run is
    already finished (nothing to do), None when it trains; refuse a checkpoint older than
    metrics.csv.

    `saved_epoch`: the epochs the checkpoint has finished; `recorded`: metrics.csv's rows. They
    are equal after any stop or crash (the checkpoint is written before each metrics.csv row);
    more rows than the checkpoint's epochs means later epochs ran without checkpoints
    (train.save_checkpoint=false): resuming would train them again from the older weights and
    overwrite their rows (and the summary). `step_in_epoch`: the checkpoint's steps into epoch
    saved_epoch + 1; a checkpoint beyond train.epochs (a run trained further, then resumed with
    the old train.epochs) is refused: its weights are not those of a train.epochs-epoch run.
    """
    if has_summary and max(saved_epoch, recorded) >= epochs:
        done = max(saved_epoch, recorded)
        if recorded > saved_epoch:
            return (
                f"{run_dir} already finished its {_epochs(done)}; nothing to do (its "
                f"{CHECKPOINT_NAME} is older, from after {_epochs(saved_epoch)}: it cannot train "
                "further)"
            )
        return (
            f"{run_dir} already finished its {_epochs(done)}; nothing to do "
            "(raise train.epochs to train further)"
        )
    if saved_epoch > epochs or (saved_epoch == epochs and step_in_epoch):
        where = (
            f"{step_in_epoch} steps into epoch {saved_epoch + 1}"
            if step_in_epoch
            else f"after {_epochs(saved_epoch)}"
        )
        raise CheckpointError(
            f"{path}: saved {where}, beyond train.epochs={epochs}: its weights are not those "
            f"of a {_epochs(epochs)} run; resume with train.epochs="
            f"{saved_epoch + (1 if step_in_epoch else 0)} or more"
        )
    if recorded > saved_epoch:
        raise CheckpointError(
            f"{path}: the checkpoint is older than the run's metrics.csv (saved after "
            f"{_epochs(saved_epoch)}, metrics.csv records {recorded}: later epochs ran "
            "without checkpoints, e.g. train.save_checkpoint=false); resuming would overwrite "
            "epochs already recorded: start a new run (another output.run_name)"
        )
    return None


def warmup_record(saved: Any) -> dict[str, float]:
    """A checkpoint's `timing_warmup` (absent in checkpoints from before it was kept: nothing)."""
    out = {"warmup_steps": 0, "warmup_time_s": 0.0, "warmup_invocations": 0}
    if isinstance(saved, dict):
        for key, default in out.items():
            value = saved.get(key)
            if is_number(value) and math.isfinite(value) and value >= 0:
                out[key] = type(default)(value)
    return out


def timed_changes(
    saved: dict[str, Any], cfg: Config, now: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The TIMED_KEYS whose value this resume changes: {"key", "before", "after"} each.

    `now`: this invocation's settings as they run (train._timed_settings: 'auto' resolved);
    compared with the checkpoint's `timed_settings` where it has them, else (a checkpoint of
    an older version) the two configs' values are."""
    before = saved.get("timed_settings")
    if isinstance(before, dict) and now is not None:
        return [
            {"key": key, "before": before[key], "after": value}
            for key, value in now.items()
            if key in before and before[key] != value
        ]
    return [
        {"key": key, "before": old, "after": new}
        for key, old, new in _config_diffs(saved, cfg, TIMED_KEYS)
    ]


def _config_diffs(
    saved: dict[str, Any], cfg: Config, keys: tuple[tuple[str, str], ...]
) -> list[tuple[str, Any, Any]]:
    """("section.key", saved value, this config's value) of each of `keys` the checkpoint's
    config records with another value (a key an older checkpoint lacks is not compared)."""
    saved_cfg = saved.get("config") or {}
    now = cfg.to_dict()
    out = []
    for section, key in keys:
        saved_section = saved_cfg.get(section)
        before = saved_section.get(key) if isinstance(saved_section, dict) else None
        if before is not None and before != now[section][key]:
            out.append((f"{section}.{key}", before, now[section][key]))
    return out


def check_resume_config(
    saved: dict[str, Any], cfg: Config, path: Path | None, epoch_steps: int, data_key: str = ""
) -> None:
    """Refuse a resume whose config the checkpoint cannot honour (one line, not a traceback):
    another learning rate or weight decay, another model shape or PowerSGD rank, another
    learning-rate schedule, warm-up or dropout (config.yaml would misdescribe the epochs before),
    other encoded data (`data_key` is the cache file's name), or mid-epoch, a config that draws
    other batches (other batching keys). train.epochs may change: that trains a run further."""

    def changed(keys: tuple[tuple[str, str], ...]) -> tuple[str, Any, Any] | None:
        return next(iter(_config_diffs(saved, cfg, keys)), None)

    if diff := changed(_OPTIMIZER_KEYS):
        raise CheckpointError(
            f"{path}: trained with {diff[0]}={diff[1]}, resumed with {diff[2]}; the optimizer "
            "state keeps the saved value, so resume with it (or start a new run)"
        )
    if diff := changed(_MODEL_KEYS):
        raise CheckpointError(
            f"{path}: its weights are of a model with {diff[0]}={diff[1]}, resumed with "
            f"{diff[2]}; resume with the saved model config (or start a new run)"
        )
    if cfg.distributed.comm_hook == "powersgd" and (
        diff := changed((("distributed", "powersgd_rank"),))
    ):
        raise CheckpointError(
            f"{path}: its PowerSGD state is of {diff[0]}={diff[1]}, resumed with {diff[2]}; "
            "resume with the saved rank (or start a new run)"
        )
    if diff := changed(_RECORDED_KEYS):
        raise CheckpointError(
            f"{path}: trained with {diff[0]}={diff[1]}, resumed with {diff[2]}; config.yaml "
            "records one value for the whole run, so resume with the saved value (or start a "
            "new run)"
        )
    # Other encoded data at any step: another vocabulary gives the saved embedding rows other
    # tokens, and config.yaml would name the new files for the epochs trained on the old ones.
    if data_key and saved.get("data_key") not in (None, data_key):
        raise CheckpointError(
            f"{path}: trained on other encoded data (cache {saved['data_key']}, now "
            f"{data_key}: other data files, vocabulary, lowercasing, model.vocab_size, "
            "model.max_seq_len or sample sizes); resume with the data it was trained on (or "
            "start a new run)"
        )
    step = int(saved["step_in_epoch"])
    if step == 0:
        return  # at an epoch boundary the bucketing may change
    if diff := changed(_BATCH_ORDER_KEYS):
        raise CheckpointError(
            f"{path}: saved at step {step} of an epoch with {diff[0]}={diff[1]}, "
            f"resumed with {diff[2]}; resume mid-epoch with the same value"
        )
    if step > epoch_steps:
        raise CheckpointError(
            f"{path}: saved at step {step} of an epoch, but this config's epoch has only "
            f"{epoch_steps} steps; resume with the data, train.batch_size and "
            "train.max_steps_per_epoch it was saved with"
        )
