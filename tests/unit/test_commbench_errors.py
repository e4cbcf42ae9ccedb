"""`scalelab commbench` user errors: one `scalelab: error:` line and status 2, like every subcommand."""

from __future__ import annotations

import socket
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
    assert main(["commbench", "--out", str(tmp_path / "afile" / "in")]) == 2  # was a traceback
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert f"cannot be made ({tmp_path / 'afile'} is not a folder)" in line, line


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "size must be a whole number of bytes >= 1"),
        ("-5", "not a size: '-5'"),
        ("abc", "not a size: 'abc'"),
        ("nan", "not a size: 'nan'"),
        ("inf", "not a size: 'inf'"),
        ("1.3K", "size must be a whole number of bytes >= 1"),  # 1331.2 bytes
        # float32 buffers: 6 bytes sent 4 and were reported as 6 (algbw, busbw and the fit)
        ("6", "size must be a multiple of 4 bytes (float32 elements), got '6'"),
        ("1", "size must be a multiple of 4 bytes"),
    ],
)
def test_sizes_that_are_not_sizes_are_argparse_errors(
    capsys: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["commbench", "--max-bytes", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --max-bytes: {fragment}" in err.splitlines()[-1] and "Traceback" not in err


def test_fractional_sizes_of_whole_bytes_are_sizes() -> None:
    from scalelab.commbench import parse_bytes

    assert parse_bytes("1.5G") == 3 * 2**29 and parse_bytes("1T") == 2**40


def _fake_two_ranks(monkeypatch: pytest.MonkeyPatch, free_bytes: int) -> None:
    """commbench_main on a pretend 2-rank gloo group with `free_bytes` of host memory."""
    from scalelab import commbench
    from scalelab.distributed import DistEnv

    env = DistEnv(world_size=2, local_world_size=2, backend="gloo")
    monkeypatch.setattr(commbench, "init_distributed", lambda cfg: env)
    monkeypatch.setattr(commbench, "cleanup", lambda: None)
    # this rank only (raising=False: the test also runs against the code before the check)
    monkeypatch.setattr(commbench, "gather_objects", lambda obj, env: [obj], raising=False)
    monkeypatch.setattr(commbench, "host_memory_available", lambda: free_bytes, raising=False)


def test_max_bytes_beyond_memory_is_one_line_before_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # was a RuntimeError traceback from torch.zeros (or the OOM killer) in every rank
    from scalelab import commbench

    _fake_two_ranks(monkeypatch, free_bytes=8 * 2**30)
    swept: list[int] = []
    monkeypatch.setattr(commbench, "run_commbench", lambda *a, **k: swept.append(1))
    out = tmp_path / "bench"
    assert main(["commbench", "--max-bytes", "1T", "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [
        "scalelab: error: commbench: --max-bytes 1T does not fit in memory: its buffers need 2T, "
        "and 7.2G is usable in the host memory of "
        f"{socket.gethostname()}, shared by its 2 ranks; use --max-bytes 2G or less"
    ]
    assert swept == [] and not out.exists()


def test_max_bytes_that_fits_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scalelab import commbench

    _fake_two_ranks(monkeypatch, free_bytes=8 * 2**30)
    swept: list[int] = []
    monkeypatch.setattr(commbench, "run_commbench", lambda env, **k: swept.append(k["max_bytes"]))
    monkeypatch.setattr(commbench, "save_commbench", lambda result, out: (out, out))
    monkeypatch.setattr(commbench, "format_table", lambda result: "")
    assert main(["commbench", "--max-bytes", "2G", "--out", str(tmp_path / "b")]) == 0
    assert swept == [2 * 2**30]  # 2 ranks x 2G = 4G of the 7.2G usable


def test_a_buffer_that_cannot_be_allocated_is_a_launch_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from scalelab.commbench import measure_allreduce
    from scalelab.distributed import DistEnv, LaunchError

    def no_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1G")

    monkeypatch.setattr(torch, "zeros", no_memory)
    with pytest.raises(LaunchError, match=r"cannot allocate a 1G all-reduce buffer on cpu \("):
        measure_allreduce(2**30, DistEnv(world_size=2, backend="gloo"), iters=1, warmup=0)


def test_max_bytes_beyond_memory_under_torchrun_is_one_line_from_rank_0(tmp_path: Path) -> None:
    # the real launcher: both ranks refuse after joining the group, before any buffer exists
    from tests.conftest import torchrun

    out = tmp_path / "bench"
    res = torchrun(["-m", "scalelab", "commbench", "--min-bytes", "32T", "--max-bytes", "64T",
                    "--out", str(out)], nproc=2, timeout=300)  # fmt: skip
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("scalelab: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "commbench: --max-bytes 64T does not fit in memory: its buffers need 128T" in errors[0]
    # no rank's own traceback (torchrun still reports the ranks' exit status 2 in its own words)
    assert "can't allocate" not in res.stderr and "RuntimeError" not in res.stderr
    assert "exitcode  : 2" in res.stderr and not out.exists()
