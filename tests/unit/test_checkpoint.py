"""scalelab.checkpoint: a checkpoint is read without running code, and RNG states round-trip."""

from __future__ import annotations

import os
import random
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from scalelab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state() -> dict:
    return {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []},
            "scheduler": {}, "epoch": 0,
            "step_in_epoch": 0, "global_step": 1, "rng": [rng_state()]}  # fmt: skip


class _Payload:
    def __reduce__(self):  # what a foreign file could do on an unsafe load
        return (os.system, ("touch PWNED",))


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", _state())
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_a_file_with_code_in_it_is_refused_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({**_state(), "format_version": 1, "extra": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="objects other than tensors and plain values"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_of_an_older_version_with_numpy_rng_arrays_still_loads(tmp_path: Path) -> None:
    old = _state()
    old["rng"] = [{**old["rng"][0], "numpy": np.random.get_state()}]  # before numpy_rng_plain
    torch.save({**old, "format_version": 1}, tmp_path / "old.pt")
    draw = np.random.rand()
    set_rng_state(load_checkpoint(tmp_path / "old.pt")["rng"][0])
    assert np.random.rand() == draw


def test_an_older_powersgd_checkpoint_with_a_pickled_randomstate_loads(tmp_path: Path) -> None:
    rng = np.random.RandomState(3)
    torch.save({**_state(), "format_version": 1, "comm_hook_state": [{"slots": {"rng": rng}}]},
               tmp_path / "old.pt")  # fmt: skip
    loaded = load_checkpoint(tmp_path / "old.pt")["comm_hook_state"][0]["slots"]["rng"]
    assert loaded.rand() == rng.rand()


def test_truncated_and_empty_files_say_so(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", _state())
    (tmp_path / "cut.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:300])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cut.pt", "empty.pt"):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)


def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path: Path) -> None:
    # a YAML file given as train.resume read "IndexError: pop from empty list"; a folder
    # named checkpoint.pt read "checkpoint not found"
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.1\n")
    with pytest.raises(CheckpointError, match=r"config.yaml: not a checkpoint \(torch.save files "
                       r"start with a zip or pickle header; this one starts with b'trai'\)"):  # fmt: skip
        load_checkpoint(tmp_path / "config.yaml")
    (tmp_path / "c.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"c.pt: is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "c.pt")


def test_a_checkpoint_of_a_diverged_run_is_refused(tmp_path: Path) -> None:
    state = _state()
    state["model"]["w"] = torch.tensor([1.0, float("nan")])
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match=r"field model.w holds NaN or infinite weights"):
        load_checkpoint(tmp_path / "c.pt")


