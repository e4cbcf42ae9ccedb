"""`scalelab slurm`: the sbatch script (bash-valid, srun + torchrun rendezvous, requeue on signal)
and one-line refusals before anything is written or submitted."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scalelab.launch.slurm import SlurmJob, job_name, render_sbatch, slurm_main, time_limit_s
from tests.slurm_cluster import LocalSlurm, unavailable

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "configs" / "ag_news_small.yaml"


def test_script_is_valid_bash_with_rendezvous_requeue_and_resume(tmp_path: Path) -> None:
    job = SlurmJob(config=SMALL, run_name="r", out_dir=tmp_path, nodes=2, procs_per_node=4,
                   gpus_per_node=4, cpus_per_task=32, time="01:00:00", partition="gpu",
                   overrides=["train.epochs=5", "output.progress=plain"])  # fmt: skip
    text = render_sbatch(job)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu",
                 "export OMP_NUM_THREADS=8", f"#SBATCH --chdir={shlex.quote(str(Path.cwd()))}"):  # fmt: skip
        assert line in text.splitlines(), line
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    for part in ("--nproc-per-node=4", '--nnodes="$SLURM_NNODES"', "--rdzv-backend=c10d",
                 '--rdzv-endpoint="$head_addr:$port"', f"output.dir={tmp_path}",
                 "output.run_name=r", "train.resume=auto", "train.epochs=5"):  # fmt: skip
        assert part in srun, part
    # the script's exports (OMP_NUM_THREADS, torchrun's shutdown timeout) reach the ranks of a
    # job submitted with --export=NONE too
    assert srun.startswith("srun --kill-on-bad-exit=1 --export=ALL "), srun
    assert 'scancel --signal=TERM "$SLURM_JOB_ID"' in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text


def _script_port(text: str, job_id: int, node: str) -> int:
    """The rendezvous port the script's head lines choose for job `job_id` run on `node`
    (scontrol faked: the allocation's first node is "n1")."""
    lines = text.splitlines()
    head = lines[lines.index("head_addr=${head_addr:-$head_node}") + 1 :]
    head = head[: next(i for i, ln in enumerate(head) if ln.startswith("export "))]
    script = "\n".join(["head_node=n1", *head, 'echo "$port"'])
    env = {**os.environ, "SLURM_JOB_ID": str(job_id), "SLURMD_NODENAME": node}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_rendezvous_port_skips_a_port_another_process_holds(tmp_path: Path) -> None:
    import socket

    text = render_sbatch(SlurmJob(config=SMALL, run_name="r", out_dir=tmp_path, nodes=2))
    with socket.socket() as held:
        for taken in range(24000, 24100):  # a free port of the scheme's range
            try:
                held.bind(("", taken))
                break
            except OSError:
                continue
        held.listen()
        job_id = taken - 20000  # the job whose first choice it is
        # where the script runs on the head node it takes the next free port; elsewhere (a batch
        # host that is not the rendezvous node) it cannot probe and keeps the job's own
        chosen = _script_port(text, job_id, "n1")
        assert chosen != taken and 20000 <= chosen < 32000
        with socket.socket() as probe:
            probe.bind(("", chosen))  # free indeed
        assert _script_port(text, job_id, "n2") == taken
    assert _script_port(text, job_id, "n1") == taken  # free again: the job's own port


def test_no_submit_writes_only_the_script(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = slurm_main(["--config", "ag_news_small", "--procs-per-node", "2", "--out",
                       str(tmp_path), "--no-submit"])  # fmt: skip
    assert code == 0
    script = tmp_path / "slurm" / "ag_news_small-ws2.sbatch"
    assert script.is_file() and f"wrote {script}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["slurm"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--gpus-per-node", "2", "--procs-per-node", "4"], "two ranks would share one GPU"),
        (["--procs-per-node", "3"], "train.batch_size"),  # 32 does not divide by 3 ranks
        (["output.run_name=x"], "set by the job itself"),
        (["--cpus-per-task", "1", "--procs-per-node", "2"], "at least one CPU"),
        (["train.batchsize=3"], "train.batchsize"),
        (["--procs-per-node", "0"], "--procs-per-node must be >= 1"),  # was a silent 1-rank job
        # an #SBATCH line ends at the newline: the rest would have run as a shell command
        (
            ["--time", "1:00:00\ntouch /tmp/pwned"],
            "--time '1:00:00\\ntouch /tmp/pwned': contains a line break",
        ),
        (["--partition", "gpu\rx"], "contains a line break"),
        # sbatch only refused these at submission, after the script was written
        (["--time", "banana"], "--time 'banana': not a SLURM time limit"),
        (["--time", "1:2:3:4"], "not a SLURM time limit"),
        # SIGUSR1 two minutes before a one-minute limit: a checkpoint before any step
        (["--time", "1"], "--time '1' is not longer than --signal-seconds 120"),
        (["--sbatch-arg", "hello world"], "--sbatch-arg 'hello world': not an sbatch option"),
        (["--sbatch-arg=--nodes=4"], "the script sets --nodes itself (use scalelab's --nodes)"),
        (["--sbatch-arg", "-o /tmp/x.log"], "the script sets -o itself (it would break the job)"),
        (["--sbatch-arg=--signal=B:USR1@5"], "use scalelab's --signal-seconds"),
        # every array task trained into the one run folder at once
        (["--sbatch-arg=--array=0-1"], "every task of the array would train into the one run"),
        (["--sbatch-arg", "-a 0-3"], "every task of the array would train into the one run"),
        # sbatch reads every word: "--nodes=9" rode in unchecked behind an allowed option
        (["--sbatch-arg=--mem=1G --nodes=9"], "one sbatch option per --sbatch-arg"),
        (["--sbatch-arg", "-J x -N 9"], "'-J x -N 9': one sbatch option per --sbatch-arg"),
        (["--python", ""], "--python is empty"),
    ],
)
def test_impossible_jobs_are_one_line_errors_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], fragment: str
) -> None:
    code = slurm_main(["--config", "ag_news_small", "--out", str(tmp_path), *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalelab: error:") and fragment in err[0], err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 5400), ("2:30", 150), ("01:00:00", 3600), ("1-2", 93600), ("1-0:30", 88200),
     ("0-00:10:05", 605), ("UNLIMITED", None), ("infinite", None), ("0", None)],
)  # fmt: skip
def test_every_slurm_time_form_is_understood(text: str, seconds: int | None) -> None:
    assert time_limit_s(text) == seconds


