"""benchmarks/gpu.py's own logic: run order, the time budget, bad arguments.

The GPU figures themselves need a GPU; these check what decides and computes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu  # noqa: E402  (benchmarks/gpu.py: a broken import must fail, not skip)


def test_plan_runs_the_target_configurations_first() -> None:
    jobs = gpu.plan(tiny=False, cuda=True, only=[])
    first = [(case, v.label) for case, _, _, v in jobs[:3]]
    assert first == [
        ("ag_news_small-b32", "bf16 reduce-overhead pad%16"),
        ("ag_news_large-b128", "bf16 default pad%16"),
        ("distilbert-seq256-b128", "bf16 default pad%16"),
    ]
    assert {case for case, *_ in jobs} == {c for c, _, _ in gpu.cases(False)}
    priorities = [v.priority for *_, v in jobs]
    assert priorities == sorted(priorities)
    only = gpu.plan(tiny=False, cuda=True, only=["distilbert"])
    assert {case for case, *_ in only} == {"distilbert-seq256-b128", "distilbert-seq128-b128"}


def test_spent_budget_skips_variants_and_marks_the_result_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--budget-s", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["cases"] == {}
    import torch

    assert len(res["skipped"]) == len(gpu.plan(tiny=True, cuda=torch.cuda.is_available(), only=[]))
    assert all("budget" in why for why in res["skipped"].values())


def test_bad_data_dir_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert gpu.main(["--tiny", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ag_news folder" in err[0]
    assert not (tmp_path / "o").exists()
