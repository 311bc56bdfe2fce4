"""DIR as `danube up` prepares it."""

from __future__ import annotations

import stat
from pathlib import Path

from danube_cli.home import Layout, prepare_home
from danube_shared.config import load_settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_makes_the_directories_and_a_config_pointing_inside_home(tmp_path: Path):
    layout = Layout.for_home(tmp_path / "home")
    prepare_home(layout, write_config=True)
    assert _mode(layout.home) == 0o700
    assert _mode(layout.log_dir) == 0o700
    assert _mode(layout.run_dir) == 0o750
    assert _mode(layout.work_dir) == 0o700
    assert layout.work_dir == layout.home / "work"
    assert _mode(layout.config) == 0o600
    settings = load_settings(layout.config, environ={})
    assert settings.worker.workdir == layout.work_dir
    assert settings.worker.token_file == layout.home / "worker.token"
    assert settings.keyd.audit_path == layout.log_dir / "keyd-audit.log"


def test_an_existing_config_is_left_alone(tmp_path: Path):
    layout = Layout.for_home(tmp_path)
    layout.config.write_text("# mine\n")
    prepare_home(layout, write_config=True)
    assert layout.config.read_text() == "# mine\n"
