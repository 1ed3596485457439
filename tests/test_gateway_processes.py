"""Several gateway processes on one socket (issue 11, items 3 and 4).

Unit and in-process tests: the socket `up` holds and hands over (SCM_RIGHTS), its shutdown
reaching every holder, the graceful drain (`Connection: close`, refused afterwards), a
listener hung up by another holder starting the drain without ending the serving loop, the
capacity shares, the merged /status and /metrics, and the watchdog's reports and drains
reaching every gateway process. Integration (the real `up`, 2 gateway processes): /status
and /metrics answer for both, a SIGKILL of one under 16 clients refuses no connection and
loses only what was in flight on it, and `sentiguard down` under 8 clients resets nothing.
Tests count; they never hold this shared machine to an absolute time.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from waitress import wasyncore

from sentiguard import settings as settings_mod
from sentiguard.chaos import gateways as chaos_gw
from sentiguard.chaos.client import answered_total, wait_until
from sentiguard.chaos.ports import free_port
from sentiguard.chaos.service import ServiceHandle, start_service
from sentiguard.gateway.app import create_app, gateway_of
from sentiguard.gateway.graceful import Drain
from sentiguard.gateway.http_server import build_public_server, listener_fault
from sentiguard.gateway.metrics import MULTIPROC_ENV, Metrics
from sentiguard.gateway.siblings import capacity_share, merge
from sentiguard.runtime import control, listener
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.paths import RunDir
from tests.gateway_helpers import FakeFallback, ListLog


def make_settings(tmp_path: Path, **overrides: Any) -> settings_mod.Settings:
    values = {
        "service.run_dir": str(tmp_path / "run"),
        "service.log_dir": str(tmp_path / "logs"),
        "gateway.port": free_port(),
        "primary.base_port": free_port(),
        "primary.workers": 1,
        **overrides,
    }
    settings = settings_mod.load(None, environ={}, overrides=values)
    RunDir(settings).root.mkdir(parents=True, exist_ok=True)
    return settings


def connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.connect()
    return conn


def get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response


# --- capacity shares and the merged /status ---------------------------------------------


def test_capacity_shares_add_up_to_the_ceiling() -> None:
    for ceiling in range(1, 20):
        for processes in range(1, 6):
            shares = [capacity_share(ceiling, processes, i) for i in range(processes)]
            assert min(shares) >= 1
            assert sum(shares) == max(ceiling, processes)  # more only when each needs one
            assert max(shares) - min(shares) <= 1


def test_merge_sums_counts_and_lists_every_gateway() -> None:
    own: dict[str, Any] = {
        "workers": [{"name": "primary_0", "in_flight": 2, "ready": True, "breaker": "closed"}],
        "fallback": {"capacity": 64, "in_use": 1, "shed_total": 3, "model_version": "v"},
        "watchdog": {"pid": 9, "stale": False},
        "gateways": [{"name": "gateway_0", "index": 0, "pid": 10, "reachable": True}],
    }
    sibling = {
        "gateway": {"name": "gateway_1", "index": 1, "pid": 11, "reachable": True},
        "workers": {"primary_0": {"in_flight": 3}},
        "fallback": {"capacity": 64, "in_use": 4, "shed_total": 1, "model_version": "v"},
    }
    away = {"gateway": {"name": "gateway_2", "index": 2, "pid": None, "reachable": False}}
    merged = merge(own, [away, sibling])
    assert merged["workers"][0]["in_flight"] == 5
    assert merged["workers"][0]["ready"] is True  # no process that answered says otherwise
    assert merged["fallback"] == {
        "capacity": 128,
        "in_use": 5,
        "shed_total": 4,
        "model_version": "v",
    }
    assert [(g["name"], g["pid"]) for g in merged["gateways"]] == [
        ("gateway_0", 10),
        ("gateway_1", 11),
        ("gateway_2", None),
    ]
    assert own["workers"][0]["in_flight"] == 2  # the body given is left alone


def test_merge_says_ready_only_when_every_answering_gateway_routes_to_the_worker() -> None:
    own: dict[str, Any] = {
        "workers": [{"name": "primary_0", "in_flight": 0, "ready": True, "reason": None}],
        "gateways": [{"name": "gateway_0", "index": 0, "pid": 10, "reachable": True}],
    }
    late = {
        "gateway": {"name": "gateway_1", "index": 1, "pid": 11, "reachable": True},
        "workers": {"primary_0": {"ready": False, "in_flight": 0}},
    }
    caught_up = {**late, "workers": {"primary_0": {"ready": True, "in_flight": 0}}}
    away = {"gateway": {"name": "gateway_2", "index": 2, "pid": None, "reachable": False}}
    worker = merge(own, [late, away])["workers"][0]
    assert (worker["ready"], worker["reason"]) == (False, "not ready in gateway_1 yet")
    assert merge(own, [caught_up, away])["workers"][0]["ready"] is True


# --- the socket `up` holds ----------------------------------------------------------------


def test_the_handoff_shares_one_socket_whose_shutdown_reaches_every_holder(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    assert listener.receive(settings) is None  # no `up`: a gateway binds its own
    held = listener.bind_public(settings)
    log = ListLog()
    handoff = listener.Handoff(settings, held, log)
    handoff.start()
    try:
        assert RunDir(settings).listener_socket.stat().st_mode & 0o077 == 0
        got = listener.receive(settings)
        assert got is not None and len(got) == len(held)
        mine = got[0]
        assert mine.getsockname() == held[0].getsockname() and mine.fileno() != held[0].fileno()
        with socket.create_connection(("127.0.0.1", settings.gateway.port), timeout=2):
            accepted, _ = mine.accept()  # one kernel socket: a connect reaches the receiver
            accepted.close()
        # Linux: a shutdown by one holder stops the listener for all of them.
        listener.close_everywhere(held)
        assert not listener.is_listening(mine)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", settings.gateway.port), timeout=2)
        # The handoff thread counts after send_fds returns, which can be after we received.
        wait_until(lambda: handoff.handed == 1, 5, "the handoff to be counted")
        assert not log.lines
    finally:
        handoff.stop()
        for sock in held + (got or []):
            sock.close()
    assert not RunDir(settings).listener_socket.exists()


class Served:
    """The real public server of one gateway process, in this process, on `sockets`."""

    def __init__(self, settings: settings_mod.Settings, sockets: list[socket.socket]) -> None:
        self.log = ListLog()
        app = create_app(settings, fallback=FakeFallback(), log=self.log, start_poller=False)
        self.gateway = gateway_of(app)
        self.server = build_public_server(app, settings, sockets=sockets)
        self.drain = Drain(self.server, self.log)
        self.drain.install()
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.task_dispatcher.shutdown()
        wasyncore.close_all(self.server._map)
        self.gateway.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, list[socket.socket]]]:
    settings = make_settings(tmp_path, **{"gateway.threads": 100})
    held = listener.bind_public(settings)
    # As in a gateway process: a descriptor of its own on `up`'s socket.
    theirs = [socket.socket(fileno=os.dup(s.fileno())) for s in held]
    served = Served(settings, theirs)
    try:
        yield served, held
    finally:
        served.close()
        for s in held:
            s.close()


def test_the_drain_answers_connection_close_then_refuses(
    served: tuple[Served, list[socket.socket]],
) -> None:
    server, _ = served
    port = server.gateway.settings.gateway.port
    conn = connect(port)
    assert get(conn, "/health").getheader("Connection") is None  # kept alive
    idle = connect(port)
    get(idle, "/health")
    server.drain.begin("test", close_listener=True)
    answer = get(conn, "/health")  # the request on a kept-alive connection is answered
    assert answer.status == 200 and answer.getheader("Connection") == "close"
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    # The idle connection is closed after the grace; nothing is left open.
    assert server.drain.wait(time.monotonic() + 10, lambda: 0) == 0
    assert server.log.events("gateway_draining")[0]["reason"] == "test"
    conn.close()
    idle.close()


def test_a_listener_shut_down_elsewhere_starts_the_drain_and_keeps_serving(
    served: tuple[Served, list[socket.socket]],
) -> None:
    """`up` shutting the socket down must not end the process's serving loop (waitress
    would close its wake-up pipe with the listener): it means the service is stopping."""
    server, held = served
    port = server.gateway.settings.gateway.port
    conn = connect(port)
    get(conn, "/health")
    listener.close_everywhere(held)  # as `up` does, from another descriptor
    wait_until(server.drain.listener_closed.is_set, 10, "the listener's hang-up noticed")
    assert listener_fault(server.server) is None  # not a fault: the process drains
    assert server.thread.is_alive()
    assert get(conn, "/health").status == 200  # what was accepted is still answered
    conn.close()


# --- the watchdog's side: every gateway process gets every report and drain -------------


class FakeControl(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One gateway process's control socket: answers in_flight for every worker PUT."""

    daemon_threads = True

    def __init__(self, path: Path, in_flight: int) -> None:
        self.in_flight = in_flight
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append((self.path, body))
                name = self.path.rsplit("/", 1)[-1]
                answer = {"name": name, "in_flight": outer.in_flight, "drain": body.get("drain")}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def address_string(self) -> str:
                return "unix"

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(str(path), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def test_reports_and_drains_reach_every_gateway_process(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"gateway.processes": 3})
    control.new_secret(settings)
    run = RunDir(settings)
    fakes = [FakeControl(run.control_socket_for(i), in_flight=i + 1) for i in (0, 1)]
    logged: list[tuple[str, dict[str, Any]]] = []
    link = GatewayLink(
        settings, lambda event, **f: logged.append((event, f)), timeout_s=0.5, start_grace_s=0
    )
    try:
        # gateway_2 is away: the sum is over the two that answer, and it is named once.
        assert link.put_worker("primary_0", {"drain": True, "state": "recycling"}) == 3
        assert link.put_worker("primary_0", {"drain": True, "state": "recycling"}) == 3
        assert link.put_watchdog({"pid": 1}) is True
        for fake in fakes:
            paths = [path for path, _ in fake.bodies]
            assert paths == [*["/control/workers/primary_0"] * 2, "/control/watchdog"]
            assert fake.bodies[0][1]["drain"] is True
        assert [(e, f["gateway"]) for e, f in logged] == [("gateway_unreachable", "gateway_2")]
        for fake in fakes:
            fake.in_flight = 0
        in_flight, _ = link.drain_and_wait(
            "primary_0", lambda: {"drain": True}, 5.0, threading.Event()
        )
        assert in_flight == 0
    finally:
        for fake in fakes:
            fake.close()
    assert link.put_worker("primary_0", {"drain": False}) is None  # none answers


