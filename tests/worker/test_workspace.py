"""A job's workspace on disk: made private, removed whole whatever the step left in it."""

from __future__ import annotations

import stat
from pathlib import Path

from danube_worker.job_runner import make_workspace, remove_workspace


def test_an_empty_workspace_is_removed(tmp_path: Path) -> None:
    """A workspace the job left empty is gone after remove_workspace."""
    workspace = tmp_path / "work" / "job-1"
    make_workspace(workspace)
    assert stat.S_IMODE(workspace.stat().st_mode) == 0o700
    remove_workspace(workspace)
    assert not workspace.exists()


def test_a_workspace_holding_an_unwritable_directory_is_removed(tmp_path: Path) -> None:
    """Files and a directory made mode 0 inside it do not keep the workspace alive."""
    workspace = tmp_path / "work" / "job-1"
    make_workspace(workspace)
    (workspace / "d" / "e").mkdir(parents=True)
    (workspace / "d" / "e" / "f").write_text("x")
    (workspace / "d").chmod(0)
    remove_workspace(workspace)
    assert not workspace.exists()


def test_removing_a_workspace_that_is_not_there_does_nothing(tmp_path: Path) -> None:
    """No workspace (never made, or already removed): no error."""
    remove_workspace(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_the_first_workspace_makes_the_workdir_private(tmp_path: Path) -> None:
    """No workdir yet: it is made, 0700, with the job's workspace in it."""
    workdir = tmp_path / "work"
    make_workspace(workdir / "job-1")
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((workdir / "job-1").stat().st_mode) == 0o700


def test_a_workspace_left_by_a_killed_worker_is_replaced_by_an_empty_one(tmp_path: Path) -> None:
    """A workspace already there (its worker was killed outright) is emptied, made 0700."""
    workspace = tmp_path / "work" / "job-1"
    workspace.mkdir(parents=True)
    (workspace / "left").write_text("from the last run")
    workspace.chmod(0o755)
    make_workspace(workspace)
    assert list(workspace.iterdir()) == []
    assert stat.S_IMODE(workspace.stat().st_mode) == 0o700
