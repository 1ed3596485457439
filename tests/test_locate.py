"""`runtime.locate`: the record `up` leaves in the run directory, and which service a
command talks to (--url > a set --port/env/config value > a live record > the defaults)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sentiguard import settings as settings_mod
from sentiguard.analyze import analyze_command
from sentiguard.chaos.ports import free_port
from sentiguard.doctor.report import Status
from sentiguard.doctor.service import check_service
from sentiguard.errors import SettingsError
from sentiguard.labels import label_fields
from sentiguard.runtime import locate
from sentiguard.runtime import status as status_cmd
from sentiguard.runtime.paths import RunDir

DEFAULT_PORT = settings_mod.BY_NAME["gateway.port"].default


def dirs(tmp_path: Path) -> dict[str, str]:
    return {"service.run_dir": str(tmp_path / "run"), "service.log_dir": str(tmp_path / "logs")}


def plain(tmp_path: Path, environ: dict[str, str] | None = None) -> settings_mod.Settings:
    """Settings as a command sees them with no --port: the port is the built-in default."""
    return settings_mod.load(None, environ=environ or {}, overrides=dirs(tmp_path))


def record_up(tmp_path: Path, port: int, host: str = "127.0.0.1") -> locate.ServiceRecord:
    """Record this test process as an `up` serving on `port` (its pid is alive)."""
    values = {**dirs(tmp_path), "gateway.port": port, "gateway.host": host}
    served = settings_mod.load(None, environ={}, overrides=values, check=False)
    RunDir(served).root.mkdir(parents=True, exist_ok=True)
    return locate.write_record(served, supervisord_pid=None)


class FakeGateway:
    """/status, /health, /ready and POST /analyze like the gateway, on a free port."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.seen.append(self.path)
                bodies: dict[str, Any] = {
                    "/status": {
                        "workers": [{"name": "primary_0", "ready": True, "model_version": "p1"}],
                        "fallback": {"model_version": "f1"},
                        "watchdog": {"pid": os.getpid()},
                        "gateways": [{"pid": 42, "uptime_s": 75.0, "restarts": 1}],
                    },
                    "/health": {"status": "ok", "reasons": []},
                    "/ready": {"ready": True, "primary_ready": True},
                }
                self.reply(200 if self.path in bodies else 404, bodies.get(self.path, {}))

            def do_POST(self) -> None:
                fake.seen.append(self.path)
                self.rfile.read(int(self.headers["Content-Length"]))
                answer = {**label_fields(0.9), "model": "primary", "model_version": "p1"}
                self.reply(200, {**answer, "degraded": False, "reason": None})

            def reply(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


# --- the record -------------------------------------------------------------------------


def test_record_round_trips_and_is_removed_only_by_its_own_up(tmp_path: Path) -> None:
    record = record_up(tmp_path, 5390)
    path = RunDir(plain(tmp_path)).service_record
    doc = json.loads(path.read_text())
    assert {"host", "port", "pid", "started", "started_at", "url"} <= set(doc)
    assert locate.read_record(path) == record and record.alive()
    # Another process's record (e.g. a newer `up`) is not ours to remove.
    path.write_text(json.dumps({**doc, "pid": doc["pid"] + 1}))
    locate.remove_record(plain(tmp_path))
    assert path.exists()
    path.write_text(json.dumps(doc))
    locate.remove_record(plain(tmp_path))
    assert not path.exists()


def test_no_record_means_the_defaults_and_the_line_says_so(tmp_path: Path) -> None:
    target = locate.locate(plain(tmp_path))
    assert target.settings.gateway.port == DEFAULT_PORT and target.record is None
    assert "built-in default; no running service recorded in" in target.line()


def test_a_live_record_beats_the_built_in_defaults(tmp_path: Path) -> None:
    record = record_up(tmp_path, 5390)
    target = locate.locate(plain(tmp_path))
    assert target.settings.gateway.port == 5390 and target.source == locate.RECORD
    line = target.line()
    assert line.startswith("sentiguard: service at http://127.0.0.1:5390 (up pid ")
    assert f"up pid {record.pid}, since {record.since()}, from " in line
    assert line.endswith("service.json)")


def test_a_wildcard_bind_is_reached_on_loopback(tmp_path: Path) -> None:
    record_up(tmp_path, 5390, host="0.0.0.0")
    assert locate.locate(plain(tmp_path)).url == "http://127.0.0.1:5390"


def test_a_stale_record_is_ignored_and_said_so(tmp_path: Path) -> None:
    record_up(tmp_path, 5390)
    path = RunDir(plain(tmp_path)).service_record
    doc = json.loads(path.read_text())
    # The same pid with another start time: the `up` that wrote it is gone, the pid reused.
    path.write_text(json.dumps({**doc, "started": doc["started"] - 3600}))
    target = locate.locate(plain(tmp_path))
    assert target.settings.gateway.port == DEFAULT_PORT and target.record is None
    assert "is gone" in target.line() and str(doc["pid"]) in target.line()


def test_a_set_port_beats_the_record_with_a_note(tmp_path: Path) -> None:
    record_up(tmp_path, 5390)
    env = {"SENTIGUARD_GATEWAY_PORT": "5391"}
    target = locate.locate(plain(tmp_path, env))
    assert target.settings.gateway.port == 5391
    assert "from environment SENTIGUARD_GATEWAY_PORT" in target.line()
    assert "records another service at http://127.0.0.1:5390/" in target.line()
    flag = settings_mod.load(None, environ={}, overrides={**dirs(tmp_path), "gateway.port": 5392})
    assert locate.locate(flag).settings.gateway.port == 5392
    config = tmp_path / "sentiguard.toml"
    config.write_text("[gateway]\nport = 5393\n")
    from_file = settings_mod.load(config, environ={}, overrides=dirs(tmp_path))
    target = locate.locate(from_file)
    assert target.settings.gateway.port == 5393 and str(config) in target.line()


def test_url_beats_everything_and_bad_urls_say_how(tmp_path: Path) -> None:
    record_up(tmp_path, 5390)
    env = {"SENTIGUARD_GATEWAY_PORT": "5391"}
    target = locate.locate(plain(tmp_path, env), url="http://localhost:6000")
    assert target.url == "http://localhost:6000" and "from --url" in target.line()
    assert locate.locate(plain(tmp_path), url="127.0.0.1:6001").settings.gateway.port == 6001
    for bad in ("https://x:1", "http://x:1/api", "http://x:port"):
        with pytest.raises(SettingsError, match="--url http://HOST:PORT"):
            locate.locate(plain(tmp_path), url=bad)


# --- the commands use it ------------------------------------------------------------------


def test_status_finds_the_recorded_service(
    tmp_path: Path, gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    record_up(tmp_path, gateway.port)
    assert status_cmd.status(plain(tmp_path), as_json=True) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["gateways"][0]["pid"] == 42
    assert f"service at http://127.0.0.1:{gateway.port} (up pid {os.getpid()}" in err
    assert status_cmd.status(plain(tmp_path)) == 0
    text = capsys.readouterr().out
    assert "processes" in text and "1m15s" in text  # the gateway row: pid 42, up 75 s
    watchdog = next(line for line in text.splitlines() if line.strip().startswith("watchdog "))
    assert str(os.getpid()) in watchdog


def test_analyze_finds_the_recorded_service(
    tmp_path: Path, gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    record_up(tmp_path, gateway.port)
    code = analyze_command(
        plain(tmp_path), text="很好", file=None, out=None, local=False, as_json=True
    )
    assert code == 0 and gateway.seen == ["/analyze"]
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] == "positive"
    assert f"service at http://127.0.0.1:{gateway.port}" in err


def test_doctor_checks_the_recorded_service(tmp_path: Path, gateway: FakeGateway) -> None:
    record_up(tmp_path, gateway.port)
    result = check_service(locate.locate(plain(tmp_path)))
    assert result.status is Status.PASS, result.line()
    assert f"127.0.0.1:{gateway.port} (up pid {os.getpid()}" in result.detail
    assert "health ok, ready, 1/1 primary workers ready; models primary p1, fallback f1" in (
        result.detail
    )


def test_doctor_fails_a_recorded_service_that_does_not_answer(tmp_path: Path) -> None:
    record_up(tmp_path, free_port())  # nothing listens there
    result = check_service(locate.locate(plain(tmp_path)))
    assert result.status is Status.FAIL and "gateway.log" in result.fix
    # Nothing recorded and nothing answers: not running, which is fine for doctor.
    idle = locate.locate(plain(tmp_path / "none"), url=f"http://127.0.0.1:{free_port()}")
    result = check_service(idle)
    assert result.status is Status.PASS and "not running" in result.detail
