"""A leak hunt on a real stack run by `danube up --workers 1`, every program logging at
trace: canaries planted as a team secret and a (multi-line) pipeline secret, steps that
print them in every form masking knows (DESIGN 13), whole and split across writes a
shipment apart; then neither the stored logs (read through the API) nor any file under
the stack's home (database, WAL, every program's log, keyd's audit log), while it runs
and once it stopped, holds any encoded form of any canary.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.api.test_secret_hygiene import encodings, plant
from tests.e2e.pipelines import log_of, new_pipeline, new_team, run_job
from tests.e2e.test_secret_hygiene import files_of
from tests.support.stack import Stacks

pytestmark = pytest.mark.e2e

# Longer than the worker's shipping interval (at least every second): the two halves of
# a split value leave the worker in different log appends.
SPLIT_PAUSE_S = 1.2

RAW_FORMS = """\
printf 'raw:[%s]\\n' "$TEAM_CANARY"
printf 'raw:[%s]\\n' "$PIPE_CANARY"
printf '%s\\n' "$PIPE_CANARY" | while IFS= read -r line; do printf 'line:[%s]\\n' "$line"; done
"""

ENCODED_FORMS = f"""\
{sys.executable} - <<'EOF'
import base64, json, os
from urllib.parse import quote, quote_plus
for name in ("TEAM_CANARY", "PIPE_CANARY"):
    value = os.environ[name]
    raw = value.encode()
    forms = {{
        "b64": base64.b64encode(raw).decode(),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "quote": quote(value, safe=""),
        "quote_plus": quote_plus(value),
        "json": json.dumps(value)[1:-1],
    }}
    for form, text in forms.items():
        print(f"{{name}} {{form}}:[{{text}}]", flush=True)
EOF
"""

SPLIT_FORMS = f"""\
S=$TEAM_CANARY
printf 'split:[%s' "${{S%????????}}"; sleep {SPLIT_PAUSE_S}; printf '%s]\\n' "${{S#"${{S%????????}}"}}"
{sys.executable} - <<'EOF'
import base64, os, sys, time
for name in ("TEAM_CANARY", "PIPE_CANARY"):
    raw = os.environ[name].encode()
    for form, text in (("raw", raw), ("b64", base64.b64encode(raw)), ("hex", raw.hex().encode())):
        half = len(text) // 2
        sys.stdout.buffer.write(name.encode() + b" split " + form.encode() + b":[" + text[:half])
        sys.stdout.flush()
        time.sleep({SPLIT_PAUSE_S})
        sys.stdout.buffer.write(text[half:] + b"]\\n")
        sys.stdout.flush()
EOF
"""


def forms_of(value: str) -> dict[str, bytes]:
    """Every encoded form of the value and, for a multi-line one, of each of its lines."""
    found = {f"whole {form}": needle for form, needle in encodings(value).items()}
    for number, line in enumerate(value.splitlines()):
        found |= {f"line {number} {form}": needle for form, needle in encodings(line).items()}
    return found


def test_no_form_of_a_secret_is_in_a_stored_log_or_any_file_of_the_stack(stacks: Stacks):
    home, port = stacks.home(log_level="trace")
    stack, up = stacks.start(home, port, "--workers", "1")
    canaries = {
        "TEAM_CANARY": plant("team"),
        "PIPE_CANARY": f"{plant('first line')}\n{plant('second line')}",
    }
    with stack.client() as client:
        team = new_team(client)
        pipeline = new_pipeline(
            client,
            team,
            [
                {"name": "raw", "command": RAW_FORMS},
                {"name": "encoded", "command": ENCODED_FORMS},
                {"name": "split", "command": SPLIT_FORMS},
            ],
        )
        for url in (
            f"/api/v1/teams/{team}/secrets/TEAM_CANARY",
            f"/api/v1/pipelines/{pipeline}/secrets/PIPE_CANARY",
        ):
            name = url.rsplit("/", 1)[1]
            put = client.put(url, json={"value": canaries[name]})
            assert put.status_code == 201, put.text
        job = run_job(client, pipeline)
        assert job["status"] == "succeeded", job
        logs = {step["name"]: log_of(client, job["id"], step["position"]) for step in job["steps"]}
    running = files_of(home)
    assert up.stop() == 0, up.describe()
    stopped = files_of(home)

    # The steps did print every form: each shows up masked where the value was.
    printed = b"".join(logs.values()).decode()
    assert len(re.findall(r"^raw:\[\*\*\*\]$", printed, re.M)) == 2, printed
    assert len(re.findall(r"^line:\[\*\*\*\]$", printed, re.M)) == 2, printed
    for name in canaries:
        for form in ("b64", "b64url", "hex", "HEX", "quote", "quote_plus", "json"):
            # Base64's last characters depend on the padding, not on the value alone:
            # masking leaves them (DESIGN 13).
            assert re.search(
                rf"^{name} {form}:\[\*\*\*[A-Za-z0-9+/_=-]{{0,4}}\]$", printed, re.M
            ), (
                name,
                form,
                printed,
            )
        for form in ("raw", "b64", "hex"):
            assert re.search(
                rf"^{name} split {form}:\[\*\*\*[A-Za-z0-9+/=]{{0,4}}\]$", printed, re.M
            )
    assert re.search(r"^split:\[\*\*\*\]$", printed, re.M), printed

    assert {
        Path("data/danube.db"),
        Path("log/api.log"),
        Path("log/worker-0.log"),
        Path("log/keyd.log"),
        Path("log/keyd-audit.log"),
    } <= set(stopped)
    assert Path("data/danube.db-wal") in running
    searched = [(f"the stored log of step {step}", data) for step, data in logs.items()]
    searched += [(f"{path} (running)", data) for path, data in running.items()]
    searched += [(f"{path} (stopped)", data) for path, data in stopped.items()]
    for name, value in canaries.items():
        for form, needle in forms_of(value).items():
            for where, data in searched:
                assert needle not in data, f"{name} found ({form}) in {where}"