def test_sbatch_options_of_the_users_own_go_into_the_script(tmp_path: Path) -> None:
    argv = ["--config", "ag_news_small", "--out", str(tmp_path), "--no-submit", "--time", "1-0"]
    assert slurm_main([*argv, "--sbatch-arg=--mem=16G", "--sbatch-arg", "-J mine"]) == 0
    text = (tmp_path / "slurm" / "ag_news_small-ws1.sbatch").read_text()
    assert "#SBATCH --mem=16G\n#SBATCH -J mine\n" in text and "#SBATCH --time=1-0\n" in text
    # a value that starts with '-' or holds " -" is no second option
    assert slurm_main([*argv, "--sbatch-arg", "--nice -5", '--sbatch-arg=--comment="a -b"']) == 0
    text = (tmp_path / "slurm" / "ag_news_small-ws1.sbatch").read_text()
    assert '#SBATCH --nice -5\n#SBATCH --comment="a -b"\n' in text


def test_out_below_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    code = slurm_main(
        ["--config", "ag_news_small", "--out", str(tmp_path / "afile"), "--no-submit"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write" in err[0], err
    assert (tmp_path / "afile").read_text() == "x"


def test_missing_sbatch_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code = slurm_main(["--config", "ag_news_small", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch not found" in err[0] and "--no-submit" in err[0]


def test_user_values_are_never_expanded_by_the_batch_shell(tmp_path: Path) -> None:
    # "$(...)" in an override used to be left unquoted (any word holding '"$' was)
    evil = 'data.test_path="$(touch ' + str(tmp_path / "PWNED") + ')"'
    job = SlurmJob(config=SMALL, run_name="r", out_dir=tmp_path / "o u t", procs_per_node=2,
                   overrides=[evil, "data.train_path=it's here.csv"])  # fmt: skip
    text = render_sbatch(job)
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    # run the srun line with srun replaced by a printer of its arguments
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (fake / "srun").chmod(0o755)
    res = subprocess.run(
        ["bash", "-c", f"head_addr=h; port=1; {srun.removesuffix(' &')}"],
        env={"PATH": f"{fake}:/usr/bin:/bin", "SLURM_NNODES": "1", "SLURM_JOB_ID": "7",
             "SLURM_CPUS_PER_TASK": "2"},
        capture_output=True, text=True,
    )  # fmt: skip
    args = res.stdout.splitlines()
    assert res.returncode == 0 and evil in args and "data.train_path=it's here.csv" in args
    assert f"output.dir={tmp_path / 'o u t'}" in args
    assert "--rdzv-endpoint=h:1" in args and "--rdzv-id=7" in args and "--nnodes=1" in args
    assert not (tmp_path / "PWNED").exists()
    assert "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=120" in text.splitlines()


def test_a_step_that_ends_while_the_signal_trap_runs_keeps_its_exit_code(tmp_path: Path) -> None:
    """srun ends (exit 3) while the USR1 trap still runs: the script's code was the interrupted
    wait's 138, not the step's, so a finished job was requeued once more."""
    text = render_sbatch(SlurmJob(config=SMALL, run_name="r", out_dir=tmp_path))
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("srun "))
    end = next(i for i, ln in enumerate(lines) if ln == 'preempted=""')
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/bash\nsleep 1\nexit 3\n")
    (fake / "srun").chmod(0o755)
    harness = "\n".join([
        "on_signal() { sleep 2; }",  # the trap is still running when the step ends
        "trap 'on_signal USR1' USR1",
        "( sleep 0.3; kill -USR1 $$ ) &",
        *lines[start:end],
        'echo "code=$code"',
    ])  # fmt: skip
    res = subprocess.run(["bash", "-c", harness], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{fake}:/usr/bin:/bin", "SLURM_CPUS_PER_TASK": "1",
                              "SLURM_NNODES": "1", "SLURM_JOB_ID": "7"})  # fmt: skip
    assert res.stdout.strip().splitlines()[-1] == "code=3", res.stdout + res.stderr


@pytest.mark.parametrize(
    ("show_node", "expected"),
    [
        (
            "NodeName=n1 Arch=x86_64 CoresPerSocket=8 NodeAddr=10.0.0.5 NodeHostName=n1-eth",
            "10.0.0.5",
        ),
        ("", "n1"),  # node details hidden from users (PrivateData=nodes): the node name it is
    ],
)
def test_rendezvous_uses_the_head_nodes_slurm_address(
    tmp_path: Path, show_node: str, expected: str
) -> None:
    lines = render_sbatch(SlurmJob(config=SMALL, run_name="r", out_dir=tmp_path)).splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("head_node="))
    head = [ln for ln in lines[first : first + 6] if ln.startswith(("head_node=", "head_addr="))]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(
        '#!/bin/bash\ncase "$*" in\n  "show hostnames n[1-2]") printf "n1\\nn2\\n";;\n'
        f'  "-o show node n1") printf "%s\\n" "{show_node}";;\n  *) exit 1;;\nesac\n'
    )
    (fake / "scontrol").chmod(0o755)
    res = subprocess.run(
        ["bash", "-c", "\n".join([*head, 'echo "$head_addr"'])],
        env={"PATH": f"{fake}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "n[1-2]"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert len(head) == 3 and res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected


def test_a_percent_in_the_log_path_is_literal(tmp_path: Path) -> None:
    job = SlurmJob(config=SMALL, run_name="r%x", out_dir=tmp_path / "100%")
    assert f"#SBATCH --output={tmp_path}/100%%/slurm/r%%x-%j.out" in render_sbatch(job).splitlines()
    assert job.log_path("42") == tmp_path / "100%" / "slurm" / "r%x-42.out"


def test_an_existing_run_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "ag_news_small-ws1"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch\n1\n")
    base = ["--config", "ag_news_small", "--out", str(tmp_path), "--no-submit"]
    assert slurm_main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run; pass --resume" in err[0], err
    assert not (tmp_path / "slurm").exists()
    assert slurm_main([*base, "--resume"]) == 0
    assert (tmp_path / "slurm" / "ag_news_small-ws1.sbatch").is_file()


@pytest.mark.parametrize("name", ["a/../../b", "..", "x/y"])
def test_run_name_must_be_a_folder_name(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    assert (
        slurm_main(["--config", "ag_news_small", "--out", str(tmp_path), "--run-name", name]) == 2
    )
    assert "must be a folder name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """sbatch and squeue on PATH: sbatch records its arguments and says job 41; squeue prints
    the returned `queue` file (and exits with the status in `queue.rc`, if any)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls, queue = tmp_path / "sbatch.calls", tmp_path / "queue"
    (fake / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {calls}\necho 41\n')
    (fake / "squeue").write_text(
        f'#!/bin/bash\necho "$@" >> {queue}.calls\n[ -f {queue} ] && cat {queue}\n'
        f'if [ -f {queue}.rc ]; then echo "squeue: error: slurm_load_jobs error: Unable to '
        f'contact slurm controller" >&2; exit $(cat {queue}.rc); fi\nexit 0\n'
    )
    for exe in ("sbatch", "squeue"):
        (fake / exe).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    return calls, queue


def test_a_second_job_for_a_run_still_queued_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both jobs would train into one run folder with train.resume=auto, each overwriting the
    # other's checkpoints; the run folder does not exist yet while the first job is pending
    calls, queue = _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "exp"
    argv = ["--config", "ag_news_small", "--out", str(out)]
    assert slurm_main(argv) == 0
    script = out / "slurm" / "ag_news_small-ws1.sbatch"
    assert "submitted job 41" in capsys.readouterr().out

    for state in ("PENDING", "RUNNING"):
        queue.write_text(f"7|RUNNING|/elsewhere/ag_news_small-ws1.sbatch\n41|{state}|{script}\n")
        before = script.read_text()
        for extra in ([], ["--resume"], ["--no-submit"]):
            assert slurm_main([*argv, *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [
                f"scalelab: error: {out / 'ag_news_small-ws1'}: SLURM job 41 ({state.lower()}) "
                "of this run is still queued or running, and a second job would train into the "
                "same run folder at the same time; wait for it to end (or scancel 41), or choose "
                "another --run-name or --out"
            ]
        assert script.read_text() == before
    assert len(calls.read_text().splitlines()) == 1  # sbatch ran for the first job only
    assert "--name=scalelab-ag_news_small-ws1" in queue.with_suffix(".calls").read_text()

    # the same run name in another --out is another run folder; an ended job is no conflict
    assert slurm_main(["--config", "ag_news_small", "--out", str(tmp_path / "other")]) == 0
    queue.write_text(f"41|COMPLETED|{script}\n")
    assert slurm_main(argv) == 0
    assert len(calls.read_text().splitlines()) == 3
    # a job renamed with --sbatch-arg is looked for under its own name
    queue.write_text(f"41|RUNNING|{script}\n")
    assert slurm_main([*argv, "--sbatch-arg=--job-name=mine"]) == 2
    assert (
        queue.with_suffix(".calls")
        .read_text()
        .splitlines()[-1]
        .startswith("--noheader --name=mine ")
    )


def test_a_queue_that_cannot_be_listed_stops_a_submission_only(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, queue = _fake_slurm(tmp_path, monkeypatch)
    queue.with_suffix(".rc").write_text("1")
    argv = ["--config", "ag_news_small", "--out", str(tmp_path / "exp")]
    assert slurm_main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "scalelab: error: squeue failed, so this run's jobs cannot be checked: squeue: error: "
        "slurm_load_jobs error: Unable to contact slurm controller"
    ]
    assert not calls.exists() and not (tmp_path / "exp").exists()
    assert slurm_main([*argv, "--no-submit"]) == 0  # only a script: nothing can run twice yet


@pytest.mark.slow
@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
def test_a_second_job_for_a_run_still_queued_is_refused_by_a_real_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalSlurm(tmp_path / "slurm")
    cluster.start()
    try:
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
        # held: the job stays pending and never trains
        argv = ["--config", "ag_news_small", "--out", str(tmp_path / "exp"), "--sbatch-arg=--hold"]
        assert slurm_main(argv) == 0
        job_id = capsys.readouterr().out.split("submitted job ")[1].split(":")[0]
        assert slurm_main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"SLURM job {job_id} (pending) of this run is still queued" in line
        cluster.run("scancel", job_id)
        deadline = time.time() + 30
        while time.time() < deadline and job_id in cluster.run("squeue", "-h", "-o", "%i").stdout:
            time.sleep(0.2)
        assert slurm_main(argv) == 0  # cancelled: the run may be submitted again
        cluster.run("scancel", capsys.readouterr().out.split("submitted job ")[1].split(":")[0])
    finally:
        cluster.stop()


def test_two_submissions_of_one_run_at_the_same_moment_make_one_job(tmp_path: Path) -> None:
    """Both squeue checks would find no job while the first sbatch is still running: the
    submissions go one after the other, and the second sees the first's job."""
    import sys

    fake = tmp_path / "bin"
    fake.mkdir()
    calls, queue = tmp_path / "sbatch.calls", tmp_path / "queue"
    # a slow sbatch (1 s) whose job then shows in the queue
    (fake / "sbatch").write_text(
        f'#!/bin/bash\nsleep 1\necho "$@" >> {calls}\necho "41|PENDING|${{@: -1}}" >> {queue}\n'
        "echo 41\n"
    )
    (fake / "squeue").write_text(f"#!/bin/bash\n[ -f {queue} ] && cat {queue}\nexit 0\n")
    for exe in ("sbatch", "squeue"):
        (fake / exe).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "scalelab", "slurm", "--config", "ag_news_small",
            "--out", str(tmp_path / "exp")]  # fmt: skip
    procs = [
        subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "SLURM job 41 (pending) of this run is still queued" in refused
    assert len(calls.read_text().splitlines()) == 1  # one job


_STUBS = {
    # scontrol: hostnames / node address for the rendezvous, the job record (PreemptTime from
    # the test), requeue logged
    "scontrol": """case "$*" in
  *hostnames*) echo vm ;;
  *"show node"*) echo "NodeName=vm NodeAddr=vm" ;;
  *"show job"*) echo "JobId=7 JobState=RUNNING PreemptTime=${STUB_PREEMPT:-None}" ;;
  requeue*) echo "requeue $2" >> "$STUB_LOG" ;;
esac""",
    "scancel": 'echo "scancel $*" >> "$STUB_LOG"',
    # srun: the step; STUB_SIGNALS are sent to the batch shell (as SLURM would) mid-step
    "srun": """for sig in $STUB_SIGNALS; do kill -s "$sig" "$PPID"; sleep 0.2; done
exit "${STUB_CODE:-0}\"""",
}


@pytest.mark.parametrize(
    ("signals", "preempt", "code", "restarts", "requeued", "says"),
    [
        ("", "None", 0, 0, False, None),  # finished
        ("", "None", 1, 0, False, None),  # crashed: no requeue
        ("USR1", "None", 1, 0, True, "requeueing job 7; the run resumes"),  # time limit near
        ("USR1 TERM", "None", 1, 0, True, "requeueing job 7"),  # limit hit while checkpointing
        ("TERM", "None", 1, 0, False, "stopped on SIGTERM without a preemption"),  # scancel
        # preempted under a GraceTime: SLURM signals only the step, the shell sees PreemptTime
        ("", "2026-12-07T01:38:19", 1, 0, True, "requeueing job 7 (preempted)"),
        ("TERM", "2026-12-07T01:38:19", 1, 0, True, "(preempted)"),
        ("USR1", "None", 1, 3, False, "stopped after 3 requeues; resubmit to continue"),
    ],
)
def test_the_batch_shell_requeues_after_the_time_limit_signal_or_a_preemption_only(
    tmp_path: Path, signals: str, preempt: str, code: int, restarts: int, requeued: bool, says
) -> None:
    """The sbatch script's own logic, run by bash with stub SLURM commands (the local-cluster
    tests need root): what requeues, what does not, and the step's exit code passes through."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in _STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(SlurmJob(config=SMALL, run_name="r", out_dir=tmp_path)))
    log = tmp_path / "calls.log"
    log.touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "STUB_SIGNALS": signals, "STUB_PREEMPT": preempt, "STUB_CODE": str(code),
           "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "vm", "SLURM_NNODES": "1",
           "SLURM_CPUS_PER_TASK": "2", "SLURM_RESTART_COUNT": str(restarts)}  # fmt: skip
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stdout + res.stderr
    calls = log.read_text().splitlines()
    assert ("requeue 7" in calls) is requeued, (calls, res.stdout)
    if says:
        assert says in res.stdout, res.stdout
    else:
        assert "requeue" not in res.stdout and "SIGTERM" not in res.stdout, res.stdout
    # SIGUSR1 asks the step to checkpoint (scancel --signal=TERM), whatever follows
    assert ("scancel --signal=TERM 7" in calls) is bool(signals), calls


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ([], "scalelab-r"),
        (["--job-name=mine"], "mine"),
        (["-J mine", "--job-name x"], "x"),  # the last one, as sbatch
        (['-J "a -b"'], "a -b"),  # squeue lists the name sbatch read: without the quotes
        (["--job-name='my run'"], "my run"),
    ],
)
def test_the_job_is_looked_for_under_the_name_sbatch_gives_it(args: list[str], name: str) -> None:
    job = SlurmJob(config=SMALL, run_name="r", out_dir=Path("x"), sbatch_args=args)
    assert job_name(job) == name
