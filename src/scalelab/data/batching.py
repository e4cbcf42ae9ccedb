"""Length-bucketed, world-size-invariant batch sampling and fast batch assembly.

The training sampler defines the sequence of GLOBAL batches from (seed, epoch, global_batch)
only, never from the world size, so a 1-GPU and an N-GPU run optimise on exactly the same
batches; ranks and accumulation micro-steps only decide who computes which part.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from scalelab.data.cache import EncodedSplit


class TrainBatchSampler:
    """Yields, per optimizer step, this rank's ``grad_accum_steps`` micro-batches of indices.

    Per epoch: a permutation seeded by (seed, epoch), identical on all ranks; windows of
    ``bucket_multiplier * global_batch`` examples are sorted by length (so batches need little
    padding), cut into full global batches (the incomplete tail is dropped so every rank runs
    the same number of steps), and the batch ORDER is shuffled (so lengths do not go short to
    long). A global batch is split into ``grad_accum_steps`` consecutive groups of
    ``world_size * per_rank`` examples; rank r takes ``group[r::world_size]``, so all ranks get
    similar lengths and none waits for a straggler.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        global_batch: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum_steps: int = 1,
        seed: int = 0,
        bucket_multiplier: int = 50,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        if grad_accum_steps < 1 or bucket_multiplier < 1 or global_batch < 1:
            raise ValueError("global_batch, grad_accum_steps and bucket_multiplier must be >= 1")
        per_step = world_size * grad_accum_steps
        if global_batch % per_step:
            raise ValueError(
                f"global batch {global_batch} is not divisible by world_size x grad_accum_steps "
                f"= {world_size} x {grad_accum_steps} = {per_step}"
            )
        self.lengths = np.asarray(lengths)
        if len(self.lengths) < global_batch:
            raise ValueError(
                f"dataset has {len(self.lengths)} examples, fewer than one global batch "
                f"({global_batch})"
            )
        self.global_batch = global_batch
        self.world_size = world_size
        self.rank = rank
        self.grad_accum_steps = grad_accum_steps
        self.per_rank = global_batch // per_step
        self.seed = seed
        self.bucket_multiplier = bucket_multiplier
        self.epoch = 0
        self._start_step = 0
        self.current_global_batch = np.empty(0, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def set_start_step(self, step: int) -> None:
        """Skip the first ``step`` optimizer steps of the next iteration (resume mid-epoch)."""
        if not 0 <= step <= len(self):
            raise ValueError(f"start step {step} outside 0..{len(self)}")
        self._start_step = step

    def __len__(self) -> int:
        """Optimizer steps per full epoch (independent of set_start_step)."""
        return len(self.lengths) // self.global_batch

    def global_batches(self, epoch: int | None = None) -> np.ndarray:
        """All global batches of an epoch in step order: int64 [steps, global_batch].

        Each row is sorted by length (stable). Depends only on (seed, epoch, global_batch,
        bucket_multiplier, lengths) -- not on world size, rank or accumulation.
        """
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        steps = len(self)
        # The examples an epoch leaves out (fewer than one global batch) are dropped from the
        # shuffled order, before the windows are sorted by length: cut after the sort, they
        # would always be the longest of the last window.
        perm = rng.permutation(len(self.lengths))[: steps * self.global_batch]
        window = self.bucket_multiplier * self.global_batch
        for start in range(0, len(perm), window):
            chunk = perm[start : start + window]
            perm[start : start + window] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        batches = perm.reshape(steps, self.global_batch)
        return batches[rng.permutation(steps)].astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        start, self._start_step = self._start_step, 0  # a resume offset applies once
        group = self.world_size * self.per_rank
        for batch in self.global_batches()[start:]:
            self.current_global_batch = batch  # all ranks' examples of the step being yielded
            yield [
                np.ascontiguousarray(
                    batch[k * group : (k + 1) * group][self.rank :: self.world_size]
                )
                for k in range(self.grad_accum_steps)
            ]


def eval_shards(
    lengths: np.ndarray, world_size: int, rank: int, batch_size: int
) -> list[np.ndarray]:
    """This rank's evaluation batches: every example on exactly one rank, no padding duplicates.

    Examples are sorted by length (longest first, so peak memory shows up at once) and dealt
    round-robin, so ranks get similar work and counts differing by at most one. Ranks may get
    different numbers of batches: evaluate locally and all-reduce the sums once at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    mine = order[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`; host to CUDA without a host-device sync. A CPU tensor bound for a CUDA
    device is copied into pinned memory first (a host memcpy; PyTorch's caching host allocator
    reuses the block once the copy has run) and then copied asynchronously: CUDA documents that
    an asynchronous copy from pageable memory may synchronise with the stream, which would make
    the host wait, every step, for the GPU work queued before it."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def make_batch(
    split: EncodedSplit,
    idx: np.ndarray,
    pad_to: int | None = None,
    device: torch.device | str | None = None,
    pad_multiple: int = 1,
    max_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather ``idx`` into (input_ids int64 [B, L], attention_mask bool [B, L], labels int64 [B]).

    L = the longest selected sequence, computed on the host from ``split.lengths`` (no device
    sync), rounded up to a multiple of ``pad_multiple`` but not beyond ``max_len`` (the model's
    longest input), or ``pad_to``. Tensors are created where the split lives (the index copied
    there by `to_device`: no host-device sync) and then moved to ``device`` if given
    (`to_device`).
    """
    idx = np.asarray(idx, dtype=np.int64)
    longest = int(split.lengths[idx].max()) if len(idx) else 0
    if pad_to is not None and pad_to < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest})")
    if pad_to is not None:
        width = pad_to
    else:
        width = -(-longest // pad_multiple) * pad_multiple  # longest, rounded up
        if max_len is not None:
            width = max(longest, min(width, max_len))
    src = split.tokens.device
    idx_t = torch.from_numpy(idx)
    if src.type != "cpu":
        idx_t = to_device(idx_t, src)
    stored = min(width, split.tokens.shape[1])
    # index_select on the column slice copies only `stored` columns per row.
    ids = torch.index_select(split.tokens[:, :stored], 0, idx_t).long()
    if width > stored:  # pad_to beyond the split's own width
        ids = torch.nn.functional.pad(ids, (0, width - stored), value=split.pad_id)
    lengths_t = split.lengths_t if split.lengths_t is not None else torch.from_numpy(split.lengths)
    mask = torch.arange(width, device=src) < lengths_t.index_select(0, idx_t)[:, None]
    labels = split.labels.index_select(0, idx_t)
    if device is not None and torch.device(device) != src:
        ids, mask, labels = (to_device(t, device) for t in (ids, mask, labels))
    return ids, mask, labels
