"""A bad flag of any command is one line, `scalelab: error: ...`, and exit 2 (not a usage block)."""

from __future__ import annotations

import pytest

from scalelab.cli import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["predict", "run", "--world-sizes", "abc"], "comma-separated integers"),
        (["predict", "run", "--busbw-gbps", "fast"], "invalid float value: 'fast'"),
        (["predict", "run", "--world-sizes", "2,2"], "lists a size twice"),
        (["predict", "run", "--world-sizes", "2,,4"], "comma-separated integers"),  # was 2,4
        (["data", "--older-than-days", "abc"], "invalid float value"),
        (["report", "runs"], "required: --out"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        # the commands with their own parsers
        (["sweep", "--world-sizes", "abc"], "comma-separated integers"),
        (["sweep", "--world-sizes", "1,,2"], "comma-separated integers"),
        (["slurm", "--nodes", "two"], "invalid int value: 'two'"),
        (["commbench", "--factor", "3"], "invalid choice: 3"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalelab: error: "), lines
    assert says in lines[0] and lines[0].endswith("--help)"), lines[0]
    assert captured.out == ""


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # config: overrides without --config apply to the defaults, so a bad one is refused
        (["config", "train.lr=abc"], "train.lr must be a number"),
        (["config", "hello"], "override 'hello' must look like section.key=value"),
        # data: one of --list and --clear (--clear used to win, deleting the cache)
        (["data", "--list", "--clear"], "--list and --clear: give one"),
        # report: an empty --out wrote into the current folder
        (["report", "runs", "--out", ""], "--out is empty"),
    ],
)
def test_conflicting_or_ignored_arguments_are_refused(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("scalelab: error: ") and says in line, line


def test_config_overrides_without_a_preset_print_the_defaults_with_them(capsys) -> None:
    assert main(["config", "train.lr=0.01"]) == 0
    assert "lr: 0.01" in capsys.readouterr().out


def test_a_report_into_a_run_folder_is_refused_and_writes_nothing(tmp_path, capsys) -> None:
    from tests.unit.runfolders import write_run

    run = write_run(tmp_path, "r")
    before = sorted(p.name for p in run.iterdir())
    assert main(["report", str(run), "--out", str(run)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--out {run} is a run folder (it holds summary.json)" in line
    assert sorted(p.name for p in run.iterdir()) == before


def test_overrides_may_stand_on_both_sides_of_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """`scalelab config a=1 --config p b=2` takes both (argparse alone refused b=2)."""
    import yaml

    assert main(["config", "train.epochs=1", "--config", "ag_news_small", "train.lr=0.001"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["lr"] == 0.001
    with pytest.raises(SystemExit):  # a flag left over is still refused
        main(["config", "train.epochs=1", "--config", "ag_news_small", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["config"], ["report", "--help"], ["predict", "--help"], ["data", "--help"]]
)
def test_commands_that_need_no_torch_do_not_import_it(argv: list[str]) -> None:
    # every command paid torch's ~1.3 s import: the parser imported the launchers, which
    # imported scalelab.distributed for its LaunchError
    import subprocess
    import sys

    probe = (
        "import sys\nfrom scalelab.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.stderr.strip().splitlines()[-1] == "False", done.stderr


def test_an_error_before_torch_is_printed_by_a_process_whose_rank_variables_are_stray() -> None:
    # RANK=1 left in the shell, no WORLD_SIZE: is_main_process says every such process prints;
    # the torch-free check that replaced it first printed nothing
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "scalelab", "config", "--config", "nope"],
        env={**env, "RANK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("scalelab: error: "), done.stderr
