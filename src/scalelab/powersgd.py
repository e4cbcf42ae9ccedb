"""torch's PowerSGD communication hook, with state that survives a checkpoint and resume.

``PowerSGDState`` keys each rank's error feedback and the warm-start P/Q factors by DDP bucket
index, laid out in the bucket's parameter order (P/Q grouped by matrix shape). DDP lays its
buckets out anew in every process: registration order at the first step, gradient-ready order
from the second on. So the state in a checkpoint does not fit the buckets of a resumed run's
first step, and re-adding it as saved would add each residual to the wrong parameter.

`PowerSGDHook` runs the unchanged ``powerSGD_hook`` and only moves its state: checkpoints hold
it per parameter, and whenever a bucket's parameters differ from those its state was built
for, the state is cut into per-parameter pieces and laid out again for the running buckets.
The compression itself is per tensor, so a resumed run does the same arithmetic as an
uninterrupted one (tested: equal weights under torchrun, 2 ranks).
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from scalelab.checkpoint import numpy_rng_plain, numpy_rng_state

# the per-bucket dicts of PowerSGDState; everything else in its __slots__ is plain values
_BUCKET_DICTS = {"error": "error_dict", "p": "p_memory_dict", "q": "q_memory_dict"}


class PowerSGDHook:
    """State holder for ``ddp.register_comm_hook(hook, PowerSGDHook.hook)``."""

    def __init__(
        self, model: nn.Module, matrix_approximation_rank: int, one_bucket_at_a_time: bool
    ) -> None:
        self.state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=matrix_approximation_rank,
            start_powerSGD_iter=2,
        )
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        # bucket index -> its parameter names, in buffer order, when its state was built
        self._layouts: dict[int, tuple[str, ...]] = {}
        # parameter name -> {"error"/"p"/"q": tensor}, waiting to be laid out into a bucket
        self._loose: dict[str, dict[str, torch.Tensor]] = {}
        # buckets already handed to PowerSGD in this step: their new state arrives with their
        # all-reduce (asynchronously), and their parameters did not move (layout unchanged)
        self._done: set[int] = set()
        # gloo: PowerSGD issues each bucket's second all-reduce (the Qs) from a callback on
        # gloo's thread, racing the next bucket's first one on the autograd thread, so the
        # ranks could issue them in different orders (a hang or "collective mismatch"; torch
        # issue 58467). Each bucket then waits for the previous one's to finish.
        self._one_at_a_time = one_bucket_at_a_time
        self._previous: torch.futures.Future[torch.Tensor] | None = None

    @staticmethod
    def hook(self: "PowerSGDHook", bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        index = bucket.index()
        layout = tuple(self._names[id(p)] for p in bucket.parameters())
        if self._layouts.get(index, layout) != layout:
            self._loosen()  # DDP re-bucketed: the state of every bucket still to come, per parameter
        if self._loose and index not in self._layouts:
            self._lay_out(index, layout)
        self._layouts[index] = layout
        if self._one_at_a_time and self._previous is not None:
            self._previous.wait()
        future = powerSGD_hook.powerSGD_hook(self.state, bucket)
        self._previous = future if self._one_at_a_time else None
        self._done.add(index)
        if bucket.is_last():
            self._done.clear()
        return future

    # ---- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's state, per parameter, tensors on the CPU."""
        pieces = {n: dict(p) for n, p in self._loose.items()}
        for name, piece in self._pieces().items():
            pieces.setdefault(name, {}).update(piece)
        plain = {
            slot: getattr(self.state, slot)
            for slot in type(self.state).__slots__
            if slot != "process_group" and slot not in _BUCKET_DICTS.values()
        }
        if isinstance(plain.get("rng"), np.random.RandomState):  # kept as tensors and values
            plain["rng"] = ("RandomState", numpy_rng_plain(plain["rng"].get_state()))
        cpu = {n: {k: t.detach().cpu().clone() for k, t in p.items()} for n, p in pieces.items()}
        return {"slots": plain, "per_parameter": cpu}

    def _check_saved(self, saved: Any) -> None:
        """What `load_state_dict` and the first steps would trip over, as a ValueError: slots
        this hook does not have or of another type, pieces of parameters it does not know or of
        another size than theirs (the first step's all-reduce failed on them mid-training)."""
        if not (isinstance(saved, dict) and {"slots", "per_parameter"} <= saved.keys()):
            raise ValueError("expected a dict with 'slots' and 'per_parameter'")
        slots, pieces = saved["slots"], saved["per_parameter"]
        if not (isinstance(slots, dict) and isinstance(pieces, dict)):
            raise ValueError("'slots' and 'per_parameter' should be dicts")
        for slot, value in slots.items():
            if slot not in type(self.state).__slots__ or slot in _BUCKET_DICTS.values():
                raise ValueError(f"slot {slot!r} is not PowerSGD's")
            now = getattr(self.state, slot, None)
            if isinstance(now, bool) and not isinstance(value, bool):
                raise ValueError(f"slot {slot!r} is {value!r}, expected true or false")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(now, int | float) and not isinstance(now, bool) and not number:
                raise ValueError(f"slot {slot!r} is {value!r}, expected a number")
        rank = slots.get("matrix_approximation_rank", self.state.matrix_approximation_rank)
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"slot 'matrix_approximation_rank' is {rank!r}")
        for name, piece in pieces.items():
            shape = self._shapes.get(name)
            if shape is None or not isinstance(piece, dict):
                raise ValueError(f"state for {name!r}, which is not a parameter of this model")
            n = shape[0]
            m = math.prod(shape) // n
            r = min(n, m, rank)
            want = {"error": n * m, "p": n * r, "q": m * r}
            for key, tensor in piece.items():
                if key not in want or not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"{name}: {key!r} is not a PowerSGD state tensor")
                if tensor.numel() != want[key]:
                    raise ValueError(
                        f"{name}: {key!r} has {tensor.numel()} values, expected {want[key]}"
                    )

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        """Restore `state_dict()` (before the first step); laid out into buckets as they run."""
        self._check_saved(saved)
        for slot, value in saved["slots"].items():
            if isinstance(value, tuple) and value[:1] == ("RandomState",):
                rng = np.random.RandomState()
                rng.set_state(numpy_rng_state(value[1]))
                value = rng
            setattr(self.state, slot, value)
        for attr in _BUCKET_DICTS.values():
            getattr(self.state, attr).clear()
        self._layouts.clear()
        self._done.clear()
        self._loose = {
            n: {k: t.to(device) for k, t in piece.items()}
            for n, piece in saved["per_parameter"].items()
        }

    # ---- layouts ----------------------------------------------------------------------------

    def _compressed(self, layout: tuple[str, ...]) -> list[tuple[str, int, int, int]]:
        """(name, n, m, rank) of the bucket's compressed matrices in P/Q memory order.

        As ``powerSGD_hook`` does: each gradient viewed as (shape[0], rest), compressed when
        (n + m) * r * min_compression_rate < n * m, grouped by shape in order of appearance.
        """
        groups: dict[tuple[int, int], list[tuple[str, int, int, int]]] = {}
        for name in layout:
            shape = self._shapes[name]
            n = shape[0]
            m = math.prod(shape) // n
            r = min(n, m, self.state.matrix_approximation_rank)
            if (n + m) * r * self.state.min_compression_rate < n * m:
                groups.setdefault((n, m), []).append((name, n, m, r))
        return [item for group in groups.values() for item in group]

    def _pieces(
        self, skip: set[int] | frozenset[int] = frozenset()
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The per-bucket state (but `skip`'s) cut into per-parameter pieces (views)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for index, layout in self._layouts.items():
            if index in skip:
                continue
            error = self.state.error_dict.get(index)
            sizes = [math.prod(self._shapes[n]) for n in layout]
            if error is not None and error.numel() == sum(sizes):
                for name, part in zip(layout, torch.split(error, sizes), strict=True):
                    out.setdefault(name, {})["error"] = part
            p_mem = self.state.p_memory_dict.get(index)
            q_mem = self.state.q_memory_dict.get(index)
            if p_mem is None or q_mem is None:
                continue
            compressed = self._compressed(layout)
            p_sizes = [n * r for _, n, _, r in compressed]
            q_sizes = [m * r for _, _, m, r in compressed]
            if p_mem.numel() != sum(p_sizes) or q_mem.numel() != sum(q_sizes):
                continue
            for (name, *_), p, q in zip(
                compressed, torch.split(p_mem, p_sizes), torch.split(q_mem, q_sizes), strict=True
            ):
                out.setdefault(name, {}).update(p=p, q=q)
        return out

    def _loosen(self) -> None:
        """Cut the state of the buckets not yet done this step into per-parameter pieces."""
        for name, piece in self._pieces(skip=self._done).items():
            self._loose.setdefault(name, {}).update({k: t.clone() for k, t in piece.items()})
        for index in [i for i in self._layouts if i not in self._done]:
            for attr in _BUCKET_DICTS.values():
                getattr(self.state, attr).pop(index, None)
            del self._layouts[index]

    def _lay_out(self, index: int, layout: tuple[str, ...]) -> None:
        """Assemble bucket `index`'s state from the loose pieces of its parameters."""
        pieces = [self._loose.get(n, {}) for n in layout]
        if all("error" in p for p in pieces):
            self.state.error_dict[index] = torch.cat([p["error"] for p in pieces])
        compressed = self._compressed(layout)
        if not compressed and index in self.state.error_dict:  # warm-started, nothing to compress
            empty = self.state.error_dict[index].new_empty(0)
            self.state.p_memory_dict[index], self.state.q_memory_dict[index] = empty, empty.clone()
        elif compressed and all("p" in self._loose.get(n, {}) for n, *_ in compressed):
            self.state.p_memory_dict[index] = torch.cat(
                [self._loose[n]["p"] for n, *_ in compressed]
            )
            self.state.q_memory_dict[index] = torch.cat(
                [self._loose[n]["q"] for n, *_ in compressed]
            )
        for name in layout:
            self._loose.pop(name, None)
