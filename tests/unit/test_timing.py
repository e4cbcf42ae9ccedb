"""timing.merge_phase_means: one epoch trained in two parts (stopped, resumed)."""

from __future__ import annotations


def test_phase_means_of_a_stopped_and_resumed_epoch_weigh_both_parts() -> None:
    from scalelab.timing import PHASES, merge_phase_means

    def part(ms: float, steps: int) -> dict[str, float]:
        out = {f"{p}_ms": ms for p in PHASES}
        out["step_ms"] = ms * len(PHASES)
        out["measured_steps"] = float(steps)
        return out

    nan_part = {**part(float("nan"), 0), "measured_steps": 0.0}  # resumed, no step timed
    merged = merge_phase_means(part(1.0, 3), part(5.0, 1))
    assert merged["forward_ms"] == 2.0 and merged["measured_steps"] == 4
    assert merged["step_ms"] == 2.0 * len(PHASES)
    assert merge_phase_means(part(1.0, 3), nan_part)["data_ms"] == 1.0
    assert merge_phase_means(None, part(5.0, 1))["data_ms"] == 5.0
