"""StopSignals: SIGTERM/SIGUSR1 are recorded (not fatal) while training, and handlers come back."""

import os
import signal

from scalelab.checkpoint import StopSignals, TrainingStopped


def test_signal_is_recorded_and_previous_handler_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stops:
        assert stops.agreed(lambda x: x) is None
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process with the default handler
        assert stops.agreed(lambda x: x) == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_agreement_takes_any_rank_signal() -> None:
    # (with a real all-reduce under torchrun: tests/integration/test_train_cli.py, SIGTERM)
    sent = []

    def other_rank_got_sigterm(mine: float) -> float:  # what an all-reduce max would return
        sent.append(mine)
        return max(mine, float(signal.SIGTERM))

    with StopSignals() as stops:  # this rank saw nothing, another rank got SIGTERM
        assert stops.agreed(other_rank_got_sigterm) == signal.SIGTERM
        assert sent == [0.0]  # this rank offered "no signal"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.agreed(other_rank_got_sigterm) == signal.SIGTERM  # the larger number wins
        assert sent[1] == float(signal.SIGUSR1)


def test_exit_code_is_128_plus_signal() -> None:
    assert TrainingStopped(signal.SIGTERM).exit_code == 143
