"""The decisions `danube up` makes from what supervisord and the programs report, checked
without starting anything (tests/e2e checks them against real processes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from danube_cli.diagnosis import (
    ProgramExit,
    exit_failure,
    exit_status_from_log,
    last_error,
    migrated,
    program_exits,
    start_failure,
    startup_failures,
)
from danube_cli.errors import StackError
from danube_cli.home import Layout, check_home_fits, default_config_text, resolve_home
from danube_cli.supervisor_control import BACKOFF, EXITED, FATAL, RUNNING, ProcessInfo
from danube_cli.supervisord import supervisor_environment
from danube_shared.config import load_settings


def _info(state: str, exitstatus: int = 0, spawnerr: str = "", name: str = "keyd") -> ProcessInfo:
    return ProcessInfo(
        name=name,
        state=state,
        pid=0,
        exitstatus=exitstatus,
        spawnerr=spawnerr,
        logfile=f"/x/log/{name}.log",
        description="",
    )


def test_a_running_program_is_no_failure(tmp_path: Path):
    assert start_failure(_info(RUNNING), tmp_path / "supervisord.log") is None


def test_an_early_exit_2_read_from_supervisords_log_is_a_refusal(tmp_path: Path):
    """An exit within startsecs: XML-RPC has no status; supervisord's log has it."""
    log = tmp_path / "supervisord.log"
    log.write_text(
        "2026-01-01 00:00:00,000 WARN exited: api (exit status 1; not expected)\n"
        "2026-01-01 00:00:01,000 WARN exited: keyd (exit status 2; not expected)\n"
        "2026-01-01 00:00:02,000 WARN exited: api (exit status 1; not expected)\n"
    )
    failure = start_failure(
        _info(BACKOFF, spawnerr="Exited too quickly (process log may have details)"), log
    )
    assert failure is not None
    assert failure.exit_code == 2
    assert "keyd refused its config or key" in failure.message
    assert failure.log == Path("/x/log/keyd.log")


def test_a_late_exit_2_is_a_refusal_too(tmp_path: Path):
    """On a slow host the program may fail after startsecs: EXITED, "Bad exit code 2"."""
    failure = start_failure(_info(EXITED, 2, "Bad exit code 2"), tmp_path / "none.log")
    assert failure is not None
    assert failure.exit_code == 2


def test_another_exit_is_a_failure_with_exit_1(tmp_path: Path):
    log = tmp_path / "supervisord.log"
    log.write_text("x WARN exited: keyd (exit status 1; not expected)\n")
    failure = start_failure(
        _info(FATAL, spawnerr="Exited too quickly (process log may have details)"), log
    )
    assert failure is not None
    assert failure.exit_code == 1
    assert "keyd failed while starting (exit status 1)" in failure.message


def test_a_program_that_never_ran_is_reported_with_supervisords_reason(tmp_path: Path):
    failure = start_failure(_info(BACKOFF, spawnerr="can't find command '/nope'"), tmp_path / "x")
    assert failure is not None
    assert failure.exit_code == 1
    assert "can't find command '/nope'" in failure.message


def test_exit_status_is_the_named_programs_last(tmp_path: Path):
    log = tmp_path / "supervisord.log"
    log.write_text(
        "a WARN exited: keyd (exit status 2; not expected)\n"
        "b WARN exited: keyd (terminated by SIGKILL; not expected)\n"
        "c INFO exited: keyd (exit status 0; expected)\n"
        "d WARN exited: api (exit status 1; not expected)\n"
    )
    assert exit_status_from_log(log, "keyd") == 0
    assert exit_status_from_log(log, "api") == 1
    assert exit_status_from_log(log, "migrator") is None


