"""Every result records the code it came from, also from a copy of the tree without .git."""

from __future__ import annotations

import subprocess

from scalelab import train


def test_git_commit_is_head_inside_git(monkeypatch) -> None:
    monkeypatch.setenv("SCALELAB_GIT_COMMIT", "not-this")
    head = train.git_commit()
    assert head is not None and len(head) == 40 and head != "not-this"


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