# --- the rendered config and /metrics ------------------------------------------------------


def test_conf_runs_gateway_processes_that_drain_within_stopwaitsecs(tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    for graceful in (1, 4, 10, 30):
        settings = make_settings(
            tmp_path, **{"gateway.processes": 3, "service.graceful_timeout_s": graceful}
        )
        RunDir(settings).logs.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "supervisord.conf"
        path.write_text(sv.render_supervisord_conf(settings))
        options = ServerOptions()
        options.realize(args=["-c", str(path)])
        groups = {g.name: g for g in options.process_group_configs}
        gateways = groups["gateway"].process_configs
        assert [p.name for p in gateways] == ["gateway_0", "gateway_1", "gateway_2"]
        for i, p in enumerate(gateways):
            assert p.command == f"{sys.executable} -m sentiguard.gateway --index {i}"
            assert p.environment[MULTIPROC_ENV] == str(RunDir(settings).metrics_dir)
            assert p.stdout_logfile == str(RunDir(settings).log(f"gateway_{i}"))
            assert sv.gateway_drain_s(settings) < p.stopwaitsecs
            assert p.startretries == sv.START_RETRIES
        assert MULTIPROC_ENV not in groups["primary"].process_configs[0].environment


COUNT_SCRIPT = """
import sys
from sentiguard.gateway.metrics import Metrics
metrics = Metrics(None)  # the state is read only at scrape time
for _ in range(int(sys.argv[1])):
    metrics.answered("fallback", "primary_down", 1, 0.01)
metrics.shed.inc()
"""


def test_metrics_add_up_every_gateway_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {**os.environ, MULTIPROC_ENV: str(shared)}
    for count in (3, 4):  # two gateway processes, each counting in its own files
        subprocess.run(
            [sys.executable, "-c", COUNT_SCRIPT, str(count)], env=env, check=True, timeout=120
        )
    monkeypatch.setenv(MULTIPROC_ENV, str(shared))
    settings = make_settings(tmp_path)
    app = create_app(settings, fallback=FakeFallback(), log=ListLog(), start_poller=False)
    gateway = gateway_of(app)
    try:
        metrics = Metrics(gateway.state)
        assert metrics.answered_counts() == {("fallback", "primary_down"): 7.0}
        assert metrics.shed_count() == 2.0
        text = metrics.render().decode()
        assert 'sentiguard_requests_total{model="fallback",reason="primary_down"} 7.0' in text
        assert 'sentiguard_request_latency_seconds_count{model="fallback"} 7.0' in text
        assert "sentiguard_worker_in_flight" in text and "sentiguard_fallback_capacity" in text
    finally:
        gateway.close()


# --- the real service: two gateway processes on the socket `up` holds ---------------------


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    """`up` with 1 worker and 2 gateway processes; the fallback answers while the worker
    loads, which is all these tests need. The last test stops it."""
    svc = start_service(
        tmp_path_factory.mktemp("gateways"),
        workers=1,
        faults=False,
        overrides={"gateway.processes": 2},
        wait=False,
    )
    try:
        wait_until(
            lambda: [g.get("reachable") for g in svc.status()["gateways"]] == [True, True],
            120,
            "both gateway processes serving",
            0.2,
        )
        yield svc
    finally:
        svc.stop()


def local_views(svc: ServiceHandle) -> list[dict[str, Any]]:
    views = []
    for i in range(svc.settings.gateway.processes):
        client = control.ControlClient(svc.settings, timeout=2)
        client.path = RunDir(svc.settings).control_socket_for(i)
        status, body = client.request("GET", "/control/local")
        assert status == 200
        views.append(body)
    return views


@pytest.mark.integration
@pytest.mark.slow
def test_status_metrics_reports_and_drains_cover_every_gateway_process(
    two_gateways: ServiceHandle,
) -> None:
    svc = two_gateways
    pids = svc.gateway_pids()
    status = svc.status()
    assert {g["name"]: g["pid"] for g in status["gateways"]} == pids
    assert all(set(g) == set(status["gateways"][0]) for g in status["gateways"])
    assert all(g["restarts"] == 0 and g["uptime_s"] >= 0 for g in status["gateways"])
    # Each process routes with its share: together the configured ceiling per worker.
    views = local_views(svc)
    shares = [v["max_in_flight_per_worker"] for v in views]
    assert sum(shares) == svc.settings.gateway.max_in_flight_per_worker
    # The watchdog reports to every process.
    wait_until(
        lambda: all(not v["watchdog"]["stale"] for v in local_views(svc)),
        60,
        "a fresh watchdog report in every gateway process",
    )
    # A drain reaches every process (as the watchdog and `sentiguard reload` send it).
    link = GatewayLink(svc.settings, lambda event, **f: None)
    answers = link.request("PUT", "/control/workers/primary_0", {"drain": True})
    assert [a["drain"] for a in answers] == [True, True]
    link.request("PUT", "/control/workers/primary_0", {"drain": False})
    # /metrics counts the answers of both processes, whichever process is scraped.
    before = answered_total(svc.port)
    for _ in range(40):  # a new connection each: both processes accept some
        assert svc.analyze("服务很好").status == 200
    assert [answered_total(svc.port) - before for _ in range(4)] == [40.0] * 4
    for i in range(2):
        log = RunDir(svc.settings).log(f"gateway_{i}").read_text()
        assert '"path":"/analyze"' in log, f"gateway_{i} answered nothing"


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_of_a_gateway_process_refuses_no_connection(two_gateways: ServiceHandle) -> None:
    result = chaos_gw.gateway_kill(two_gateways, clients=16, after_s=3.0)
    extra = result.extra
    print(json.dumps(chaos_gw.summary_line(result)))
    assert extra["refused"] == 0, extra["outcomes_after_kill"]
    # Lost: at most what was in flight on the killed process, one per connection it held.
    assert extra["failed"] <= extra["open_connections_at_kill"], extra
    assert set(extra["outcomes_after_kill"]) <= {"200", "reset"}, extra["outcomes_after_kill"]
    gateways = {g["name"]: g for g in extra["gateways"]}
    assert gateways[extra["killed"]]["restarts"] == 1
    assert gateways[extra["killed"]]["pid"] != extra["killed_pid"]


@pytest.mark.integration
@pytest.mark.slow
def test_down_under_load_resets_no_request(two_gateways: ServiceHandle) -> None:
    """Runs last: it stops the module's service."""
    svc = two_gateways
    result = chaos_gw.stop_under_load(svc, clients=8)
    extra = result.extra
    print(json.dumps(chaos_gw.summary_line(result)))
    assert extra["down_exit"] == 0 and extra["up_exit"] == 0, extra["down_output"]
    assert extra["resets"] == 0, extra["outcomes_after_down"]
    assert extra["failed"] == 0, extra["outcomes_after_down"]  # no timeout, nothing else
    for i in range(2):
        lines = RunDir(svc.settings).log(f"gateway_{i}").read_text().splitlines()
        stopped = [json.loads(x) for x in lines if '"event":"gateway_stopped"' in x]
        assert stopped and stopped[-1]["in_flight_left"] == 0, lines[-5:]
        assert any('"event":"gateway_draining"' in x for x in lines)
    supervisord_log = RunDir(svc.settings).log("supervisord").read_text()
    assert "killing 'gateway_" not in supervisord_log  # each drained within stopwaitsecs
