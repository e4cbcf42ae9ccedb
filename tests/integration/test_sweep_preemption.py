"""A sweep killed with SIGTERM (as a scheduler preempts it) passes the signal to its running
training run, which checkpoints; the same command with train.resume=auto then finishes the sweep."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env, tiny_slow_run

pytestmark = pytest.mark.slow
TINY = tiny_slow_run(steps=36, delay_s=0.08)  # ~2.5 s of training left after the signal


# SIGUSR1 (SLURM's time-limit warning) reaches the ranks as SIGTERM: torchrun forwards that one,
# while SIGUSR1 would kill torchrun itself and leave its ranks training on as orphans
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_to_the_sweep_checkpoints_the_running_run_and_resume_finishes(
    tmp_path: Path, cache_dir: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "scalelab", "sweep", "--config", "ag_news_small",
           "--world-sizes", "1,2", "--threads-per-rank", "1", "--out", str(out), *TINY,
           f"data.cache_dir={cache_dir}"]  # fmt: skip
    env = subprocess_env()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen, in_ws2 = [], False
    for line in proc.stdout:
        seen.append(line)
        in_ws2 = in_ws2 or line.startswith("[sweep] world size 2")
        if in_ws2 and "epoch 1/1 step 5/" in line:
            proc.send_signal(sig)  # to the sweep process only, not its children
            break
    rest, err = proc.communicate(timeout=120)
    log = "".join(seen) + rest
    assert proc.returncode == 128 + sig.value, (log, err)  # was 2, a user error's code
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"scalelab: error: sweep stopped by {sig.name} during the world-size-2")
    assert "train.resume=auto" in last, err
    assert re.search(r"stopped after \d+ steps on SIGTERM", log), log
    assert (out / "ag_news_small-ws1" / "summary.json").is_file()
    assert (out / "ag_news_small-ws2" / "checkpoint.pt").is_file()
    assert not (out / "ag_news_small-ws2" / "summary.json").exists()

    again = subprocess.run([*cmd, "train.resume=auto"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stdout  # the 1-rank run is not trained again
    assert "resumed" in again.stdout
    assert (out / "ag_news_small-ws2" / "summary.json").is_file()
