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