def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "c.pt", _state())
    before = (tmp_path / "c.pt").read_bytes()

    def full_disk(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint .* GB free there"):
        save_checkpoint(tmp_path / "c.pt", _state())
    assert (tmp_path / "c.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp file left


def test_ctrl_c_while_writing_finishes_the_checkpoint_then_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C raised inside torch.save's C++ writer read as a failed write ("unexpected pos"):
    # exit 2 and "cannot write the checkpoint" instead of an interrupt, and the checkpoint lost
    real_save = torch.save

    class CtrlCOnFirstWrite:
        def __init__(self, f: object) -> None:
            self.f, self.sent = f, False

        def write(self, data: bytes) -> int:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)  # as the terminal does, mid-write
            return self.f.write(data)  # type: ignore[attr-defined]

        def flush(self) -> None:
            self.f.flush()  # type: ignore[attr-defined]

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, CtrlCOnFirstWrite(f)))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.pt", _state())
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["w"], torch.ones(2))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    # a second Ctrl-C stops a write that hangs (a stalled network file system) at once
    class CtrlCTwice(CtrlCOnFirstWrite):
        def write(self, data: bytes) -> int:
            os.kill(os.getpid(), signal.SIGINT)
            return self.f.write(data)  # type: ignore[attr-defined]

    before = (tmp_path / "c.pt").read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, CtrlCTwice(f)))
    state = _state()
    state["model"]["w"] = torch.zeros(2)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.pt", state)
    assert (tmp_path / "c.pt").read_bytes() == before  # the previous checkpoint stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp file left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("epoch", "x", "checkpoint field epoch is 'x', expected a whole number >= 0"),
        ("epoch", -1, "checkpoint field epoch is -1, expected a whole number >= 0"),
        ("step_in_epoch", "3", "field step_in_epoch is '3', expected a whole number"),
        ("global_step", True, "field global_step is True, expected a whole number"),
        ("global_step", 1.5, "field global_step is 1.5, expected a whole number"),
        ("scheduler", [1, 2], "field scheduler is a list of 2, expected a dict"),
        ("model", "weights", "field model is 'weights', expected a dict"),
        ("optimizer", None, "field optimizer is None, expected a dict"),
        ("optimizer", {"state": {}}, "field optimizer lacks param_groups"),
        (
            "optimizer",
            {"state": {}, "param_groups": "x"},
            "optimizer.param_groups is 'x', expected",
        ),
        ("config", ["train"], "field config is a list of 1, expected a dict of config sections"),
        ("config", {"train": "fast"}, "field config.train is 'fast', expected a dict"),
        ("metrics", "rows", "field metrics is 'rows', expected a list"),
        ("metrics", [{"epoch": 1}, 7], r"field metrics\[1\] is 7, expected a dict"),
        ("metrics", [{"epoch": "one"}], r"field metrics\[0\].epoch is 'one', expected a number"),
        # written back to metrics.csv by the resume: no figure of a run is negative
        (
            "metrics",
            [{"epoch_time_s": -2.0}],
            r"metrics\[0\].epoch_time_s is -2.0, expected a number >= 0",
        ),
        (
            "metrics",
            [{"val_acc": float("nan")}],
            r"metrics\[0\].val_acc is nan, expected a fraction",
        ),
        # taken as 0 silently: summary.json then counted the warm-up without it
        (
            "timing_warmup",
            {"warmup_steps": -3},
            r"timing_warmup.warmup_steps is -3, expected a number",
        ),
        ("timing_warmup", [1], r"field timing_warmup is a list of 1, expected a dict"),
        # a row per finished epoch (0 here): a resume rewrites metrics.csv from them
        ("metrics", [{"epoch": 1}], r"field metrics has 1 rows, expected one per finished epoch"),
        ("rng", {"python": 1}, "field rng is a dict of python, expected a list"),
        ("rng", [], "field rng is a list of 0, expected a list with one RNG state per rank"),
        ("rng", ["seed"], r"field rng\[0\] is 'seed', expected a dict"),
        (
            "epoch_loss_sums",
            [0.0, 1.0],
            "field epoch_loss_sums is a list of 2, expected a list of 1",
        ),
        ("epoch_tokens", [-3], r"field epoch_tokens\[0\] is -3, expected a whole number"),
    ],
)
def test_a_field_of_the_wrong_type_is_one_line_naming_file_and_field(
    tmp_path: Path, field: str, value: object, says: str
) -> None:
    # each was a traceback mid-resume (int('x'), None.get, [..][rank]) or worse, trained on
    path = tmp_path / "c.pt"
    torch.save({**_state(), "format_version": 1, field: value}, path)
    with pytest.raises(CheckpointError, match=says) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: checkpoint field {field}"), info.value
    assert "\n" not in str(info.value)


