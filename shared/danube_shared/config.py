"""Danube's configuration: one frozen model per section, loaded from TOML, then overridden
by `DANUBE_<SECTION>__<KEY>` environment variables.

Why not pydantic-settings: its environment source silently skips a variable whose section
is unknown (`DANUBE_LOGG__LEVEL`), and it merges file and environment before validating, so
an error could not say whether the bad value came from the file or from a variable. This
loader validates the merged result but remembers where each value came from, and every
error names the file or variable, the key and the problem.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from danube_shared.errors import ConfigError
from danube_shared.keyd_protocol import socket_dir_problem

DEFAULT_CONFIG_PATH = Path("/etc/danube/danube.toml")
ENV_PREFIX = "DANUBE_"
# Variables with the prefix that select things rather than set config keys.
NON_KEY_VARIABLES = frozenset({"DANUBE_CONFIG", "DANUBE_HOME"})

LogLevel = Literal["trace", "debug", "info", "warn", "error"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class LogSettings(_Section):
    level: LogLevel = "info"
    format: Literal["json", "console"] = "json"


class DatabaseSettings(_Section):
    path: Path = Path("/var/lib/danube/danube.db")
    # When set, PostgreSQL through asyncpg instead of the SQLite file at `path`.
    url: str = ""
    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    # PostgreSQL only: connections each process keeps, and the longest wait for one.
    pool_size: int = Field(default=5, ge=1, le=100)
    pool_timeout_s: float = Field(default=5.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url_is_postgresql(cls, value: str) -> str:
        if not value:
            return value
        # urllib, not SQLAlchemy's URL: keyd and the worker load this module and never
        # import sqlalchemy. Never echo the value: it may hold a password.
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(
                "not a database URL; use postgresql+asyncpg://USER[:PASSWORD]@HOST[:PORT]/DB"
            ) from None
        if parts.scheme != "postgresql+asyncpg":
            scheme = parts.scheme or "(none)"
            raise ValueError(
                f"scheme {scheme!r} is not supported; use postgresql+asyncpg://USER@HOST/DB"
            )
        if not parts.path.strip("/"):
            raise ValueError("names no database; use postgresql+asyncpg://USER@HOST/DB")
        return value

    @property
    def is_postgresql(self) -> bool:
        return bool(self.url)

    def url_for_display(self) -> str:
        """`url` with any password replaced by `***`, for output and logs."""
        if not self.url:
            return ""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class KeydSettings(_Section):
    key_path: Path = Path("/var/lib/danube/keys/encryption.key")
    socket_dir: Path = Path("/run/danube")
    request_timeout_ms: int = Field(default=2000, ge=10, le=600_000)
    cache_ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    control_uids: tuple[int, ...] = ()
    worker_uids: tuple[int, ...] = ()
    cache_max_bytes: int = Field(default=268_435_456, ge=1, le=2**40)
    audit_path: Path = Path("/var/log/danube/keyd-audit.log")

    @field_validator("socket_dir")
    @classmethod
    def _socket_path_fits(cls, value: Path) -> Path:
        problem = socket_dir_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("control_uids", "worker_uids")
    @classmethod
    def _uids_are_valid(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for uid in value:
            if not 0 <= uid < 2**32:
                raise ValueError(f"{uid} is not a valid uid")
        return value


class ApiSettings(_Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8480, ge=1, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    # This API's node: jobs claimed through it are reloaded into this node's keyd.
    node: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100)
    worker_timeout_s: int = Field(default=60, ge=1, le=86_400)
    max_log_bytes: int = Field(default=16_777_216, ge=1024, le=2**34)

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class WorkerSettings(_Section):
    # Empty: http(s)://<api.host>:<api.port> from the same configuration.
    api_url: str = ""
    token_file: Path = Path("/etc/danube/worker.token")
    workdir: Path = Path("/var/lib/danube/work")
    kill_grace_s: float = Field(default=10, ge=0, le=3600)
    heartbeat_s: float = Field(default=10, gt=0, le=3600)
    claim_wait_s: int = Field(default=30, ge=0, le=60)


class Settings(_Section):
    """The whole effective configuration of one Danube process."""

    log: LogSettings = LogSettings()
    database: DatabaseSettings = DatabaseSettings()
    keyd: KeydSettings = KeydSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()

    def public_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able data, as `danube config show` prints it,
        with a password in `database.url` shown as `***`."""
        data = self.model_dump(mode="json")
        data["database"]["url"] = self.database.url_for_display()
        return data

    def worker_api_url(self) -> str:
        """The API the workers of this configuration talk to (`worker.api_url`)."""
        if self.worker.api_url:
            return self.worker.api_url.rstrip("/")
        scheme = "https" if self.api.tls_cert else "http"
        host = self.api.host
        if host in ("0.0.0.0", ""):  # noqa: S104 -- reaching a wildcard bind, not binding
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.api.port}"


_SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation  # pyright: ignore[reportAssignmentType] -- every field is a _Section
    for name, info in Settings.model_fields.items()
}


def resolve_config_path(
    cli_path: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[Path, bool]:
    """Which file to read, and whether it was named explicitly (so must exist)."""
    env = os.environ if environ is None else environ
    if cli_path is not None:
        return cli_path, True
    if env.get("DANUBE_CONFIG"):
        return Path(env["DANUBE_CONFIG"]), True
    return DEFAULT_CONFIG_PATH, False


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load the configuration: `path` (else `$DANUBE_CONFIG`, else the default file),
    then the environment's overrides. Raises `ConfigError` naming the source and key."""
    env = os.environ if environ is None else environ
    config_path, explicit = resolve_config_path(path, env)
    data = _read_file(config_path, explicit=explicit)
    _check_names(data, config_path)
    origins: dict[tuple[str, str], str] = {
        (section, str(key)): f"{config_path}: [{section}] {key}"
        for section, values in data.items()
        for key in values
    }
    for variable, (section, key, raw) in _environment_overrides(env).items():
        table = data.setdefault(section, {})
        table[key] = _parse_env_value(section, key, raw)
        origins[(section, key)] = f"environment variable {variable}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins, config_path)) from None


def _read_file(path: Path, *, explicit: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"{path}: config file not found; create it or pass an existing --config"
            ) from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None


def _check_names(data: Mapping[str, Any], path: Path) -> None:
    for section, values in data.items():
        model = _SECTIONS.get(section)
        if model is None:
            raise ConfigError(
                f"{path}: [{section}]: unknown section; known sections are "
                f"{', '.join(sorted(_SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section}: must be a table ([{section}])")
        for key in values:  # pyright: ignore[reportUnknownVariableType] -- TOML table keys
            if key not in model.model_fields:
                raise ConfigError(
                    f"{path}: [{section}] {key}: unknown key; known keys in [{section}] are "
                    f"{', '.join(model.model_fields)}"
                )


def _environment_overrides(env: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
    overrides: dict[str, tuple[str, str, str]] = {}
    for variable, raw in sorted(env.items()):
        if not variable.startswith(ENV_PREFIX) or variable in NON_KEY_VARIABLES:
            continue
        section, sep, key = variable[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or not section or not key:
            raise ConfigError(
                f"environment variable {variable}: not of the form DANUBE_<SECTION>__<KEY> "
                "(for example DANUBE_LOG__LEVEL); unset it"
            )
        model = _SECTIONS.get(section)
        if model is None:
            raise ConfigError(
                f"environment variable {variable}: unknown section {section!r}; known "
                f"sections are {', '.join(sorted(_SECTIONS))}"
            )
        if key not in model.model_fields:
            raise ConfigError(
                f"environment variable {variable}: unknown key {key!r} in [{section}]; "
                f"known keys are {', '.join(model.model_fields)}"
            )
        overrides[variable] = (section, key, raw)
    return overrides


def _parse_env_value(section: str, key: str, raw: str) -> Any:
    """Environment values are strings; lists are given as JSON (`[1001, 1002]`) or as
    comma-separated numbers (`1001,1002`)."""
    annotation = _SECTIONS[section].model_fields[key].annotation
    if annotation == tuple[int, ...]:
        text = raw.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return raw  # validation reports it with its origin
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _describe(exc: ValidationError, origins: Mapping[tuple[str, str], str], path: Path) -> str:
    problems: list[str] = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        section, key = [*loc, "", ""][:2]
        where = origins.get((section, key), f"{path}: [{section}] {key}".rstrip())
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)
