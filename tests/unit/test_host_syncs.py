"""A training step never reads a tensor's value on the host (on a GPU each read is a host sync).

The README says it: the trainer reads the loss only every train.log_every_steps. On a GPU a
host read (.item(), `if tensor:`, a data-dependent shape) waits for every queued kernel and then
leaves the GPU idle while the CPU launches the next ones: one of the costs a scaling study
must not blame on communication. The checks run on the CPU with the GPU's code paths (the
CPU-only fast kernels and row-wise embedding gradient, which read host tensors by design, off)
and record every call that would read a value back.
"""

from __future__ import annotations

import itertools
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from scalelab import distributed as D
from scalelab.config import ModelConfig, load_config
from scalelab.data import prepare_data
from scalelab.models import build_model
from scalelab.timing import StepTimer
from scalelab.train import _make_optimizer, _make_scheduler, make_sampler, train_step

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "scalelab" / "configs"

#: Tensor methods and functions that read values on the host, or make an output whose shape
#: depends on them.
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
DATA_SHAPED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}


class HostReads(TorchFunctionMode):
    """Records (name, where) of each host read of a tensor value inside the `with` block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                name = "boolean indexing"
        if name in HOST_READS or name in DATA_SHAPED or name == "boolean indexing":
            self.seen.append((name, "".join(traceback.format_stack(limit=6)[:-1])))
        return func(*args, **(kwargs or {}))


def test_the_recorder_sees_host_reads() -> None:
    """The checks below find nothing only if nothing is there: the recorder sees each kind."""
    x = torch.arange(6.0)
    with HostReads() as reads:
        if x.any():
            x.sum().item()
        float(x[0]), x.tolist(), x[x > 2], torch.nonzero(x), x.unique()
    assert [n for n, _ in reads.seen] == [
        "__bool__", "item", "__float__", "tolist", "boolean indexing", "nonzero", "unique"
    ]  # fmt: skip


def _gpu_code_paths(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "cpu_kernels"):
            module.cpu_kernels = False  # CUDA takes F.dropout and SDPA


def _trainer(preset: str, tmp_path: Path, *overrides: str, on_device: bool = False):
    """What `fit` builds for a run of `preset` (one process; the splits on the GPU where
    `on_device` and the device is CUDA, as data.on_device does), on the GPU's code paths."""
    cfg = load_config(
        CONFIGS / f"{preset}.yaml",
        [
            f"data.cache_dir={tmp_path}",
            "train.embedding_grad=dense",  # what CUDA runs (auto: rows on CPU only)
            "train.max_grad_norm=1.0",
            "train.grad_accum_steps=2",
            *overrides,
        ],
    )
    env = D.init_distributed(cfg.distributed)
    assert not env.is_distributed
    torch.manual_seed(0)
    data = prepare_data(cfg, is_main=True, barrier=lambda: None)
    model = build_model(cfg.model, data.vocab_size, data.num_classes, data.train.pad_id)
    _gpu_code_paths(model)
    model.to(env.device)
    if on_device and env.device.type == "cuda":
        data = data.to(env.device)
    sampler = make_sampler(cfg, env, data.train.lengths)
    sampler.set_epoch(0)
    optimizer = _make_optimizer(model, cfg, env.device)
    scheduler = _make_scheduler(optimizer, cfg, 10)
    timer = StepTimer(env.device)
    amp = torch.bfloat16 if cfg.train.precision == "bf16" else None

    def step(micro) -> torch.Tensor:
        loss = train_step(model, micro, data, optimizer, scheduler, None, timer, cfg, env, amp)
        timer.end_step()
        return loss

    return env, sampler, step


def _steps_read_nothing(preset: str, tmp_path: Path, *overrides: str) -> None:
    _, sampler, step = _trainer(preset, tmp_path, *overrides)
    losses = []
    for micro in itertools.islice(sampler, 3):
        with HostReads() as reads:
            loss = step(micro)
        assert not reads.seen, "a training step reads on the host:\n" + "\n".join(
            f"{name} at\n{where}" for name, where in reads.seen
        )
        losses.append(float(loss))
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)  # the steps really trained


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scalelab_transformer_step_reads_nothing_on_the_host(tmp_path, precision) -> None:
    _steps_read_nothing(
        "ag_news_small", tmp_path, f"train.precision={precision}", "train.batch_size=16"
    )


def _prepared_mask() -> None:
    """Skip unless transformers is installed and takes DistilBERT's 4-D mask (version 5)."""
    pytest.importorskip("transformers")
    from scalelab.models.distilbert import _takes_prepared_mask

    if not _takes_prepared_mask():
        pytest.skip("transformers 4 takes only a 2-D mask (and syncs on it)")


def test_distilbert_step_reads_nothing_on_the_host(tmp_path) -> None:
    """transformers 5 asks the device whether a 2-D padding mask has padding (a host sync per
    forward); the wrapper hands it the 4-D mask SDPA takes."""
    _prepared_mask()
    _steps_read_nothing(
        "ag_news_distilbert",
        tmp_path,
        "train.batch_size=8",
        "model.max_seq_len=48",
        "data.max_train_samples=64",
    )


def test_distilbert_prepared_mask_computes_what_transformers_mask_does() -> None:
    _prepared_mask()
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="distilbert", max_seq_len=32, dropout=0.0), 300, 3)
    model.eval()
    ids = torch.randint(5, 300, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = model.net(input_ids=ids, attention_mask=mask).logits  # 2-D: transformers' mask
        alone = model(ids[2:, :3], mask[2:, :3])  # the short sequence without its padding
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[2:], alone, atol=1e-5, rtol=1e-5)


def test_distilbert_forward_with_the_prepared_mask_compiles_as_one_graph() -> None:
    """train.compile=true (and benchmarks/gpu.py's compiled DistilBERT): the 4-D mask keeps the
    forward one graph without breaks."""
    _prepared_mask()
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="distilbert", max_seq_len=32, dropout=0.1), 300, 3)
    ids = torch.randint(5, 300, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 6:] = False
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.train())(ids, mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("on_device", [True, False])
def test_cuda_steps_neither_wait_for_the_gpu_nor_copy_from_pageable_memory(
    tmp_path, on_device
) -> None:
    """What the recorder above cannot see: a copy from pageable host memory (the batch's index
    with data.on_device, the batch itself without) may synchronise with the stream. The
    profiler's trace of three steps holds neither such a copy nor a host sync."""
    from scalelab.profiling import StepProfiler

    env, sampler, step = _trainer(
        "ag_news_small", tmp_path, "train.batch_size=16", on_device=on_device
    )
    batches = itertools.islice(sampler, 5)
    for micro in itertools.islice(batches, 2):  # warm-up: allocator, kernels' first launches
        step(micro)
    prof = StepProfiler(3, 0, env.device, tmp_path / "trace.json")
    for i, micro in enumerate(batches):
        prof.before_step(i)
        step(micro)
        prof.after_step()
    res = prof.result
    assert res is not None and res["gpu_events"] > 0, res
    assert res["pageable_copies_per_step"] == 0, res
    assert res["host_syncs_per_step"] == 0, res
