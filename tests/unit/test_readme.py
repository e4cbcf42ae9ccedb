"""The README stays true: every config key and every metrics column is documented."""

from pathlib import Path

from scalelab.config import all_keys
from scalelab.train import METRIC_COLUMNS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_key_is_in_the_readme() -> None:
    missing = [k for k in all_keys() if k != "name" and f"`{k}`" not in README]
    assert not missing, f"README config reference lacks {missing}"


def test_every_metrics_column_is_in_the_readme() -> None:
    assert all(c in README for c in METRIC_COLUMNS)


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in README and "make test" in ci
