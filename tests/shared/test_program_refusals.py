"""A program's refusal to start is a JSON log line like every other (DESIGN section 8);
the `danube` command, talking to a person, says it plainly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.isolation import program_environment

BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        env=program_environment(),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("program", ["danube-api", "danube-keyd", "danube-migrate"])
def test_a_refused_config_is_one_json_line_and_exit_2(tmp_path: Path, program: str):
    absent = tmp_path / "absent.toml"
    result = _run(program, "--config", str(absent))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    refusal = json.loads(line)
    assert list(refusal)[:5] == ["timestamp", "level", "logger", "message", "process"]
    assert (refusal["level"], refusal["process"]) == ("error", program)
    assert refusal["message"].startswith("refused to start: ")
    assert str(absent) in refusal["message"]


@pytest.mark.parametrize("command", [["keygen"], ["migrate"], ["config", "check"]])
def test_the_danube_command_refuses_a_config_in_plain_words(tmp_path: Path, command: list[str]):
    absent = tmp_path / "absent.toml"
    result = _run("danube", *command, "--config", str(absent))
    assert result.returncode == 2
    assert result.stderr.startswith(f"danube: config invalid: {absent}"), result.stderr
    assert not result.stderr.lstrip().startswith("{")
