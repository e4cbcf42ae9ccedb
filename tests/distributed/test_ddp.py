"""DDP correctness with real processes (torchrun, gloo on CPU): equivalence, no_sync, exact eval."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import rank_errors, torchrun

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).parent / "scripts"
STEPS = 4
TINY = [
    "data.source=sample", "data.max_train_samples=512", "data.max_test_samples=301",
    "model.vocab_size=2000", "model.d_model=32", "model.num_layers=1", "model.num_heads=2",
    "model.d_ff=64", "model.max_seq_len=64", "model.dropout=0", "train.batch_size=24",
    f"train.max_steps_per_epoch={STEPS}", "distributed.bucket_cap_mb=0.05",
]  # fmt: skip


def run_worker(tmp: Path, name: str, nproc: int, cache: Path, *extra: str) -> list[dict]:
    out = tmp / name
    res = torchrun(
        [str(SCRIPTS / "ddp_worker.py"), str(out), *TINY, f"data.cache_dir={cache}", *extra], nproc
    )
    assert res.returncode == 0, rank_errors(res)
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


def assert_params_close(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize(
    ("embedding_sync", "embedding_grad", "grad_sync", "wait"),
    [
        ("rows", "auto", "auto", "auto"),  # gloo's default: one fused all-reduce, spun for
        ("rows", "auto", "auto", "block"),  # ... waited for in gloo's wait()
        ("rows", "auto", "buckets", "auto"),  # DDP's bucket all-reduces, then the rows'
        ("dense", "auto", "auto", "auto"),
        ("rows", "dense", "auto", "auto"),
    ],
)
def test_two_ranks_match_one_process(
    tmp_path: Path,
    cache_dir: Path,
    embedding_sync: str,
    embedding_grad: str,
    grad_sync: str,
    wait: str,
) -> None:
    [single] = run_worker(tmp_path, "ws1", 1, cache_dir)
    assert single["sparse_backward"]  # auto on CPU: the embedding's backward is row-sparse
    r0, r1 = run_worker(
        tmp_path,
        "ws2",
        2,
        cache_dir,
        f"distributed.embedding_grad_sync={embedding_sync}",
        f"train.embedding_grad={embedding_grad}",
        f"distributed.grad_sync={grad_sync}",
        f"distributed.collective_wait={wait}",
        "distributed.bucket_cap_mb=0.01",  # several buckets even without the embedding
    )
    # rows: the embedding left DDP and only the rows the global batch used were all-reduced
    assert r0["row_sync"] is (embedding_sync == "rows")
    # gloo: scalelab's own all-reduce is waited for spinning unless told to block
    assert r0["spin_wait"] is (embedding_sync == "rows" and wait != "block")
    # fused: DDP handed all its buckets over to the one all-reduce
    assert r0["fused"] is (embedding_sync == "rows" and grad_sync == "auto")
    # (from the second step on: DDP lays its buckets out anew after the first)
    assert r0["num_buckets"] > 1 and set(r0["calls_per_step"][1:]) == {r0["num_buckets"]}
    # auto: sparse backward only where DDP does not bucket the embedding
    assert r0["sparse_backward"] is (embedding_sync == "rows" and embedding_grad == "auto")
    if embedding_sync == "rows":
        assert len(r0["rows_per_step"]) == STEPS
        assert 0 < max(r0["rows_per_step"]) < r0["params"]["tok_emb.weight"].shape[0]
    # identical across ranks (DDP all-reduced the same gradients, same optimizer)
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # equal to single-process training on the same global batches
    assert_params_close(single["params"], r0["params"])
    # ... and the parameters really moved (the comparison is not between two untouched inits)
    start = run_worker(tmp_path, "ws1_0", 1, cache_dir, "train.max_steps_per_epoch=0")[0]["params"]
    assert any(not torch.allclose(start[k], single["params"][k]) for k in start)
    # the two ranks' micro-batches of each step are disjoint and together form the 1-process batch
    for step in range(STEPS):
        a, b = set(r0["batches"][step][0]), set(r1["batches"][step][0])
        assert not a & b and len(a) == len(b) == 12
        assert a | b == set(single["batches"][step][0])


@pytest.mark.parametrize("grad_sync", ["fused", "buckets"])
def test_arrival_spread_shows_a_rank_that_reaches_the_all_reduce_late(
    tmp_path: Path, cache_dir: Path, grad_sync: str, monkeypatch
) -> None:
    """The last rank's forward sleeps 40 ms per step: with 2 ranks it arrives 40 ms after the
    other, 20 ms after the ranks' mean, in every step after the worker's 2 warm-up steps.
    Without the sleep the ranks arrive together, within a few ms."""
    sync = [f"distributed.grad_sync={grad_sync}"]
    monkeypatch.setenv("LATE_RANK_MS", "40")
    late = run_worker(tmp_path, "late", 2, cache_dir, *sync)
    monkeypatch.delenv("LATE_RANK_MS")
    together = run_worker(tmp_path, "together", 2, cache_dir, *sync)
    for r in (*late, *together):
        assert r["fused"] == (grad_sync == "fused") and r["arrivals"] == STEPS - 2
    assert late[0]["arrival_spread_ms"] == late[1]["arrival_spread_ms"]  # one figure for all
    assert 18.0 <= late[0]["arrival_spread_ms"] <= 30.0, late[0]["arrival_spread_ms"]
    assert together[0]["arrival_spread_ms"] < 8.0, together[0]["arrival_spread_ms"]


def test_settling_the_buckets_before_a_resume_leaves_no_bucket_to_send_twice(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """A resume's settling backward (train._settle_ddp_buckets) hands DDP's first-layout buckets
    to grad_sync=fused and takes no step: kept, the first step's one all-reduce sent them again
    beside the rebuilt layout's (their gradients twice)."""
    fused = ["distributed.grad_sync=fused", "distributed.bucket_cap_mb=0.01"]  # a few buckets
    monkeypatch.setenv("SETTLE", "1")
    settled = run_worker(tmp_path, "settled", 2, cache_dir, *fused)
    monkeypatch.delenv("SETTLE")
    plain = run_worker(tmp_path, "plain", 2, cache_dir, *fused)
    for r in settled:
        assert r["fused"] and r["num_buckets"] > 1
        assert r["buckets_left_after_settling"] == 0
        # every step hands over the rebuilt layout's buckets, the first one too
        assert r["calls_per_step"] == [plain[0]["calls_per_step"][-1]] * STEPS
    assert_params_close(plain[0]["params"], settled[0]["params"])


