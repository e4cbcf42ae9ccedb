"""Step-phase timers: where each training step's time goes, at negligible cost.

The trainer calls `lap(phase)` at each phase boundary. Laps are contiguous, so the phases of a
step add up to the step exactly: time the host spends between steps (progress bar, logging) lands
in the next step's `data` phase, which is where a user would look for it.

On CUDA each lap records an event on the current stream and nothing is read back until
`epoch_summary()`, which synchronises once per epoch. A lap therefore measures the GPU timeline:
host work that the GPU overlaps (input preparation while kernels run) costs ~0, and host work that
starves the GPU shows up as a gap. On CPU, laps are `perf_counter` stamps.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import torch

PHASES = ("data", "h2d", "forward", "backward", "optimizer")
SPREAD_KEY = "arrival_spread_ms"
#: Mean ms per step of the step's one gradient all-reduce, timed in the step (`StepTimer.collective`)
COLLECTIVE_KEY = "step_allreduce_ms"


class StepTimer:
    def __init__(self, device: torch.device, warmup_steps: int = 0) -> None:
        self.cuda = device.type == "cuda"
        self.warmup_steps = warmup_steps
        self.steps_seen = 0  # across the whole run, for the warm-up exclusion
        self.warmup_time_s = 0.0
        #: per measured step of the last `epoch_summary()` that called `arrive()` (not the
        #: first step it summarised): ms from the end of the previous step's all-reduce (its
        #: optimizer step) to `arrive()` (`arrival_spread`)
        self.arrivals_ms: list[float] = []
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._laps: list[tuple[str, object]] = []  # (phase, event or float), in order
        # (first lap, last lap, is_warmup, laps before the step's arrive() or -1, the step's
        # `collective` ms or None)
        self._step_bounds: list[tuple[int, int, bool, int, float | None]] = []
        self._step_first = 0
        self._arrived = -1
        self._collective_ms: float | None = None
        self._last = self._now()

    def _now(self) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start_epoch(self) -> None:
        self._reset_epoch()

    def lap(self, phase: str) -> None:
        """The time since the previous lap belongs to `phase`."""
        self._laps.append((phase, self._now()))

    def arrive(self) -> None:
        """This rank reaches the step's first collective now (call right after a lap): the
        laps of the step so far, with the previous step's optimizer, are its arrival time.
        DDP's ranks leave each all-reduce together, so ranks whose arrival times differ wait
        for the last (`arrival_spread`)."""
        if self._arrived < 0:
            self._arrived = len(self._laps)

    def collective(self, ms: float | None) -> None:
        """The step's gradients were summed in one all-reduce, after the backward (so all of
        it is exposed), that took `ms` from the call until the sum was in (host time: a
        blocking backend's); None: not measured. Its time stays in the backward phase;
        `epoch_summary` also reports its mean (COLLECTIVE_KEY)."""
        self._collective_ms = ms

    def untimed(self) -> None:
        """The time since the previous lap belongs to no phase (e.g. writing a profiler trace):
        it counts in no phase mean and not in the next step's data phase."""
        self._laps.append(("untimed", self._now()))

    def end_step(self) -> None:
        is_warmup = self.steps_seen < self.warmup_steps
        self._step_bounds.append(
            (self._step_first, len(self._laps), is_warmup, self._arrived, self._collective_ms)
        )
        self._step_first = len(self._laps)
        self._arrived = -1
        self._collective_ms = None
        self.steps_seen += 1

    def _elapsed_ms(self, a: object, b: object) -> float:
        if self.cuda:
            return a.elapsed_time(b)  # type: ignore[attr-defined]
        return (b - a) * 1000.0  # type: ignore[operator]

    def epoch_summary(self) -> dict[str, float]:
        """Per-step mean milliseconds of each phase on this rank (warm-up steps excluded)."""
        if self.cuda:
            torch.cuda.synchronize()  # host-device sync: once per epoch, to read the events
        totals: dict[str, float] = defaultdict(float)
        measured = 0
        prev = self._last
        stamps = [s for _, s in self._laps]
        self.arrivals_ms = []
        previous_optimizer: float | None = None
        collectives: list[float] = []
        for first, last, is_warmup, arrived, collective_ms in self._step_bounds:
            step_totals: dict[str, float] = defaultdict(float)
            arrival = 0.0
            for i in range(first, last):
                phase = self._laps[i][0]
                ms = self._elapsed_ms(prev, stamps[i])
                step_totals[phase] += ms
                if i < arrived and phase != "untimed":
                    arrival += ms
                prev = stamps[i]
            if arrived >= 0 and not is_warmup and previous_optimizer is not None:
                self.arrivals_ms.append(previous_optimizer + arrival)
            previous_optimizer = step_totals["optimizer"]
            if is_warmup:
                self.warmup_time_s += sum(step_totals.values()) / 1000.0
                continue
            measured += 1
            for k, v in step_totals.items():
                totals[k] += v
            if collective_ms is not None:
                collectives.append(collective_ms)
        out = {f"{p}_ms": (totals[p] / measured if measured else float("nan")) for p in PHASES}
        out["step_ms"] = sum(out[f"{p}_ms"] for p in PHASES)
        out["measured_steps"] = float(measured)
        # every measured step's, or none: a mean over some steps would not be the steps' mean
        whole = bool(collectives) and len(collectives) == measured
        out[COLLECTIVE_KEY] = sum(collectives) / measured if whole else float("nan")
        self._last = stamps[-1] if stamps else self._last
        self._laps, self._step_bounds, self._step_first = [], [], 0
        return out


def merge_phase_means(before: dict[str, float] | None, after: dict[str, float]) -> dict[str, float]:
    """`epoch_summary()` of one epoch trained in two parts (stopped, then resumed): the phase
    means over both parts' measured steps."""
    if not before or not before.get("measured_steps"):
        return after
    na, nb = before["measured_steps"], after["measured_steps"]
    if not nb:
        return dict(before)
    out = {f"{p}_ms": (before[f"{p}_ms"] * na + after[f"{p}_ms"] * nb) / (na + nb) for p in PHASES}
    out["step_ms"] = sum(out[f"{p}_ms"] for p in PHASES)
    out["measured_steps"] = na + nb
    # the ranks' arrival spread (`arrival_spread`), where both parts have one (a checkpoint of
    # an older version has none); the in-step all-reduce only where both parts measured it
    spreads = [
        (d[SPREAD_KEY], n)
        for d, n in ((before, na), (after, nb))
        if not math.isnan(d.get(SPREAD_KEY, math.nan))
    ]
    if spreads:
        out[SPREAD_KEY] = sum(v * n for v, n in spreads) / sum(n for _, n in spreads)
    a, b = before.get(COLLECTIVE_KEY, math.nan), after.get(COLLECTIVE_KEY, math.nan)
    out[COLLECTIVE_KEY] = (a * na + b * nb) / (na + nb)  # NaN unless both measured it
    return out


def arrival_spread(means: list[float], maxes: list[float]) -> float:
    """How late, on average, the slowest rank reached each step's first collective after the
    ranks' mean: mean over steps of (max - mean) over ranks of `StepTimer.arrivals_ms`. A rank
    that arrives early waits that long in the all-reduce (DDP's ranks leave each all-reduce
    together), so this is the waiting that step-time differences before the collective explain.
    NaN when no step was measured."""
    if not means:
        return float("nan")
    # max(0, .): a mean over 3 or more equal values may round a hair above them
    return sum(max(0.0, mx - m) for m, mx in zip(means, maxes, strict=True)) / len(means)


def crossover_difference(a_ms: list[float], b_ms: list[float], a_first: list[bool]) -> float:
    """What condition a adds to a step, from pairs of steps on the same batch i, one under each
    condition, a first where a_first[i]: the mean of a[i] - b[i] over the a-first pairs and the
    mean over the b-first pairs, averaged (a 2x2 crossover). A pair's second step runs faster
    (warm caches), by about as much as the all-reduce takes on the 2-vCPU test VM, so one order
    alone would read the difference high or near zero; batches differ in time far more than a
    pair's two steps, so each difference is taken within its pair. Means, not medians: the
    collective's slow calls are part of what a step pays. One order alone (a single pair) gives
    its own mean."""
    if not (len(a_ms) == len(b_ms) == len(a_first)) or not a_ms:
        raise ValueError(f"need pairs: {len(a_ms)}, {len(b_ms)} times, {len(a_first)} orders")
    diffs = np.subtract(a_ms, b_ms)
    first = np.asarray(a_first, dtype=bool)
    means = [float(diffs[sel].mean()) for sel in (first, ~first) if sel.any()]
    return sum(means) / len(means)


class Stopwatch:
    """Wall-clock interval that waits for queued GPU work first (a host-device sync: use sparingly).

    `pause`/`resume` (each a sync) and `exclude` leave out work that is not training, such as
    writing a checkpoint or a profiler trace: `elapsed_s` is the time since `start` less those.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start_s = 0.0
        self.excluded_s = 0.0
        self._paused_at: float | None = None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start(self) -> None:
        self._sync()
        self.start_s = time.perf_counter()
        self.excluded_s = 0.0
        self._paused_at = None

    def pause(self) -> None:
        self._sync()  # the training work queued so far still counts
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.excluded_s += time.perf_counter() - self._paused_at
            self._paused_at = None

    def exclude(self, seconds: float) -> None:
        """Leave out `seconds` measured elsewhere (after a sync, as `pause` would)."""
        self.excluded_s += max(0.0, seconds)

    def elapsed_s(self) -> float:
        self._sync()
        end = self._paused_at if self._paused_at is not None else time.perf_counter()
        return end - self.start_s - self.excluded_s
