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
    with StopSignals() as stops:  # this rank saw nothing, another rank got SIGTERM
        assert stops.agreed(lambda x: max(x, float(signal.SIGTERM))) == signal.SIGTERM


def test_exit_code_is_128_plus_signal() -> None:
    assert TrainingStopped(signal.SIGTERM).exit_code == 143
