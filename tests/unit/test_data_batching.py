"""TrainBatchSampler / eval_shards / make_batch: the world-size-invariance contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalelab.data import EncodedSplit, TrainBatchSampler, eval_shards, make_batch


def lengths_of(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 60, size=n)


def step_sets(n, global_batch, ws, ga, epoch=0, seed=7, bm=3):
    """Per step: the list of per-rank micro-batch lists, for every rank."""
    lengths = lengths_of(n)
    samplers = [TrainBatchSampler(lengths, global_batch, ws, r, ga, seed, bm) for r in range(ws)]
    for s in samplers:
        s.set_epoch(epoch)
    return [list(per_rank) for per_rank in zip(*samplers, strict=True)]


@pytest.mark.parametrize("n", [97, 128, 251])
@pytest.mark.parametrize("ga", [1, 2])
@pytest.mark.parametrize("ws", [1, 2, 3, 4])
def test_same_global_batches_for_every_world_size(n, ws, ga):
    global_batch = 24  # divisible by ws * ga for all parametrisations
    reference = [set(step[0][0].tolist()) for step in step_sets(n, global_batch, 1, 1)]
    steps = step_sets(n, global_batch, ws, ga)
    assert len(steps) == len(reference) == n // global_batch
    per_rank = global_batch // (ws * ga)
    seen: list[int] = []
    for step, ref in zip(steps, reference, strict=True):
        assert len(step) == ws
        ranks = []
        for micro in step:  # one rank
            assert len(micro) == ga
            assert all(m.dtype == np.int64 and len(m) == per_rank for m in micro)
            ranks.append(np.concatenate(micro))
        union = np.concatenate(ranks)
        assert len(set(union.tolist())) == global_batch  # ranks and micro-steps disjoint
        assert set(union.tolist()) == ref  # same batch as on one GPU
        seen += union.tolist()
    assert len(set(seen)) == len(seen) > n - global_batch  # covers all but < one batch


def test_the_examples_an_epoch_leaves_out_are_random_not_the_longest():
    """One window holds the whole set (ag_news_large's 50 x 128 > the 4,000-row sample): the
    32 examples that do not fill a batch were always the longest (114-188 tokens, p99 107)."""
    lengths = np.random.default_rng(3).integers(10, 200, size=4000)
    s = TrainBatchSampler(lengths, 128, bucket_multiplier=50)
    dropped_means, used = [], np.zeros(len(lengths), dtype=int)
    for epoch in range(40):
        kept = s.global_batches(epoch).ravel()
        left_out = np.setdiff1d(np.arange(len(lengths)), kept)
        assert len(left_out) == 4000 - 31 * 128
        dropped_means.append(lengths[left_out].mean())
        used[kept] += 1
    # random: about the mean length (~105) over 40 epochs, not ~195 (the top of the range)
    assert abs(np.mean(dropped_means) - lengths.mean()) < 10
    longest = np.argsort(lengths)[-40:]
    assert used[longest].min() >= 30  # each of the longest is trained in most epochs


def test_epochs_differ_and_seed_is_reproducible():
    e0 = [s[0][0].tolist() for s in step_sets(200, 16, 1, 1, epoch=0)]
    e0b = [s[0][0].tolist() for s in step_sets(200, 16, 1, 1, epoch=0)]
    e1 = [s[0][0].tolist() for s in step_sets(200, 16, 1, 1, epoch=1)]
    other_seed = [s[0][0].tolist() for s in step_sets(200, 16, 1, 1, seed=8)]
    assert e0 == e0b and e0 != e1 and e0 != other_seed


def test_batches_are_length_bucketed_and_order_shuffled():
    lengths = lengths_of(2000)
    s = TrainBatchSampler(lengths, 20, bucket_multiplier=50)
    batches = s.global_batches()
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.25 * np.ptp(lengths)  # sorted windows -> similar lengths per batch
    maxima = [lengths[b].max() for b in batches[:50]]  # first window's worth of steps
    assert maxima != sorted(maxima)  # not short -> long
    # Within a micro-step group, ranks take interleaved slices, so their lengths are close.
    ranks = [TrainBatchSampler(lengths, 20, 4, r, 1, 0, 50) for r in range(4)]
    first = [next(iter(r))[0] for r in ranks]
    assert max(lengths[f].max() for f in first) - min(lengths[f].max() for f in first) <= 3


def test_set_start_step_skips_once():
    s = TrainBatchSampler(lengths_of(100), 10)
    full = [step[0].tolist() for step in s]
    s.set_start_step(4)
    assert [step[0].tolist() for step in s] == full[4:]
    assert [step[0].tolist() for step in s] == full  # only the next iteration skips
    assert len(s) == 10


def test_sampler_errors():
    with pytest.raises(ValueError, match="not divisible"):
        TrainBatchSampler(lengths_of(100), 10, world_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainBatchSampler(lengths_of(5), 8)
    with pytest.raises(ValueError, match=r"rank 2 is not in 0\.\.world_size-1"):
        TrainBatchSampler(lengths_of(50), 8, world_size=2, rank=2)


@pytest.mark.parametrize("n", [0, 1, 7, 100, 101])
@pytest.mark.parametrize("ws", [1, 2, 3, 4])
def test_eval_shards_are_exhaustive_and_disjoint(n, ws):
    lengths = lengths_of(n)
    shards = [eval_shards(lengths, ws, r, batch_size=8) for r in range(ws)]
    flat = [i for rank in shards for b in rank for i in b.tolist()]
    assert sorted(flat) == list(range(n))  # each example exactly once, no padding duplicates
    counts = [sum(len(b) for b in rank) for rank in shards]
    assert max(counts) - min(counts) <= 1
    for rank in shards:
        order = np.concatenate(rank) if rank else np.array([], dtype=np.int64)
        assert all(len(b) <= 8 for b in rank)
        assert np.all(np.diff(lengths[order]) <= 0)  # sorted by length, longest first


def split_of(lengths: list[int], width: int = 10) -> EncodedSplit:
    lengths_np = np.asarray(lengths, dtype=np.int64)
    tokens = np.zeros((len(lengths), width), dtype=np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = np.arange(1, n + 1) + 100 * i
    return EncodedSplit(
        tokens=torch.from_numpy(tokens),
        lengths=lengths_np,
        labels=torch.arange(len(lengths)),
        pad_id=0,
    )


def test_make_batch_pads_to_longest_in_batch():
    split = split_of([3, 7, 5, 10])
    ids, mask, labels = make_batch(split, np.array([2, 0]))
    assert ids.shape == (2, 5) and ids.dtype == torch.int64
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [5, 3]
    assert ids[1].tolist() == [1, 2, 3, 0, 0]
    assert labels.tolist() == [2, 0]
    assert torch.equal(ids != 0, mask)


def test_make_batch_pad_multiple_rounds_up_within_max_len():
    split = split_of([3, 7, 5, 10], width=10)
    # longest 7 -> 8; mask and ids beyond the real tokens are padding
    ids, mask, _ = make_batch(split, np.array([0, 1]), pad_multiple=8, max_len=10)
    assert ids.shape == mask.shape == (2, 8)
    assert mask.sum(1).tolist() == [3, 7] and torch.equal(ids != 0, mask)
    # longest 10 -> 16 would pass max_len: capped there
    ids, _, _ = make_batch(split, np.array([3]), pad_multiple=8, max_len=10)
    assert ids.shape == (1, 10)
    # a multiple beyond the split's stored width (but within max_len) pads with pad_id
    ids, mask, _ = make_batch(split, np.array([3]), pad_multiple=4, max_len=16)
    assert ids.shape == (1, 12) and mask.sum().item() == 10 and ids[0, 10:].eq(0).all()
    # exact multiples and 1 keep the longest
    assert make_batch(split, np.array([2]), pad_multiple=5)[0].shape == (1, 5)
    assert make_batch(split, np.array([1]), pad_multiple=1, max_len=10)[0].shape == (1, 7)
    # pad_to wins
    assert make_batch(split, np.array([0]), pad_to=10, pad_multiple=8)[0].shape == (1, 10)


def test_batch_padding_follows_the_config():
    from scalelab.config import load_config
    from scalelab.train import batch_padding

    cfg = load_config(None, ["data.pad_multiple=16", "model.max_seq_len=64"])
    assert batch_padding(cfg) == {"pad_to": None, "pad_multiple": 16, "max_len": 64}
    cfg = load_config(None, ["data.pad_to_max_len=true", "model.max_seq_len=64"])
    assert batch_padding(cfg)["pad_to"] == 64


def test_make_batch_pad_to_and_device():
    split = split_of([3, 7, 5, 10])
    ids, mask, _ = make_batch(split, np.array([0, 1]), pad_to=16, device="cpu")
    assert ids.shape == mask.shape == (2, 16)
    assert mask.sum().item() == 10 and ids[:, 10:].eq(0).all()
    with pytest.raises(ValueError, match="shorter than the longest"):
        make_batch(split, np.array([3]), pad_to=4)
    moved = split.to("cpu")
    assert moved.num_tokens == 25 and len(moved) == 4 and isinstance(moved.lengths, np.ndarray)


def test_host_tensors_bound_for_cuda_are_copied_from_pinned_memory(monkeypatch) -> None:
    """CUDA may serialise an asynchronous copy from pageable memory with the stream (the host
    then waits for the GPU every step): make_batch's index upload and its `device` copies go
    through pinned memory, asynchronously. (Recorded without a GPU: pin_memory and to are
    stubbed; tests/unit/test_host_syncs.py checks a real trace where CUDA is.)"""
    from scalelab.data.batching import to_device

    calls = []

    def pin(t):
        calls.append("pin")
        return t.clone()

    def to(t, device, non_blocking=False):
        calls.append((str(device), non_blocking))
        return t

    split = split_of([3, 5])
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    make_batch(split, np.array([0, 1]), device="cuda")
    assert calls == ["pin", ("cuda", True)] * 3  # ids, mask, labels
    calls.clear()
    to_device(torch.arange(4), torch.device("cuda", 1))
    assert calls == ["pin", ("cuda:1", True)]
    calls.clear()
    to_device(torch.arange(4), "cpu")  # nothing to pin, nothing asynchronous
    assert calls == [("cpu", False)]
