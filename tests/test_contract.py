"""The gateway keeps the contract /openapi.json states (issue 11, item 6).

The integration test runs schemathesis with every check against a live gateway (the
fallback answers: no worker is ready), with a fixed seed and a bounded number of examples,
and prints schemathesis's own report when anything fails. The unit tests pin the pieces
the report would otherwise find slowly: the non-blank pattern, OPTIONS, X-Deadline-Ms.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentiguard.chaos.ports import free_port
from sentiguard.chaos.service import run_gateway
from sentiguard.errors import SettingsError
from sentiguard.gateway import create_app
from sentiguard.gateway.app import gateway_of
from sentiguard.gateway.openapi import NOT_BLANK
from tests.gateway_helpers import FakeFallback, ListLog, make_settings

SEED = 20261129
MAX_EXAMPLES = 40  # a case per operation and phase: ~4,000 requests, ~15 s on two cores
KEY = "contract-key-31415"


def schemathesis_run(url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """schemathesis's CLI (stable across 4.x, unlike its Python runner) on `url`."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        # One worker: concurrent hypothesis workers hit a CPython 3.11 ast.parse race.
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--continue-on-failure",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
    ]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    # cwd: its .hypothesis/ and report files stay in the test's directory.
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed-without-key"])
def test_schemathesis_finds_nothing_against_a_live_gateway(tmp_path: Path, keyed: bool) -> None:
    # Keyed and asked without the key: the 401s (and their WWW-Authenticate) are checked too.
    overrides = {"gateway.api_key": KEY} if keyed else {}
    with run_gateway(tmp_path / "gateway", **overrides) as url:
        proc = schemathesis_run(url, tmp_path)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis found contract failures:\n{report}"
    assert re.search(r"\d+ generated, \d+ passed", report), report


def test_not_blank_pattern_is_pythons_strip_rule() -> None:
    """The server refuses a text that `str.strip()` empties; the spec's pattern says so."""
    pattern = re.compile(NOT_BLANK)
    disagree = [
        hex(c) for c in range(0x110000) if bool(pattern.search(chr(c))) != bool(chr(c).strip())
    ]
    assert disagree == []
    assert pattern.search(" \u3000好 ") and not pattern.search(" \t\u3000\x1c\x85")


def test_options_answers_204_with_allow_and_no_body_even_when_keyed() -> None:
    settings = make_settings(**{"primary.base_port": free_port(), "gateway.api_key": KEY})
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    for path in ("/analyze", "/status", "/health", "/static/app.js"):
        response = client.options(path)
        assert response.status_code == 204, path
        assert response.data == b"" and "Content-Type" not in response.headers
        allowed = sorted(m.strip() for m in response.headers["Allow"].split(","))
        documented = "/static/{file}" if path.startswith("/static/") else path
        options = spec["paths"][documented]["options"]["responses"]["204"]
        assert ", ".join(allowed) == options["headers"]["Allow"]["description"]
    assert client.options("/nowhere").status_code == 404
    gateway_of(app).close()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("50", 200),  # the floor, gateway.min_deadline_ms
        ("0050", 200),
        ("777", 200),
        ("99999999999999999999999", 200),  # above the configured deadline: capped
        ("49", 400),  # below the floor
        ("0005", 400),
        ("1", 400),
        ("0", 400),
        ("000", 400),
        ("+5", 400),
        ("-5", 400),
        ("5_0", 400),
        ("٥", 400),  # an Arabic-Indic five: int() reads it, the contract says ASCII digits
        ("1.5", 400),
        ("", 400),
    ],
)
def test_deadline_header_is_ascii_digits_above_zero(header: str, status: int) -> None:
    settings = make_settings(**{"primary.base_port": free_port()})
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    headers = {"X-Deadline-Ms": header}
    response = app.test_client().post("/analyze", json={"text": "好"}, headers=headers)
    assert response.status_code == status, response.get_json()
    if status == 400:
        assert response.get_json()["error"]["code"] == "bad_deadline"
    spec = app.test_client().get("/openapi.json").get_json()
    (parameter,) = [
        p for p in spec["paths"]["/analyze"]["post"]["parameters"] if p["name"] == "X-Deadline-Ms"
    ]
    pattern = re.compile(parameter["schema"]["pattern"])  # the spec's
    assert bool(pattern.match(header)) == (status == 200)
    gateway_of(app).close()


def test_deadline_below_the_floor_names_the_floor_and_the_spec_states_the_bounds() -> None:
    overrides = {"gateway.min_deadline_ms": 120, "gateway.deadline_ms": 900}
    settings = make_settings(**{"primary.base_port": free_port(), **overrides})
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    client = app.test_client()
    response = client.post("/analyze", json={"text": "好"}, headers={"X-Deadline-Ms": "119"})
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "X-Deadline-Ms" in message and "120" in message and "min_deadline_ms" in message
    headers = {"X-Deadline-Ms": "120"}
    assert client.post("/analyze", json={"text": "好"}, headers=headers).status_code == 200
    spec = client.get("/openapi.json").get_json()
    (parameter,) = [
        p for p in spec["paths"]["/analyze"]["post"]["parameters"] if p["name"] == "X-Deadline-Ms"
    ]
    schema = parameter["schema"]
    assert (schema["x-minimum"], schema["x-maximum"]) == (120, 900)
    pattern = re.compile(schema["pattern"])
    assert [n for n in range(2000) if bool(pattern.match(str(n))) != (n >= 120)] == []
    gateway_of(app).close()


def test_a_floor_above_the_deadline_is_refused_at_load() -> None:
    with pytest.raises(SettingsError, match="min_deadline_ms"):
        make_settings(**{"gateway.min_deadline_ms": 2000, "gateway.deadline_ms": 1500})


def test_spec_documents_401_only_when_a_key_is_configured() -> None:
    for key, expected in (("", False), (KEY, True)):
        settings = make_settings(**{"primary.base_port": free_port(), "gateway.api_key": key})
        app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
        paths = app.test_client().get("/openapi.json").get_json()["paths"]
        for route in ("/analyze", "/status", "/metrics", "/ops/data"):
            operation = next(op for m, op in paths[route].items() if m != "options")
            assert ("401" in operation["responses"]) is expected, route
            assert bool(operation["security"]) is expected, route
        gateway_of(app).close()
