"""Report files: CSV, LaTeX table, Markdown/text, self-contained HTML, compiling LaTeX."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scalelab.analysis import AnalysisError, load_runs
from scalelab.analysis.predict import predict_scaling
from scalelab.analysis.report import CSV_COLUMNS, format_predictions, tex_escape, write_report
from tests.unit.runfolders import write_run, write_sweep

PLOTS = (
    "epoch_time",
    "speedup",
    "efficiency",
    "throughput",
    "accuracy",
    "time_breakdown",
    "predicted_vs_measured",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    write_sweep(root / "sweep", [1, 2, 4])
    # A second preset without a 1-rank run, padded, with an input-bound 4-rank run.
    padded = {"data": {"pad_to_max_len": True, "delay_per_batch_s": 0.02}}
    write_run(root / "sweep", "imdb_small-ws2", world_size=2, preset="imdb_small", summary=padded)
    write_run(
        root / "sweep",
        "imdb_small-ws4",
        world_size=4,
        preset="imdb_small",
        timing={"data_ms": 20.0, "step_ms": 51.0},
        epoch_time_s=5.1,
        summary=padded,
    )
    return write_report([root / "sweep"], root / "report", busbw_gbps=10.0, alpha_ms=0.05)


def test_all_files_written_and_not_empty(report):
    expected = {
        "csv",
        "summary_table",
        "markdown",
        "text",
        "html",
        "latex",
        *(f"plot_{p}" for p in PLOTS),
    }
    assert set(report) == expected
    for path in report.values():
        assert path.is_file() and path.stat().st_size > 0
    assert report["plot_speedup"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_contents(report):
    with report["csv"].open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = {r["run_name"]: r for r in reader}
    assert len(rows) == 5
    ws4 = rows["ag_news_small-ws4"]
    assert float(ws4["speedup"]) == pytest.approx(100 / 31.25)
    assert float(ws4["efficiency"]) == pytest.approx(100 / 31.25 / 4)
    assert float(ws4["predicted_step_ms"]) == pytest.approx(30.6)
    assert float(ws4["prediction_error_pct"]) == pytest.approx((30.6 - 31.25) / 31.25 * 100)
    assert float(ws4["compute_to_comm_ratio"]) == pytest.approx(22.5 / 4)
    assert rows["ag_news_small-ws1"]["karp_flatt"] == ""
    # The imdb group has no 1-rank run: relative to 2 ranks, and no prediction.
    assert float(rows["imdb_small-ws4"]["speedup"]) == pytest.approx(5.45 / 5.1)
    assert rows["imdb_small-ws4"]["predicted_step_ms"] == ""


def test_summary_table_is_booktabs_and_escaped(report):
    tex = report["summary_table"].read_text()
    for cmd in (r"\begin{table}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{table}"):
        assert cmd in tex
    assert r"ag\_news\_small-ws4" in tex
    assert tex.startswith("% requires \\usepackage{booktabs}")
    body = tex.split("\n", 1)[1]
    assert not re.search(r"(?<!\\)[_%#]", body), "unescaped LaTeX special character"
    assert "3.2" in tex  # the 4-rank speedup


def test_text_reports_carry_the_numbers(report):
    for key in ("markdown", "text"):
        text = report[key].read_text()
        if key == "markdown":  # names and findings are escaped there (delay\_per\_batch\_s)
            text = re.sub(r"\\(.)", r"\1", text)
        assert "1.83" in text  # 2-rank speedup = 100 / 54.5
        assert "Amdahl fit: serial fraction s =" in text
        assert "Karp-Flatt" in text
        assert "Input-bound" in text and "delay_per_batch_s = 0.02 s" in text
        assert "Padding waste" in text
        assert "smallest world size (2 ranks" in text
        # predicted vs measured error of the 4-rank run: (30.6 - 31.25) / 31.25
        assert "-2.1%" in text
    assert "![" in report["markdown"].read_text()


def test_html_is_self_contained(report):
    page = report["html"].read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(PLOTS)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page.lower()
    assert not re.search(r"<script[^>]*src=", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "<style>" in page and "Recommendation:" in page


def test_single_run_report(tmp_path):
    write_run(tmp_path / "runs", "only", world_size=1)
    files = write_report([tmp_path / "runs" / "only"], tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in files.values())
    assert "needs at least two world sizes" in files["text"].read_text()


def test_bad_folder_is_an_analysis_error(tmp_path):
    with pytest.raises(AnalysisError, match=r"missing: not a run folder \(does not exist"):
        write_report([tmp_path / "missing"], tmp_path / "out")


def test_format_predictions(tmp_path):
    write_run(tmp_path, "base")
    base = load_runs([tmp_path / "base"])[0].summary
    text = format_predictions(predict_scaling(base, [1, 2, 4], busbw_gbps=10.0, alpha_ms=0.05))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["world", "size"]
    assert len(lines) == 2 + 3
    assert "30.60" in lines[-1] and "81.7%" in lines[-1]


def test_tex_escape():
    assert tex_escape("a_b%c&d#e$f") == r"a\_b\%c\&d\#e$\$$f"
    assert tex_escape("GPU™ x→y") == r"GPUTM x$\rightarrow$y"
    # accents go; a character with no ASCII form is a ? (was dropped: 实验1 read as 1)
    assert tex_escape("café 实验1") == "cafe ??1"
    # full-width specials normalise to ASCII ones, which are then escaped (a bare % would
    # comment out the rest of a table row)
    assert tex_escape("ws2％fast＿run＆＄") == r"ws2\%fast\_run\&$\$$"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_report_tex_compiles(report):
    out = report["latex"].parent
    tex = report["latex"].read_text()
    for section in (
        "Setup",
        "Method of measurement",
        "Results",
        "Diagnosis",
        "Cost model for prediction",
    ):
        assert rf"\section{{{section}}}" in tex
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    pdf = out / "report.pdf"
    assert pdf.is_file() and pdf.stat().st_size > 10_000
    log = (out / "report.log").read_text(errors="replace")
    pages = int(re.search(r"Output written on report\.pdf \((\d+) pages?", log).group(1))
    assert pages > 1
    # Every float made it into the PDF with its label: one \newlabel per figure/table in the .aux.
    aux = (out / "report.aux").read_text()
    figures = tex.count(r"\begin{figure}")
    tables = tex.count(r"\begin{table}")
    assert figures == len(PLOTS)
    # runs, summary, 2 scaling groups, breakdown, lost efficiency, 1 prediction
    assert tables == 1 + 1 + 2 + 1 + 1 + 1
    assert len(re.findall(r"\\newlabel\{fig:", aux)) == figures
    assert len(re.findall(r"\\newlabel\{tab:", aux)) == tables
    assert log.count("<use ") >= figures  # every PNG was included
    assert ".pk>" not in log, "bitmap (TS1) fonts were needed; escape to math-mode glyphs"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"busbw_gbps": -2.0}, "--busbw-gbps must be > 0"),
        ({"busbw_gbps": 0.0}, "--busbw-gbps must be > 0"),
        ({"alpha_ms": 0.1}, "--alpha-ms needs --busbw-gbps"),
        ({"busbw_gbps": 1.0, "alpha_ms": -1.0}, "--alpha-ms must be >= 0"),
    ],
)
def test_bad_bandwidth_flags_are_errors_not_a_silent_report(
    tmp_path: Path, kwargs: dict, fragment: str
) -> None:
    # they used to be dropped (or turned into a "no prediction" note) and the report written anyway
    write_sweep(tmp_path / "runs", [1, 2])
    with pytest.raises(AnalysisError, match=fragment):
        write_report([tmp_path / "runs"], tmp_path / "report", **kwargs)
    assert not (tmp_path / "report").exists()


def test_out_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    write_sweep(tmp_path / "runs", [1, 2])
    (tmp_path / "taken").write_text("x")
    with pytest.raises(AnalysisError, match="not a folder"):  # was FileExistsError
        write_report([tmp_path / "runs"], tmp_path / "taken")


def test_negative_alpha_is_refused_by_predict(tmp_path: Path) -> None:
    write_sweep(tmp_path, [1])
    [run] = load_runs([tmp_path])
    with pytest.raises(AnalysisError, match="alpha must be >= 0"):
        predict_scaling(run.summary, [2], busbw_gbps=1.0, alpha_ms=-50.0)


def test_lost_efficiency_table_splits_the_excess_by_phase(report):
    text = report["markdown"].read_text()
    assert "Where the efficiency went" in text
    # and says in words which phase lost most (a 74 % run read "No problems detected" only)
    assert (
        "Largest loss per run: ag\\_news\\_small-ws2 (2 ranks, efficiency 92%): optimizer, "
        "+2.50 ms, 56% of what the phases grew by (step excess 4.50 ms)" in text
    )
    # 2 ranks of the healthy sweep: ideal step 50 ms (every 1-rank phase halved), measured 54.5;
    # the excess is 1 ms exposed all-reduce + 2.5 ms optimizer (does not shrink) + 1 ms other.
    row = next(
        line for line in text.splitlines() if line.startswith("| ag\\_news\\_small-ws2 | 2 | 50 |")
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:] == [
        "50",
        "54.5",
        "4.5",
        "+1.00",
        "+2.50",
        "+0.00",
        "+0.00",
        "+0.00",
        "+0.00",
        "+1.00",
    ]


def test_time_breakdown_shows_the_slowest_ranks_forward(report):
    # DDP makes every rank's step equally long, so a straggler shows in the forward (no
    # collective there): the table shows the slowest rank's forward, 1.05 x the mean here.
    lines = report["markdown"].read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| run | ranks | data |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    row = next(line for line in lines[start:] if line.startswith("| ag\\_news\\_small-ws2 | 2 |"))
    cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
    assert cells["forward"] == "15"  # 30 ms at 1 rank, halved
    assert cells["slowest forward"] == "15.8"  # 15 x 1.05


def test_dollar_signs_in_names_are_plain_text_in_the_plots(tmp_path: Path) -> None:
    """A '$...$' pair in a run or preset name was parsed as mathtext: a traceback, no report."""
    from scalelab.analysis.report import write_report

    for n in (1, 2):
        write_run(tmp_path / "runs", f"cost $\\frac$ run-ws{n}", world_size=n,
                  preset="price $5 and $6")  # fmt: skip
    report = write_report([tmp_path / "runs"], tmp_path / "out", busbw_gbps=10.0)
    assert report["plot_accuracy"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_names_are_literal_text_in_the_markdown(tmp_path: Path) -> None:
    """A name with HTML or a newline: no live tag, no table row split in two."""
    write_run(tmp_path / "runs", "ws1", summary={"run_name": "<script>x</script>\nws1"})
    md = write_report([tmp_path / "runs"], tmp_path / "out", busbw_gbps=10.0)["markdown"]
    text = md.read_text()
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt; ws1" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "script" in ln]
    assert rows and all(ln.endswith(" |") for ln in rows)
    # in the paragraphs too: a preset's name reaches the group labels of the notes
    for n in (1, 2):
        write_run(tmp_path / "p", f"r{n}", world_size=n, preset="<b>p</b>")
    text = write_report([tmp_path / "p"], tmp_path / "out2", busbw_gbps=10.0)["markdown"]
    paras = [ln for ln in text.read_text().splitlines() if "p&lt;/b&gt;" in ln]
    assert "<b>" not in text.read_text() and any(not ln.startswith(("|", "#", "*")) for ln in paras)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_summary_table_fits_a_page_as_given(report, tmp_path: Path) -> None:
    """summary_table.tex pasted into a plain article (2 cm margins) is not wider than the text."""
    (tmp_path / "doc.tex").write_text(
        "\\documentclass[11pt]{article}\n\\usepackage[margin=2cm]{geometry}\n"
        "\\usepackage{booktabs}\n\\begin{document}\n"
        f"\\input{{{report['summary_table']}}}\n\\end{{document}}\n"
    )
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text(errors="replace")


def test_csv_cells_that_start_like_a_formula_stay_text(tmp_path):
    """A run named "=HYPERLINK(..)" or "@SUM(..)" must not become a formula in a spreadsheet;
    numbers (negative ones too) stay numbers."""
    from scalelab.analysis.report import csv_cell

    write_run(tmp_path / "runs", "=HYPERLINK(1)", world_size=1)
    write_run(tmp_path / "runs", "@SUM(1)-ws2", world_size=2)
    out = write_report([tmp_path / "runs"], tmp_path / "report", busbw_gbps=10.0, alpha_ms=0.05)
    with out["csv"].open() as fh:
        names = sorted(r["run_name"] for r in csv.DictReader(fh))
    assert names == ["'=HYPERLINK(1)", "'@SUM(1)-ws2"]
    assert [csv_cell(v) for v in (-1.5, 3, "ws-2", "-x", None)] == [-1.5, 3, "ws-2", "'-x", None]


def test_runs_calibrated_the_old_way_are_named_in_the_method(tmp_path: Path) -> None:
    """Runs whose exposed communication came from the calibration before 2026-12-07 (the
    synchronised step first in every pair: it reads high) are named, and only they."""
    old = "calibration: median(fwd+bwd with DDP sync) - median(fwd+bwd under no_sync); allreduce_ms: x"
    write_run(tmp_path / "runs", "base", world_size=1)
    write_run(tmp_path / "runs", "old2", world_size=2, summary={"comm": {"method": old}})
    write_run(tmp_path / "runs", "new4", world_size=4)
    text = write_report([tmp_path / "runs"], tmp_path / "out")["markdown"].read_text()
    assert "The exposed communication of old2 comes from the calibration of scalelab before" in text
    assert "of new4 comes" not in text and "old2, new4" not in text
    write_run(tmp_path / "fresh", "base", world_size=1)
    write_run(tmp_path / "fresh", "new2", world_size=2)
    text = write_report([tmp_path / "fresh"], tmp_path / "out2")["markdown"].read_text()
    assert "comes from the calibration of scalelab before" not in text


def test_runs_resumed_with_other_timed_settings_are_named_in_the_method(tmp_path: Path) -> None:
    """summary.json's config_changes (a resume changed how the steps run): the run's timings
    mix both settings, and the report says so for that run only."""
    change = {"epoch": 3, "step": 0, "key": "train.compile", "before": False, "after": True}
    mid = {"epoch": 4, "step": 7, "key": "data.pad_multiple", "before": 1, "after": 8}
    write_run(tmp_path / "runs", "base", world_size=1)
    write_run(tmp_path / "runs", "mixed2", world_size=2, summary={"config_changes": [change, mid]})
    write_run(tmp_path / "runs", "clean4", world_size=4, summary={"config_changes": []})
    text = write_report([tmp_path / "runs"], tmp_path / "out")["markdown"].read_text()
    text = text.replace("\\_", "_")  # Markdown's escaped underscores
    assert (
        "Resumed with other settings: mixed2 (train.compile False, then True from epoch 3; "
        "data.pad_multiple 1, then 8 from epoch 4 step 7); the steps before each change were "
        "timed with the old value" in text
    )
    said = text.split("Resumed with other settings: ", 1)[1].split("; the steps", 1)[0]
    assert said.startswith("mixed2 (") and "clean4" not in said and "base" not in said
    write_run(tmp_path / "fresh", "base", world_size=1)
    text = write_report([tmp_path / "fresh"], tmp_path / "out2")["markdown"].read_text()
    assert "Resumed with other settings" not in text


def test_an_unmeasured_exposed_communication_shows_as_unknown_not_0(tmp_path):
    """train.comm_calibration_steps=0: the lost-efficiency table and the time breakdown keep
    the backward whole (marked) instead of calling all of it compute."""
    from scalelab.analysis.plots import breakdown_ms

    write_run(tmp_path / "runs", "ws1")
    write_run(tmp_path / "runs", "ws2", world_size=2, summary={"comm": {"exposed_comm_ms": None}})
    outputs = write_report([tmp_path / "runs"], tmp_path / "report", busbw_gbps=10.0)
    (row,) = [line for line in outputs["markdown"].read_text().splitlines() if "| ws2 | 2 | " in line
              and "incl. comm" in line]  # fmt: skip
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "-" and cells[8] == "+1.00 (incl. comm)", cells  # exposed, backward
    (ws2,) = [r for r in load_runs([tmp_path / "runs" / "ws2"])]
    parts = breakdown_ms(ws2)
    assert parts["exposed_comm_ms"] == 0 and parts["backward_compute_ms"] == 0
    assert parts["backward_incl_comm_ms"] == pytest.approx(31.0)


def test_a_run_compared_with_none_has_no_speedup(tmp_path):
    """Alone at its world size in its group (each run of a weak-scaling sweep): blank, not 1x
    and 100 % against itself; the runs of a sweep keep theirs."""
    from scalelab.analysis.report import analyse_runs, csv_rows

    write_sweep(tmp_path / "runs", [1, 2])
    write_run(tmp_path / "runs", "alone-ws2", world_size=2, summary={"global_batch": 128})
    rows = {r["run_name"]: r for r in csv_rows(analyse_runs(load_runs([tmp_path / "runs"])))}
    assert rows["alone-ws2"]["speedup"] is None and rows["alone-ws2"]["efficiency"] is None
    assert rows["ag_news_small-ws1"]["speedup"] == pytest.approx(1.0)
    assert rows["ag_news_small-ws2"]["speedup"] > 1.5
