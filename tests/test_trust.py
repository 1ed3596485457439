"""Hostile local users and clients: the per-up secret and the /ready proof (unit), the
reload lock taken atomically, CSV cells a spreadsheet would run, and the gateway's
security headers. The worker side runs in real processes in test_primary_server.py and
test_primary_faults.py; the gateway's poller against fakes in test_gateway_routing.py."""

from __future__ import annotations

import csv
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sentiguard import settings as settings_mod
from sentiguard.analyze import RESULT_COLUMNS, write_results
from sentiguard.gateway.app import SECURITY_HEADERS
from sentiguard.runtime import control, trust
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.reload import (
    ReloadLock,
    read_reload_lock,
    reload,
    take_reload_lock,
    write_reload_lock,
)
from tests.gateway_helpers import gateway_with_workers

DEAD_PID = 2**22 + 12345  # above pid_max on usual systems: never a live process


@pytest.fixture
def run_settings(tmp_path: Path) -> settings_mod.Settings:
    return settings_mod.load(None, environ={}, overrides={"service.run_dir": str(tmp_path)})


# --- the secret and the proof -----------------------------------------------------------------


def test_bearer_accepts_exactly_the_secret() -> None:
    assert trust.bearer_ok("Bearer s3cret", "s3cret")
    assert trust.bearer_ok("bearer s3cret", "s3cret")  # the scheme is case-insensitive
    for header in (None, "", "s3cret", "Bearer", "Bearer ", "Bearer s3cre", "Basic s3cret"):
        assert not trust.bearer_ok(header, "s3cret"), header
    assert not trust.bearer_ok("Bearer ", None), "a worker without a secret trusts nobody"
    assert not trust.bearer_ok("Bearer x", "")


def test_proof_binds_secret_nonce_and_worker_name() -> None:
    nonce = trust.new_challenge()
    assert trust.valid_challenge(nonce)
    proof = trust.proof("s", nonce, "primary_0")
    assert trust.proof_ok("s", nonce, "primary_0", proof)
    assert not trust.proof_ok("t", nonce, "primary_0", proof)
    assert not trust.proof_ok("s", trust.new_challenge(), "primary_0", proof)
    assert not trust.proof_ok("s", nonce, "primary_1", proof)
    assert not trust.proof_ok(None, nonce, "primary_0", proof)
    assert not trust.proof_ok("s", nonce, "primary_0", None)
    for bad in (None, "", "short", "x" * 200, "a b" * 8, "abc\r\nX-Evil: 1" * 2):
        assert not trust.valid_challenge(bad), bad


def test_the_secret_is_read_lazily_and_again_on_refresh(
    run_settings: settings_mod.Settings,
) -> None:
    assert trust.load_secret(run_settings) is None  # no file yet
    secret = trust.Secret(run_settings)
    assert secret.value is None and not secret.refresh()
    first = control.new_secret(run_settings)
    assert secret.value == first
    control.new_secret(run_settings)
    assert secret.value == first, "kept once read"
    assert secret.refresh() and secret.value == trust.load_secret(run_settings) != first
    assert not secret.refresh(), "unchanged"
    assert trust.Secret.fixed("x").value == "x"


# --- the reload lock ------------------------------------------------------------------------


def race(settings: settings_mod.Settings, contenders: int) -> list[ReloadLock | None]:
    """`contenders` threads take the lock at the same moment; each one's outcome."""
    start = threading.Barrier(contenders, timeout=10)

    def take(i: int) -> ReloadLock | None:
        start.wait()
        return take_reload_lock(settings, ReloadLock(os.getpid(), f"m{i}"))

    with ThreadPoolExecutor(contenders) as pool:
        return list(pool.map(take, range(contenders)))


def test_of_racing_reloads_exactly_one_takes_the_lock(
    run_settings: settings_mod.Settings,
) -> None:
    path = RunDir(run_settings).reload_lock
    for _round in range(20):
        outcomes = race(run_settings, 8)
        winners = [i for i, o in enumerate(outcomes) if o is None]
        assert len(winners) == 1, outcomes
        held = read_reload_lock(run_settings)
        assert held is not None and held.model == f"m{winners[0]}"
        assert all(o == held for o in outcomes if o is not None), "losers name the holder"
        path.unlink()
    assert [p.name for p in path.parent.iterdir()] == [], "no temporary files left"


def test_a_stale_lock_is_removed_and_exactly_one_racer_takes_it(
    run_settings: settings_mod.Settings,
) -> None:
    for _round in range(10):
        write_reload_lock(run_settings, ReloadLock(pid=DEAD_PID, model="crashed"))
        assert read_reload_lock(run_settings) is None  # stale: ignored by readers
        outcomes = race(run_settings, 6)
        assert outcomes.count(None) == 1, outcomes
        held = read_reload_lock(run_settings)
        assert held is not None and held.pid == os.getpid()
        RunDir(run_settings).reload_lock.unlink()


def test_a_live_lock_is_left_alone_and_reload_refuses(
    run_settings: settings_mod.Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = ReloadLock(pid=os.getpid(), model="v1", worker="primary_0", drain=True)
    assert take_reload_lock(run_settings, mine) is None
    assert take_reload_lock(run_settings, ReloadLock(os.getpid(), "v2")) == mine
    assert reload(run_settings, "v3") == 1
    assert f"pid {os.getpid()}" in capsys.readouterr().out
    assert read_reload_lock(run_settings) == mine, "the refused reload kept its hands off"
    path = RunDir(run_settings).reload_lock
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


# --- CSV cells a spreadsheet would run --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("很好 =1", "很好 =1"),
        ("a-b", "a-b"),
        ("第一行\r第二行", "第一行\r第二行"),  # a bare CR inside stays in its cell
    ],
)
def test_csv_cells_that_start_a_formula_are_neutralised(
    tmp_path: Path, text: str, cell: str
) -> None:
    out = tmp_path / "results.csv"
    row = {"text": text, "label": "positive", "label_zh": "正面", "score": 0.9, "model": "primary"}
    write_results([row | {"degraded": False, "reason": None}], str(out), as_json=False)
    with out.open(encoding="utf-8", newline="") as f:
        header, values = list(csv.reader(f))
    assert tuple(header) == RESULT_COLUMNS
    got = dict(zip(header, values, strict=True))
    assert got["text"] == cell
    assert (got["score"], got["degraded"], got["reason"]) == ("0.9", "false", "")


def test_json_lines_keep_the_text_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    write_results([{"text": "=1+1"}], str(out), as_json=True)
    assert '"text": "=1+1"' in out.read_text(encoding="utf-8")


# --- security headers on every gateway response -----------------------------------------------


def test_every_gateway_response_carries_the_security_headers() -> None:
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
    with gateway_with_workers(1) as (app, _gw, _workers, _fb, _log):
        client = app.test_client()
        responses = {
            "/": client.get("/"),
            "/analyze": client.post("/analyze", json={"text": "很好"}),
            "/analyze 400": client.post("/analyze", data=b"{", content_type="application/json"),
            "/health": client.get("/health"),
            "/ready": client.get("/ready"),
            "404": client.get("/no-such-page"),
            "405": client.delete("/health"),
            "static": client.get("/static/style.css"),
        }
        for name, response in responses.items():
            for header, value in SECURITY_HEADERS.items():
                assert response.headers.get(header) == value, (name, header)
        assert responses["/analyze"].status_code == 200
        assert responses["404"].status_code == 404
        assert responses["static"].status_code == 200
        for response in responses.values():
            response.close()