_ROW = {"epoch": 1, "train_loss": 1.2, "val_loss": 1.1, "val_acc": 0.5, "epoch_time_s": 3.0,
        "samples_per_s": 90.0}  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ([{}], r"field metrics\[0\].epoch is None, expected 1 \(rows in epoch order\)"),
        ([{**_ROW, "epoch": 5}], r"field metrics\[0\].epoch is 5, expected 1"),
        ([{**_ROW, "epoch": 2}, _ROW], r"field metrics\[0\].epoch is 2, expected 1"),
        ([_ROW, _ROW], r"field metrics\[1\].epoch is 1, expected 2"),
        ([{"epoch": 1, "val_acc": 0.5}], r"field metrics\[0\] lacks train_loss, val_loss, epoch_t"),
    ],
)
def test_metrics_rows_a_resume_would_write_over_metrics_csv_are_whole_epochs_in_order(
    tmp_path: Path, rows: list, says: str
) -> None:
    # the resume rewrote metrics.csv from them: a good epoch row became ",,,," or epoch 5's
    path = tmp_path / "c.pt"
    epochs = len(rows)
    torch.save({**_state(), "format_version": 1, "epoch": epochs, "metrics": rows}, path)
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(path)
    good = [{**_ROW, "epoch": i + 1} for i in range(epochs)]
    torch.save({**_state(), "format_version": 1, "epoch": epochs, "metrics": good}, path)
    assert load_checkpoint(path)["metrics"] == good


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({}, "not a scalelab checkpoint (no format_version)"),
        ({"format_version": 2}, "checkpoint format_version is 2; this scalelab reads format 1"),
        (
            {"format_version": True},
            "checkpoint format_version is True; this scalelab reads format 1",
        ),
        ({"format_version": 1.0}, "checkpoint format_version is 1.0; this scalelab reads format 1"),
    ],
)
def test_a_checkpoint_of_another_format_is_one_line(tmp_path: Path, extra: dict, says: str) -> None:
    path = tmp_path / "c.pt"
    torch.save({**_state(), **extra}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {says}")):
        load_checkpoint(path)


def test_a_well_formed_checkpoint_with_every_optional_field_loads(tmp_path: Path) -> None:
    full = {**_state(), "epoch": 1, "scaler": None, "epoch_loss_sums": [1.5], "epoch_elapsed_s": None,
            "epoch_tokens": [12], "epoch_phases": [None], "comm_hook_state": None,
            "metrics": [{**_ROW, "tokens_per_s": float("nan")}],
            "profile": None, "world_size": 1, "config": {"name": "x", "train": {"lr": 1e-3}},
            "data_key": "ag_news-1.npz"}  # fmt: skip
    save_checkpoint(tmp_path / "c.pt", full)
    assert load_checkpoint(tmp_path / "c.pt")["epoch_tokens"] == [12]


def test_a_state_dict_mismatch_names_the_first_offending_key() -> None:
    from scalelab.checkpoint import load_error

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    # torch's first line, "Error(s) in loading state_dict for Sequential:", names nothing
    wrong = {**net.state_dict(), "0.weight": torch.zeros(5, 3)}
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(wrong)
    why = load_error(info.value)
    assert why.startswith("size mismatch for 0.weight: copying a param with shape"), why
    missing = {k: v for k, v in net.state_dict().items() if k != "1.bias"}
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(missing)
    assert load_error(info.value) == 'Missing key(s) in state_dict: "1.bias"'
    # several problems: the first, and how many more; long ones trimmed, always one line
    many = {f"extra.{i}.{'w' * 40}": torch.zeros(1) for i in range(20)}
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict({**missing, **many, "0.weight": torch.zeros(5, 3)})
    why = load_error(info.value)
    assert why.startswith('Missing key(s) in state_dict: "1.bias"'), why
    assert why.endswith("(and 2 more problems)") and "\n" not in why and len(why) < 250, why
    assert load_error(KeyError("param_groups")) == "missing key 'param_groups'"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"scale": "abc"}, "'scale' is 'abc', expected a number > 0"),
        ({"scale": float("nan")}, "'scale' is nan, expected a number > 0"),
        ({"growth_factor": 0.5}, "'growth_factor' is 0.5, expected a number > 1"),
        ({"backoff_factor": 1.0}, "'backoff_factor' is 1.0, expected a number in (0, 1)"),
        ({"growth_interval": 2.5}, "'growth_interval' is 2.5, expected a whole number > 0"),
        ({"_growth_tracker": -1}, "'_growth_tracker' is -1, expected a whole number >= 0"),
        ({"_growth_tracker": None}, "'_growth_tracker' is None"),
    ],
)
def test_a_bad_grad_scaler_state_is_one_line(tmp_path: Path, change: dict, says: str) -> None:
    """train.precision=fp16's GradScaler took these unchecked: text was a traceback in the first
    step, a NaN scale skipped every step from then on."""
    from scalelab.checkpoint import CheckpointError
    from scalelab.resume import load_states

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    saved = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "global_step": 0,
        "scaler": {**scaler.state_dict(), "scale": 64.0},
    }
    load_states(saved, tmp_path / "ok.pt", model, opt, sched, scaler)  # a sound state loads
    assert scaler.get_scale() == 64.0
    saved["scaler"].update(change)
    with pytest.raises(CheckpointError, match="grad scaler state does not load") as err:
        load_states(saved, tmp_path / "c.pt", model, opt, sched, scaler)
    assert says in str(err.value) and "\n" not in str(err.value)