def test_every_exit_after_the_offset_is_read_with_its_status_or_signal(tmp_path: Path):
    """A program that exited and was respawned between two polls still shows as exited."""
    log = tmp_path / "supervisord.log"
    before = "a WARN exited: api (exit status 2; not expected)\n"
    log.write_text(
        before
        + "b INFO spawned: 'api' with pid 7\n"
        + "c WARN exited: api (exit status 1; not expected)\n"
        + "d INFO spawned: 'api' with pid 8\n"
        + "e WARN exited: keyd (terminated by SIGKILL; not expected)\n"
    )
    exits = program_exits(log, since=len(before))
    assert exits == [
        ProgramExit("api", 1, "exit status 1"),
        ProgramExit("keyd", None, "terminated by SIGKILL"),
    ]
    failure = exit_failure(exits[0], tmp_path)
    assert (failure.exit_code, failure.log) == (1, tmp_path / "api.log")
    assert failure.message == "api failed while starting (exit status 1)"
    assert exit_failure(ProgramExit("keyd", 2, "exit status 2"), tmp_path).exit_code == 2


def test_last_error_prefers_the_latest_error_line():
    lines = [
        '{"level": "error", "process": "danube-api", "message": "old"}',
        '{"level": "info", "process": "danube-api", "message": "fine"}',
        "danube-keyd: error: key file /k has mode 0644; fix: chmod 600 /k",
        '{"level": "info", "process": "danube-keyd", "message": "later, not an error"}',
    ]
    assert last_error(lines) == "danube-keyd: error: key file /k has mode 0644; fix: chmod 600 /k"
    assert (
        last_error(
            [
                '{"level": "error", "process": "danube-api", "message": "not serving", "error": "schema_not_at_head"}'
            ]
        )
        == "danube-api: not serving (error=schema_not_at_head)"
    )
    assert last_error(["plain", '{"level": "info", "message": "x"}']) is None


def test_last_error_reads_a_programs_json_refusal_as_one_sentence():
    refusal = (
        '{"timestamp": "t", "level": "error", "logger": "danube_shared.program", '
        '"message": "refused to start: key file /k has mode 0644; fix: chmod 600 /k", '
        '"process": "danube-keyd", "exit_code": 2}'
    )
    assert (
        last_error([refusal])
        == "danube-keyd: refused to start: key file /k has mode 0644; fix: chmod 600 /k"
    )


def _programs(*infos: ProcessInfo) -> dict[str, ProcessInfo]:
    return {info.name: info for info in infos}


def test_a_migrator_that_exited_0_is_done_and_no_failure(tmp_path: Path):
    programs = _programs(
        _info(EXITED, 0, name="migrator"), _info(RUNNING), _info(RUNNING, name="api")
    )
    assert migrated(programs)
    assert startup_failures(programs, tmp_path / "none.log", 0, tmp_path) == []


def test_a_running_migrator_is_not_done(tmp_path: Path):
    programs = _programs(_info(RUNNING, name="migrator"))
    assert not migrated(programs)
    assert startup_failures(programs, tmp_path / "none.log", 0, tmp_path) == []


@pytest.mark.parametrize(("status", "code"), [(1, 1), (2, 2)])
def test_a_failed_migrator_ends_up_naming_its_log(tmp_path: Path, status: int, code: int):
    """The migrator runs with startsecs=0: supervisord keeps its exit status (EXITED)."""
    programs = _programs(_info(EXITED, status, f"Bad exit code {status}", name="migrator"))
    [failure] = startup_failures(programs, tmp_path / "none.log", 0, tmp_path)
    assert failure.exit_code == code
    assert failure.log == Path("/x/log/migrator.log")
    assert f"the migrator failed with exit code {status}" in failure.message
    assert "/x/log/migrator.log" in failure.message


def test_a_migrator_supervisord_cannot_run_is_a_failure(tmp_path: Path):
    info = _info(FATAL, spawnerr="can't find command '/nope'", name="migrator")
    [failure] = startup_failures(_programs(info), tmp_path / "none.log", 0, tmp_path)
    assert failure.exit_code == 1
    assert "can't find command '/nope'" in failure.message


