"""Every result records the code it came from, also from a copy of the tree without .git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from scalelab import train

REPO = Path(__file__).resolve().parents[2]


def test_git_commit_is_head_inside_git(monkeypatch) -> None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git work tree (the fallback is tested below)")
    monkeypatch.setenv("SCALELAB_GIT_COMMIT", "not-this")
    assert train.git_commit() == head


def test_git_commit_outside_git_falls_back_to_the_environment(monkeypatch) -> None:
    def no_repo(*args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository")

    monkeypatch.setattr(train.subprocess, "run", no_repo)
    monkeypatch.delenv("SCALELAB_GIT_COMMIT", raising=False)
    assert train.git_commit() is None
    monkeypatch.setenv("SCALELAB_GIT_COMMIT", "abc123-dirty")
    assert train.git_commit() == "abc123-dirty"

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(train.subprocess, "run", no_git)
    assert train.git_commit() == "abc123-dirty"
