"""scalelab.checkpoint: a checkpoint is read without running code, and RNG states round-trip."""

from __future__ import annotations

import os
import random
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
    return {"model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "epoch": 0,
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