def test_an_api_exit_1_while_the_migrator_runs_is_waited_out(tmp_path: Path):
    """The API gave up waiting for the schema head; supervisord starts it again."""
    log = tmp_path / "supervisord.log"
    log.write_text("a WARN exited: api (exit status 1; not expected)\n")
    programs = _programs(
        _info(RUNNING, name="migrator"),
        _info(BACKOFF, spawnerr="Exited too quickly (process log may have details)", name="api"),
    )
    assert startup_failures(programs, log, 0, tmp_path) == []


def test_an_api_exit_1_after_the_migration_is_a_failure(tmp_path: Path):
    log = tmp_path / "supervisord.log"
    log.write_text(
        "a WARN exited: api (exit status 1; not expected)\n"
        "b INFO exited: migrator (exit status 0; expected)\n"
        "c WARN exited: api (exit status 1; not expected)\n"
    )
    programs = _programs(
        _info(EXITED, 0, name="migrator"),
        _info(BACKOFF, spawnerr="Exited too quickly (process log may have details)", name="api"),
    )
    failures = startup_failures(programs, log, 0, tmp_path)
    assert failures
    assert failures[0].message == "api failed while starting (exit status 1)"
    assert failures[0].log == tmp_path / "api.log"


def test_a_keyd_refusal_while_the_migrator_runs_is_a_failure(tmp_path: Path):
    log = tmp_path / "supervisord.log"
    log.write_text("a WARN exited: keyd (exit status 2; not expected)\n")
    programs = _programs(_info(RUNNING, name="migrator"))
    [failure] = startup_failures(programs, log, 0, tmp_path)
    assert failure.exit_code == 2


def test_home_is_flag_then_environment_then_dot_danube():
    assert resolve_home(Path("/a"), {"DANUBE_HOME": "/b"}) == Path("/a")
    assert resolve_home(None, {"DANUBE_HOME": "/b"}) == Path("/b")
    assert resolve_home(None, {}) == Path(".danube")


def test_a_home_too_long_for_keyds_socket_is_refused_with_exit_2():
    check_home_fits(Path("/tmp/" + "d" * (107 - len("/tmp/") - len("/run/keyd-worker.sock"))))
    with pytest.raises(StackError) as refused:
        check_home_fits(Path("/tmp/" + "d" * (108 - len("/tmp/") - len("/run/keyd-worker.sock"))))
    assert refused.value.exit_code == 2
    assert "107 bytes" in refused.value.message


def test_the_written_config_is_valid_and_keeps_everything_inside_home(tmp_path: Path):
    home = tmp_path / 'odd "dir" \\ é'
    path = tmp_path / "danube.toml"
    path.write_text(default_config_text(home), encoding="utf-8")
    settings = load_settings(path, environ={})
    assert settings.database.path == home / "data" / "danube.db"
    assert settings.keyd.key_path == home / "keys" / "encryption.key"
    assert settings.keyd.socket_dir == home / "run"
    assert settings.keyd.audit_path == home / "log" / "keyd-audit.log"
    assert settings.worker.token_file == home / "worker.token"
    assert settings.worker.workdir == home / "work"
    assert tomllib.loads(default_config_text(home))["api"] == {"host": "127.0.0.1", "port": 8480}


def test_supervisor_environment_sets_every_variable_the_config_expands(tmp_path: Path):
    conf = (Path(__file__).parents[2] / "deploy" / "supervisord.conf").read_text()
    env = supervisor_environment(Layout.for_home(tmp_path), Path("/bin"), base={})
    used = set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", conf))
    assert used == set(env)
    # Only DANUBE_CONFIG may carry the DANUBE_ prefix: the programs read every other
    # DANUBE_* variable as a config override.
    assert [name for name in env if name.startswith("DANUBE_")] == ["DANUBE_CONFIG"]
