"""Configuration loading: file, environment overrides, validation and its messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from danube_shared.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from danube_shared.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "danube.toml"
    path.write_text(text)
    return path


def test_defaults_when_default_file_is_missing():
    """No --config, no $DANUBE_CONFIG and no default file: the built-in defaults."""
    assert not DEFAULT_CONFIG_PATH.exists()
    settings = load_settings(None, environ={})
    assert settings == Settings()
    assert settings.log.level == "info"
    assert settings.api.port == 8480
    assert settings.database.busy_timeout_ms == 5000
    assert settings.keyd.socket_dir == Path("/run/danube")


def test_file_values_are_loaded(tmp_path: Path):
    path = write(
        tmp_path,
        '[log]\nlevel = "debug"\n[api]\nport = 9000\n[keyd]\ncontrol_uids = [1001, 1002]\n',
    )
    settings = load_settings(path, environ={})
    assert settings.log.level == "debug"
    assert settings.api.port == 9000
    assert settings.keyd.control_uids == (1001, 1002)
    assert settings.log.format == "json"  # untouched keys keep their defaults


def test_danube_config_variable_names_the_file(tmp_path: Path):
    path = write(tmp_path, '[log]\nlevel = "error"\n')
    settings = load_settings(None, environ={"DANUBE_CONFIG": str(path)})
    assert settings.log.level == "error"


def test_command_line_path_wins_over_danube_config(tmp_path: Path):
    given = write(tmp_path, '[log]\nlevel = "warn"\n')
    other = tmp_path / "other.toml"
    other.write_text('[log]\nlevel = "error"\n')
    settings = load_settings(given, environ={"DANUBE_CONFIG": str(other)})
    assert settings.log.level == "warn"


def test_environment_overrides_file(tmp_path: Path):
    path = write(tmp_path, '[log]\nlevel = "debug"\n[database]\nbusy_timeout_ms = 100\n')
    settings = load_settings(
        path,
        environ={"DANUBE_LOG__LEVEL": "trace", "DANUBE_DATABASE__BUSY_TIMEOUT_MS": "250"},
    )
    assert settings.log.level == "trace"
    assert settings.database.busy_timeout_ms == 250


def test_environment_sets_a_key_the_file_lacks(tmp_path: Path):
    path = write(tmp_path, "")
    settings = load_settings(path, environ={"DANUBE_API__HOST": "0.0.0.0"})  # noqa: S104 -- a value, not a bind
    assert settings.api.host == "0.0.0.0"  # noqa: S104 -- a value, not a bind


@pytest.mark.parametrize(
    ("raw", "expected"), [("[1001, 1002]", (1001, 1002)), ("1001, 1002", (1001, 1002)), ("", ())]
)
def test_environment_list_values(raw: str, expected: tuple[int, ...]):
    settings = load_settings(None, environ={"DANUBE_KEYD__WORKER_UIDS": raw})
    assert settings.keyd.worker_uids == expected


def test_unknown_key_in_file_is_named(tmp_path: Path):
    path = write(tmp_path, '[log]\nlevl = "debug"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert str(path) in message
    assert "[log] levl" in message
    assert "unknown key" in message


def test_unknown_section_in_file_is_named(tmp_path: Path):
    path = write(tmp_path, "[logging]\nlevel = 1\n")
    with pytest.raises(ConfigError, match=r"\[logging\]: unknown section"):
        load_settings(path, environ={})


def test_unknown_key_in_environment_is_named():
    with pytest.raises(ConfigError, match="DANUBE_LOG__LEVL: unknown key 'levl'"):
        load_settings(None, environ={"DANUBE_LOG__LEVL": "debug"})


def test_unknown_section_in_environment_is_named():
    with pytest.raises(ConfigError, match="DANUBE_LOGG__LEVEL: unknown section 'logg'"):
        load_settings(None, environ={"DANUBE_LOGG__LEVEL": "debug"})


def test_malformed_environment_name_is_rejected():
    with pytest.raises(ConfigError, match="DANUBE_LOGLEVEL: not of the form"):
        load_settings(None, environ={"DANUBE_LOGLEVEL": "debug"})


def test_danube_home_and_config_are_not_config_keys(tmp_path: Path):
    path = write(tmp_path, "")
    settings = load_settings(path, environ={"DANUBE_HOME": "/x", "DANUBE_CONFIG": str(path)})
    assert settings == Settings()


def test_bad_value_in_file_names_file_key_and_problem(tmp_path: Path):
    path = write(tmp_path, '[log]\nlevel = "loud"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert f"{path}: [log] level" in message
    assert "'trace', 'debug', 'info', 'warn' or 'error'" in message


def test_bad_value_in_environment_names_the_variable(tmp_path: Path):
    path = write(tmp_path, "[api]\nport = 9000\n")
    with pytest.raises(ConfigError, match=r"environment variable DANUBE_API__PORT: .*integer"):
        load_settings(path, environ={"DANUBE_API__PORT": "eighty"})


def test_out_of_range_value_is_rejected(tmp_path: Path):
    path = write(tmp_path, "[api]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"\[api\] port: .*65535"):
        load_settings(path, environ={})


def test_socket_dir_too_long_for_ipc_is_rejected(tmp_path: Path):
    path = write(tmp_path, f'[keyd]\nsocket_dir = "/{"d" * 100}"\n')
    with pytest.raises(ConfigError, match="107 bytes"):
        load_settings(path, environ={})


def test_missing_explicit_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_missing_file_named_by_variable_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(None, environ={"DANUBE_CONFIG": str(tmp_path / "absent.toml")})


def test_invalid_toml_is_an_error(tmp_path: Path):
    path = write(tmp_path, "[log\nlevel=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def test_section_that_is_not_a_table_is_an_error(tmp_path: Path):
    path = write(tmp_path, 'log = "debug"\n')
    with pytest.raises(ConfigError, match=r"must be a table"):
        load_settings(path, environ={})


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.log.level = "debug"  # pyright: ignore[reportAttributeAccessIssue] -- the point of the test


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "danube_cli.main", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )


def test_config_check_exits_2_and_names_the_typo(tmp_path: Path):
    path = write(tmp_path, '[log]\nlevl = "debug"\n')
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 2
    assert "levl" in result.stderr
    assert str(path) in result.stderr


def test_config_check_exits_0_on_a_valid_file(tmp_path: Path):
    path = write(tmp_path, '[log]\nlevel = "debug"\n')
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr


def test_config_show_prints_effective_config_as_json(tmp_path: Path):
    path = write(tmp_path, "[api]\nport = 9001\n")
    result = run_cli(
        "config",
        "show",
        "--config",
        str(path),
        env={"PATH": "/usr/bin:/bin", "DANUBE_LOG__LEVEL": "debug"},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["api"]["port"] == 9001
    assert shown["log"]["level"] == "debug"
    assert set(shown) == {"log", "database", "keyd", "api", "worker"}


def test_config_before_the_subcommand_is_honoured(tmp_path: Path):
    """`danube --config X config check` reads X, as `danube config check --config X` does."""
    path = write(tmp_path, '[log]\nlevl = "debug"\n')
    result = run_cli("--config", str(path), "config", "check")
    assert result.returncode == 2
    assert "levl" in result.stderr


def test_database_url_password_is_never_shown() -> None:
    """`config show` prints a PostgreSQL URL with its password replaced."""
    settings = Settings.model_validate(
        {"database": {"url": "postgresql+asyncpg://danube:hunter2-pw@db.example:5432/danube"}}
    )
    shown = json.dumps(settings.public_dict())
    assert "hunter2-pw" not in shown
    assert "postgresql+asyncpg://danube:***@db.example:5432/danube" in shown


def test_database_url_of_another_engine_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A URL for another driver is a config error that names the key, not the value."""
    config = tmp_path / "danube.toml"
    config.write_text('[database]\nurl = "mysql://root:s3cret-pw@h/db"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert "[database] url" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_worker_api_url_follows_the_api_port_from_the_environment(tmp_path: Path) -> None:
    """An empty `worker.api_url` means the API of the same config, port override included."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    settings = load_settings(config, environ={"DANUBE_API__PORT": "9123"})
    assert settings.worker_api_url() == "http://127.0.0.1:9123"
