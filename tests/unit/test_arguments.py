"""A bad flag of any command is one line, `scalelab: error: ...`, and exit 2 (not a usage block)."""

from __future__ import annotations

import pytest

from scalelab.cli import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["predict", "run", "--world-sizes", "abc"], "comma-separated integers"),
        (["predict", "run", "--busbw-gbps", "fast"], "invalid float value: 'fast'"),
        (["data", "--older-than-days", "abc"], "invalid float value"),
        (["report", "runs"], "required: --out"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        # the commands with their own parsers
        (["sweep", "--world-sizes", "abc"], "comma-separated integers"),
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
