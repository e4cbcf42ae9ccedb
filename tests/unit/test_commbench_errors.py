"""`scalelab commbench` user errors: one `scalelab: error:` line and status 2, like every subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalelab.cli import main

_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--min-bytes", "1M", "--max-bytes", "4K"], "--min-bytes"),
        (["--iters", "0"], "--iters"),
        (["--min-bytes", "4K", "--max-bytes", "4K"], "one message size"),
        (["--min-bytes", "4K", "--max-bytes", "12K", "--factor", "4"], "max >= 4 x min"),
        ([], "needs >= 2 ranks"),
    ],
)
def test_commbench_user_errors_are_one_scalelab_error_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    fragment: str,
) -> None:
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "bench"
    assert main(["commbench", "--out", str(out), *argv]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("scalelab: error:") and fragment in lines[0], lines[0]
    assert not out.exists()


def test_commbench_out_that_is_a_file_is_refused_before_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "afile").write_text("x")
    assert main(["commbench", "--out", str(tmp_path / "afile")]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert "exists and is not a folder" in line and (tmp_path / "afile").read_text() == "x"