def test_row_sparse_embedding_gradient_gives_the_dense_update(
    tmp_path: Path, cache_dir: Path
) -> None:
    # 1 process: sparse backward + row-wise clipping against PyTorch's dense path, same steps
    [rows] = run_worker(tmp_path, "rows", 1, cache_dir, "train.embedding_grad=rows")
    [dense] = run_worker(tmp_path, "dense", 1, cache_dir, "train.embedding_grad=dense")
    assert rows["sparse_backward"] and not dense["sparse_backward"]
    assert_params_close(dense["params"], rows["params"], atol=1e-6)


@pytest.mark.parametrize(
    ("grad_sync", "static_graph"), [("fused", False), ("buckets", False), ("fused", True)]
)
def test_accumulation_with_no_sync_matches_full_batch_and_skips_allreduce(
    tmp_path: Path, cache_dir: Path, grad_sync: str, static_graph: bool
) -> None:
    sync = f"distributed.grad_sync={grad_sync}"
    full = run_worker(tmp_path, "acc1", 2, cache_dir, "train.grad_accum_steps=1", sync)
    accum = run_worker(
        tmp_path, "acc2", 2, cache_dir, "train.grad_accum_steps=2", sync,
        f"distributed.static_graph={str(static_graph).lower()}",
    )  # fmt: skip
    assert accum[0]["fused"] is (grad_sync == "fused")
    assert_params_close(full[0]["params"], accum[0]["params"])
    for k in accum[0]["params"]:
        assert torch.equal(accum[0]["params"][k], accum[1]["params"][k]), k
    # 2 micro-steps per step, but only the last one all-reduces: one call per bucket per step
    # (without no_sync it would be 2 * STEPS * buckets; static_graph syncs both on step one)
    synced = STEPS + (1 if static_graph else 0)
    assert accum[0]["allreduce_calls"] == synced * accum[0]["num_buckets"]
    assert full[0]["allreduce_calls"] == STEPS * full[0]["num_buckets"]
    assert accum[0]["allreduce_calls"] > 0
    assert sum(len(m) for m in accum[0]["batches"][0]) == 12  # 2 micro-batches of 6 per rank


