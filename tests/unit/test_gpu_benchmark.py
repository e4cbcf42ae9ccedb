"""benchmarks/gpu.py's own logic: run order, the time budget, bad arguments, padding and width
accounting, FLOPs and device peaks, data preparation and the stop on a CUDA error.

The GPU figures themselves need a GPU; these check what decides and computes them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

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


# ----------------------------------------------------------------------------- helpers

TINY = [
    "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.d_ff=64",
    "model.vocab_size=2000", "data.source=sample", "output.progress=none", "train.batch_size=32",
]  # fmt: skip


def _tiny(cache_dir: Path, *over: str):
    """Config and prepared data of a tiny ag_news_small on the bundled sample."""
    from common import load_preset

    from scalelab.data import prepare_data

    cfg = load_preset("ag_news_small", [*TINY, f"data.cache_dir={cache_dir}", *over])
    return cfg, prepare_data(cfg)


def _stepper(cfg, data, padding: str):
    import torch
    from common import ScalelabStepper

    cfg.data.pad_to_max_len = padding == "max"
    cfg.data.pad_multiple = gpu.PAD_MULTIPLE if padding == "multiple" else 1
    return ScalelabStepper(cfg, data, device=torch.device("cpu"))


# ----------------------------------------------------------------------------- padding, widths


def test_padding_overhead_counts_the_width_the_batch_is_padded_to(cache_dir: Path) -> None:
    """The padded variants cost what make_batch builds: more than the dynamic (longest) one."""
    from scalelab.data import make_batch

    max_len, steps = 96, 4
    cfg, data = _tiny(cache_dir, f"model.max_seq_len={max_len}")
    lengths = data.train.lengths
    overhead = {}
    for padding in ("longest", "multiple", "max"):
        stepper = _stepper(cfg, data, padding)
        res = stepper.run(steps, warmup_steps=0)
        # independently: the first `steps` global batches of epoch 0 (1 rank, no accumulation)
        padded = real = 0
        for batch in stepper.sampler.global_batches(0)[:steps]:
            longest = int(lengths[batch].max())
            width = {
                "longest": longest,
                "multiple": max(longest, min(max_len, math.ceil(longest / 16) * 16)),
                "max": max_len,
            }[padding]
            pad_to = max_len if padding == "max" else None
            mult = 16 if padding == "multiple" else 1
            ids, _, _ = make_batch(data.train, batch, pad_to, pad_multiple=mult, max_len=max_len)
            assert ids.shape[1] == width  # the test's arithmetic is the batcher's
            padded += len(batch) * width
            real += int(lengths[batch].sum())
        assert (res["padded_tokens"], res["real_tokens"]) == (padded, real)
        assert res["samples"] == steps * cfg.train.batch_size
        overhead[padding] = padded / real - 1.0
    assert overhead["multiple"] > overhead["longest"] >= 0.0
    assert overhead["max"] > overhead["multiple"]


def test_compiled_warmup_runs_every_width_any_epoch_can_have(cache_dir: Path) -> None:
    cfg, data = _tiny(cache_dir, "model.max_seq_len=64")
    for padding in ("multiple", "longest", "max"):
        stepper = _stepper(cfg, data, padding)
        batches = gpu.width_batches(stepper)
        per_rank = stepper.sampler.per_rank
        assert all(len(b) == per_rank and stepper.width(b) == w for w, b in batches.items())
        epoch_widths = {
            stepper.width(b) for e in range(5) for b in stepper.sampler.global_batches(e)
        }
        assert epoch_widths <= set(batches)
        if padding == "max":
            assert set(batches) == {64}
    stepper = _stepper(cfg, data, "multiple")
    gpu.warm_every_width(stepper, repeats=2)
    widths = list(gpu.width_batches(stepper))
    assert set(stepper.width_steps) == set(widths) and len(widths) > 1
    # the first width again at the end: after the second width, the dynamic-shape graph serves
    # it too, and its first steps there (CUDA graphs: warm-up, recording) must not be timed
    assert stepper.width_steps[widths[0]] == 4
    assert all(stepper.width_steps[w] == 2 for w in widths[1:])
    warmed = set(stepper.width_steps)
    res = stepper.run(3, warmup_steps=0)  # sampler steps afterwards: no width is new
    assert res["widths"] and set(res["widths"]) <= warmed


# ----------------------------------------------------------------------------- FLOPs, peaks


def test_model_shape_counts_the_head_once_per_sample() -> None:
    from scalelab.models.transformer import TransformerClassifier

    m = TransformerClassifier(
        vocab_size=100, num_classes=4, d_model=32, num_layers=2, num_heads=2, d_ff=64,
        max_seq_len=16, dropout=0.0,
    )  # fmt: skip
    shape = gpu.model_shape(m)
    emb = m.tok_emb.weight.numel() + m.pos_emb.weight.numel()
    head = sum(p.numel() for p in m.head.parameters())
    assert (shape.n_head, shape.layers, shape.width) == (head, 2, 32)
    assert shape.n_body + shape.n_head + emb == sum(p.numel() for p in m.parameters())
    flops = gpu.train_flops(shape, real_tokens=1000, real_tokens_sq=50_000, samples=10)
    assert flops == 6 * shape.n_body * 1000 + 6 * head * 10 + 12 * 2 * 32 * 50_000


def test_model_shape_of_distilbert_puts_pre_classifier_and_classifier_in_the_head() -> None:
    pytest.importorskip("transformers")
    from scalelab.models.distilbert import DistilBertClassifier

    m = DistilBertClassifier(vocab_size=100, num_classes=4, max_seq_len=64, dropout=0.0)
    shape = gpu.model_shape(m)
    head = sum(
        p.numel() for mod in (m.net.pre_classifier, m.net.classifier) for p in mod.parameters()
    )
    emb = m.net.distilbert.embeddings
    tables = emb.word_embeddings.weight.numel() + emb.position_embeddings.weight.numel()
    assert shape.n_head == head and (shape.layers, shape.width) == (6, 768)
    assert shape.n_body == sum(p.numel() for p in m.parameters()) - tables - head


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("nvidia h200 nvl", 835.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100-PCIE-80GB", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA RTX A1000", None),  # "A100" is not a word of it
        ("cpu", None),
    ],
)
def test_peak_tflops_takes_the_most_specific_name(name: str, peak: float | None) -> None:
    assert gpu.peak_tflops(name) == peak


def test_waits_note_names_host_syncs_and_pageable_copies_only_when_present() -> None:
    assert gpu.waits_note({"host_syncs_per_step": 0.0, "pageable_copies_per_step": 0.0}) == ""
    assert gpu.waits_note({}) == ""  # a profile without a GPU timeline (its error)
    note = gpu.waits_note({"host_syncs_per_step": 1.0, "pageable_copies_per_step": 0.3333})
    assert note == "syncs 1/step, pageable 0.33/step"


def test_inductor_counter_reads_a_missing_key_as_zero() -> None:
    from torch._dynamo.utils import counters

    assert gpu.inductor_counter("no_such_counter_here") == 0
    assert "no_such_counter_here" not in counters["inductor"]  # reading does not create it
    before = gpu.inductor_counter("cudagraph_skips")
    counters["inductor"]["cudagraph_skips"] += 2
    try:
        assert gpu.inductor_counter("cudagraph_skips") - before == 2
    finally:
        counters["inductor"]["cudagraph_skips"] -= 2


# ----------------------------------------------------------------------------- main's loop


def test_data_is_prepared_before_the_first_variant_and_a_cuda_error_stops_the_run(
    tmp_path: Path, cache_dir: Path, monkeypatch, capsys
) -> None:
    import torch

    import scalelab.data

    events: list[str] = []
    real_prepare = scalelab.data.prepare_data

    def prepare(cfg):
        events.append("prepare")
        return real_prepare(cfg)

    def failing_variant(*args, **kwargs):
        events.append("variant")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(scalelab.data, "prepare_data", prepare)
    monkeypatch.setattr(gpu, "bench_variant", failing_variant)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--out", str(out), "--cache-dir", str(cache_dir)]) == 1
    cases = {c for c, *_ in gpu.plan(tiny=True, cuda=torch.cuda.is_available(), only=[])}
    assert events == ["prepare"] * len(cases) + ["variant"]  # every case's data, then one variant
    res = json.loads(out.read_text())
    assert set(res["data_prep_s"]) == cases
    assert [len(v) for v in res["cases"].values()] == [1] and "aborted" in res
    assert res["complete"] is False
    n_jobs = len(gpu.plan(tiny=True, cuda=torch.cuda.is_available(), only=[]))
    assert len(res["skipped"]) == n_jobs - 1
    assert all("CUDA error" in why for why in res["skipped"].values())
    stop = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gpu.py: stopped")]
    assert len(stop) == 1 and "CUDA error" in stop[0]


def test_a_case_that_fails_to_prepare_is_skipped_with_its_error(
    tmp_path: Path, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise KeyError("no such preset field")  # not a ConfigError/DataError/ValueError

    import torch

    monkeypatch.setattr(gpu, "load_preset", broken)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["cases"] == {}
    assert set(res["skipped"]) == {
        c for c, *_ in gpu.plan(tiny=True, cuda=torch.cuda.is_available(), only=[])
    }
    assert all(why.startswith("skipped: KeyError:") for why in res["skipped"].values())


def test_a_run_killed_inside_a_variant_keeps_its_timed_block(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """The JSON holds a variant's timed figures as soon as they exist: a run killed in the
    variant's profile (here: an interrupt; on the device, the deadline's timeout) keeps them."""

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # not an Exception: bench_variant does not catch it either

    monkeypatch.setattr(gpu, "profile_steps", killed)
    out = tmp_path / "gpu.json"
    argv = ["--tiny", "--out", str(out), "--cache-dir", str(cache_dir), "--profile-steps", "2"]
    with pytest.raises(KeyboardInterrupt):
        gpu.main(argv)
    res = json.loads(out.read_text())
    assert res["complete"] is False
    ((row,),) = res["cases"].values()
    assert row["partial"].startswith("timed block only") and row["samples_per_s"] > 0
    assert row["timed_steps"] > 0 and "profile" not in row


def test_a_failing_epoch_keeps_the_variants_timed_block(cache_dir: Path, monkeypatch) -> None:
    """The 120k-sample epoch runs after the timed block (priority-0 variants on a GPU): its
    failure (out of memory, say) is recorded beside the timed figures, which it used to erase."""
    from common import ScalelabStepper

    cfg, data = _tiny(cache_dir)
    real_run = ScalelabStepper.run
    calls = []

    def run(self, num_steps, warmup_steps=3):
        calls.append(num_steps)
        if len(calls) > 1:  # the timed block first, then the epoch
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_run(self, num_steps, warmup_steps)

    monkeypatch.setattr(ScalelabStepper, "run", run)
    v = gpu.Variant("fp32", "", "longest", 0)
    out = gpu.bench_variant(cfg, data, v, steps=3, seconds=1.0, warmup=1, profile=0,
                            full_epoch=True)  # fmt: skip
    assert out["samples_per_s"] > 0 and "epoch_time_s_measured" not in out
    assert out["epoch_error"] == "RuntimeError: CUDA out of memory (simulated)"
