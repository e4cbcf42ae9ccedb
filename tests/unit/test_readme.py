"""The README stays true: every config key and every metrics column is documented."""

import re
from pathlib import Path

from scalelab.config import all_keys
from scalelab.train import METRIC_COLUMNS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_key_is_in_the_readme() -> None:
    missing = [k for k in all_keys() if k != "name" and f"`{k}`" not in README]
    assert not missing, f"README config reference lacks {missing}"


def test_every_metrics_column_is_in_the_readme() -> None:
    # the metrics.csv row of "What a run writes" names every column, as a whole word
    [row] = [ln for ln in README.splitlines() if ln.startswith("| `metrics.csv` |")]
    missing = [c for c in METRIC_COLUMNS if not re.search(rf"(?<![\w]){c}(?![\w])", row)]
    assert not missing, f"README's metrics.csv row lacks {missing}"


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    run_ci = re.compile(r"^\s*make test\s*$", re.M)  # the command itself, not make test-fast
    assert run_ci.search(ci), ".ci/run does not call `make test`"
    assert re.search(r"^make test\b(?!-)", README, re.M), "README does not give `make test`"