@pytest.mark.parametrize("nproc", [2, 3])
def test_evaluation_is_exact_for_any_world_size(
    tmp_path: Path, cache_dir: Path, nproc: int
) -> None:
    common = [*TINY, f"data.cache_dir={cache_dir}"]
    outs = []
    for n in (1, nproc):
        f = tmp_path / f"eval{n}.pt"
        res = torchrun([str(SCRIPTS / "eval_worker.py"), str(f), *common], n)
        assert res.returncode == 0, rank_errors(res)
        outs.append(torch.load(f))
    (loss1, acc1), (loss_n, acc_n) = outs
    assert acc1 == acc_n  # 301 examples: not divisible by 2 or 3
    assert loss1 == pytest.approx(loss_n, rel=1e-6)
    assert 0.0 < acc1 < 1.0


@pytest.mark.parametrize("hook", ["fp16", "powersgd"])
def test_comm_hooks_keep_ranks_identical(tmp_path: Path, cache_dir: Path, hook: str) -> None:
    r0, r1 = run_worker(tmp_path, hook, 2, cache_dir, f"distributed.comm_hook={hook}")
    if hook == "fp16":  # the hook DDP ran, by DDP's own record
        assert r0["comm_hook"] == "fp16_compress_hook"
    else:  # PowerSGD counted every step and compressed (its error feedback) after the first
        assert r0["comm_hook"] == "PowerSGDHook.hook" and r0["powersgd_iter"] == STEPS
        assert r0["powersgd_error_buckets"] > 0
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    if hook == "fp16":  # lossy only in the 16-bit rounding of the averaged gradients
        [single] = run_worker(tmp_path, "ws1", 1, cache_dir)  # (PowerSGD's rank-1 is not)
        assert_params_close(single["params"], r0["params"], atol=1e-3)


@pytest.mark.parametrize("wait", ["spin", "block"])
def test_a_spinning_wait_sums_alike_when_the_peer_is_later_than_its_window(
    tmp_path: Path, wait: str
) -> None:
    """distributed.collective_wait=spin yields the CPU for up to SPIN_WAIT_S, then blocks in
    gloo's wait(): a peer on time, a little late or later than the window gives the same sum,
    and the calibration's spinning barrier waits for it as gloo's barrier does."""
    import json

    res = torchrun([str(SCRIPTS / "wait_worker.py"), wait, str(tmp_path)], 2)
    assert res.returncode == 0, rank_errors(res)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    rank0 = next(o for o in out if o["rank"] == 0)
    assert len(out) == 2 and all(o["sums"] == [3.0, 3.0, 3.0] for o in out)  # 1 + 2
    # rank 0 really waited for the peer later than the spin window, in the all-reduce and in
    # the barrier (less a margin: the ranks left the call before it some ms apart)
    late = rank0["late_s"][-1]
    assert rank0["waited_s"][-1] >= late - 0.03 and rank0["met_s"][-1] >= late - 0.03, rank0
