"""The README stays true: every config key and every metrics column is documented."""

import ast
import re
from dataclasses import MISSING, fields
from pathlib import Path

from scalelab import config
from scalelab.config import all_keys
from scalelab.train import METRIC_COLUMNS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_key_is_in_the_readme() -> None:
    missing = [k for k in all_keys() if k != "name" and f"`{k}`" not in README]
    assert not missing, f"README config reference lacks {missing}"


def _field_docs() -> dict[str, str]:
    """`section.key` -> the attribute docstring under its field in config.py."""
    tree = ast.parse(Path(config.__file__).read_text())
    section_of = {f.default_factory.__name__: n for n, f in config._SECTIONS.items() if n != "name"}
    docs = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in section_of:
            for field, doc in zip(node.body, node.body[1:], strict=False):
                if (
                    isinstance(field, ast.AnnAssign)
                    and isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)
                ):
                    docs[f"{section_of[node.name]}.{field.target.id}"] = doc.value.value
    return docs


def test_config_table_rows_give_each_keys_default_and_docstring() -> None:
    # a row copied from its neighbour and left unedited documents the wrong key
    rows = {}
    for line in README.splitlines():
        if m := re.match(r"^\| `(\w+\.\w+)` \| `(.*?)` \| (.*) \|$", line):
            rows[m.group(1)] = (m.group(2), m.group(3))
    docs = _field_docs()
    wrong = []
    for name, sec in config._SECTIONS.items():
        if name == "name":
            continue
        for f in fields(sec.default_factory):
            key = f"{name}.{f.name}"
            default = f.default if f.default is not MISSING else f.default_factory()
            assert key in docs, f"config.py has no docstring under {key}"
            if key not in rows:
                wrong.append(f"{key}: no table row")
            elif rows[key][0] != repr(default):
                wrong.append(
                    f"{key}: default {rows[key][0]} in the README, {default!r} in config.py"
                )
            elif " ".join(rows[key][1].split()) != " ".join(docs[key].split()):
                wrong.append(f"{key}: meaning differs from config.py's docstring")
    assert not wrong, wrong


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
