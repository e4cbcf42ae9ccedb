"""init_distributed reads torchrun's variables, or a plain `srun` step's; never an sbatch/salloc shell's."""

from __future__ import annotations

import re
import socket

import pytest

from scalelab import distributed as D
from scalelab import host as H
from scalelab.config import DistributedConfig

_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
         "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
         "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_STEP_NUM_NODES",
         "GROUP_WORLD_SIZE")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in _VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_an_sbatch_or_salloc_shell_is_one_process(clean_env: pytest.MonkeyPatch) -> None:
    # `salloc -n4` / `sbatch -n4`: the shell has SLURM_NTASKS=4 and SLURM_PROCID=0, no job step
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS_PER_NODE", "4")
    env = D.init_distributed(DistributedConfig())
    assert not env.is_distributed and env.world_size == 1 and env.rank == 0
    assert D.is_main_process()


def test_a_plain_srun_task_is_a_rank_of_its_step(clean_env: pytest.MonkeyPatch) -> None:
    for var, value in (("SLURM_STEP_NUM_TASKS", "4"), ("SLURM_PROCID", "3"),
                       ("SLURM_LOCALID", "1"), ("SLURM_STEP_TASKS_PER_NODE", "2(x2)")):  # fmt: skip
        clean_env.setenv(var, value)
    assert H.slurm_step() == {"world_size": 4, "rank": 3, "local_rank": 1, "local_world_size": 2}
    assert not D.is_main_process()
    # without a rendezvous address it cannot join: one line naming the variable
    with pytest.raises(D.LaunchError, match="MASTER_ADDR is not set"):
        D.init_distributed(DistributedConfig())


def test_a_missing_master_port_is_one_line_not_a_traceback(clean_env: pytest.MonkeyPatch) -> None:
    for var, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        clean_env.setenv(var, value)
    with pytest.raises(D.LaunchError, match="MASTER_PORT is not set"):
        D.init_distributed(DistributedConfig())


@pytest.mark.parametrize(
    ("env", "says"),
    [
        # each was a traceback (int() of the text), or a rendezvous that waited for a rank that
        # could never come, or "MASTER_ADDR is not set" for a world of no ranks
        ({"WORLD_SIZE": "abc"}, "environment variable WORLD_SIZE='abc' is not a whole number"),
        ({"RANK": "x1"}, "environment variable RANK='x1' is not a whole number"),
        ({"SLURM_STEP_NUM_TASKS": "two"}, "SLURM_STEP_NUM_TASKS='two' is not a whole number"),
        ({"WORLD_SIZE": "0"}, "world size 0, 0 on this node: both must be >= 1"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "rank 5 (local rank 0) is outside world size 2"),
        ({"LOCAL_RANK": "-1"}, "rank 0 (local rank -1) is outside world size 1 (1 on this node)"),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"},
            "MASTER_PORT=99999 is not a TCP port",
        ),
    ],
)
def test_broken_launcher_variables_are_one_line(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for var, value in env.items():
        clean_env.setenv(var, value)
    with pytest.raises(D.LaunchError, match=re.escape(says)):
        D.init_distributed(DistributedConfig())
    assert D.is_main_process()  # every such process prints the line (rank 5's RANK too)


def test_an_uneven_srun_step_takes_this_nodes_task_count(clean_env: pytest.MonkeyPatch) -> None:
    # srun -n5 over two nodes, 2 + 3 tasks: the second node's third task was refused as outside
    # "2 on this node" (the first node's count), silently on a rank that prints nothing
    for var, value in (("SLURM_STEP_NUM_TASKS", "5"), ("SLURM_STEP_TASKS_PER_NODE", "2,3"),
                       ("SLURM_PROCID", "4"), ("SLURM_LOCALID", "2"), ("SLURM_NODEID", "1")):  # fmt: skip
        clean_env.setenv(var, value)
    assert H.slurm_step() == {"world_size": 5, "rank": 4, "local_rank": 2, "local_world_size": 3}
    H.check_layout(*H.launch_layout())  # a layout that exists
    assert not D.is_main_process()
    clean_env.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x3),1")
    clean_env.setenv("SLURM_NODEID", "3")
    assert H.slurm_step()["local_world_size"] == 1
    clean_env.setenv("SLURM_NODEID", "2")
    assert H.slurm_step()["local_world_size"] == 2


def test_nodes_running_unequal_numbers_of_ranks_are_counted(clean_env: pytest.MonkeyPatch) -> None:
    """srun -n5 over 3 nodes ("2(x2),1"): world_size // local_world_size said 2 (or 5 on the
    one-task node); the step's own count, or torchrun's agents, say 3."""
    for var, value in (("SLURM_STEP_NUM_TASKS", "5"), ("SLURM_STEP_TASKS_PER_NODE", "2(x2),1"),
                       ("SLURM_STEP_NUM_NODES", "3")):  # fmt: skip
        clean_env.setenv(var, value)
    assert H.count_nodes(5, 2) == 3 and H.count_nodes(5, 1) == 3
    clean_env.setenv("LOCAL_RANK", "0")  # torchrun in that step: its agents count
    clean_env.setenv("GROUP_WORLD_SIZE", "2")
    assert H.count_nodes(8, 4) == 2
    clean_env.delenv("GROUP_WORLD_SIZE")
    assert H.count_nodes(8, 4) == 2  # neither: the even layout's quotient


def _rank0_of_2(env: pytest.MonkeyPatch, port: int) -> None:
    for var, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):  # fmt: skip
        env.setenv(var, value)


def test_a_rank_whose_peers_never_come_is_one_line(clean_env: pytest.MonkeyPatch) -> None:
    # a WORLD_SIZE left in the shell: waited distributed.timeout_s, then a DistStoreError traceback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _rank0_of_2(clean_env, port)
    with pytest.raises(D.LaunchError, match=r"^rank 0 of 2: the other ranks did not join at "
                       rf"127\.0\.0\.1:{port} within distributed\.timeout_s=2 s") as info:  # fmt: skip
        D.init_distributed(DistributedConfig(backend="gloo", timeout_s=2))
    assert info.value.every_rank and "\n" not in str(info.value)
    assert "unset a WORLD_SIZE/RANK left in the shell" in str(info.value)
    # rank 1 alone: rank 0's store is not there to reach (was silent: only rank 0 printed)
    clean_env.setenv("RANK", "1")
    clean_env.setenv("LOCAL_RANK", "1")
    with pytest.raises(D.LaunchError, match=r"^rank 1 of 2: cannot reach rank 0 at ") as info:
        D.init_distributed(DistributedConfig(backend="gloo", timeout_s=2))
    assert info.value.every_rank and "\n" not in str(info.value)


def test_a_rendezvous_port_another_process_holds_is_one_line(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        _rank0_of_2(clean_env, held.getsockname()[1])
        with pytest.raises(D.LaunchError, match=r"^rank 0 of 2: cannot open the rendezvous at "):
            D.init_distributed(DistributedConfig(backend="gloo", timeout_s=2))
