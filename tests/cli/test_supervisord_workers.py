"""deploy/supervisord.conf's workers, as supervisord itself reads the file under the
environment `danube up --workers N` gives it: N processes named worker-0..N-1 (none for
0), stopped with SIGTERM and given time for their job's stop before SIGKILL."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from supervisor.options import ServerOptions

from danube_cli.home import Layout
from danube_cli.main import build_parser
from danube_cli.supervisord import supervisor_environment, supervisord_config


def worker_configs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int, kill_grace_s: float = 10
) -> list[Any]:
    layout = Layout.for_home(tmp_path)
    layout.log_dir.mkdir()
    layout.run_dir.mkdir()
    env = supervisor_environment(
        layout, Path("/bin"), base={}, workers=workers, kill_grace_s=kill_grace_s
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.realize(args=["--configuration", str(supervisord_config())])
    groups = {group.name: group for group in options.process_group_configs}
    assert {"migrator", "keyd", "api", "worker"} <= set(groups)
    return list(groups["worker"].process_configs)


@pytest.mark.parametrize("workers", [1, 3])
def test_n_workers_are_n_processes_named_by_number(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
):
    configs = worker_configs(monkeypatch, tmp_path, workers)
    assert [config.name for config in configs] == [f"worker-{n}" for n in range(workers)]
    assert {config.command.split()[0] for config in configs} == {"/bin/danube-worker"}
    assert len({config.stdout_logfile for config in configs}) == workers


def test_zero_workers_is_an_empty_group_supervisord_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    assert worker_configs(monkeypatch, tmp_path, 0) == []


def test_a_worker_is_stopped_with_sigterm_and_outwaits_two_kill_grace_periods(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    (config,) = worker_configs(monkeypatch, tmp_path, 1, kill_grace_s=25)
    assert config.stopsignal == signal.SIGTERM
    assert config.stopwaitsecs > 2 * 25
    assert config.exitcodes == [2]


def test_workers_defaults_to_1_and_takes_0():
    parser = build_parser()
    assert parser.parse_args(["up"]).workers == 1
    assert parser.parse_args(["up", "--workers", "0"]).workers == 0


@pytest.mark.parametrize("value", ["-1", "two", "1000"])
def test_a_worker_count_that_is_not_0_to_64_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["up", "--workers", value])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err
