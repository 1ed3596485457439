"""`sentiguard up/down/status`: the rendered supervisord config and its credentials, the
refusals, the status table and its JSON errors, and (integration) the real lifecycle:
`down`, SIGTERM to `up`, `status --json`, and a service started with `up --port` that
`status`, `analyze`, `doctor`, `logs` and `supervisorctl` find, with quiet logs."""

from __future__ import annotations

import configparser
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from supervisor.options import ServerOptions

from sentiguard import settings as settings_mod
from sentiguard.chaos.client import wait_until
from sentiguard.chaos.ports import free_port, free_port_block
from sentiguard.chaos.scenarios import wall_ts
from sentiguard.chaos.service import ServiceHandle, service_env, start_service
from sentiguard.errors import ExitCode, SettingsError
from sentiguard.runtime import control, service
from sentiguard.runtime import status as status_cmd
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.paths import RunDir


def make_settings(tmp_path: Path, **overrides: Any) -> settings_mod.Settings:
    values = {
        "service.run_dir": str(tmp_path / "run"),
        "service.log_dir": str(tmp_path / "logs"),
        "gateway.port": free_port(),
        "primary.base_port": free_port(),
        "primary.workers": 1,
        **overrides,
    }
    return settings_mod.load(None, environ={}, overrides=values)


def parse_conf(settings: settings_mod.Settings, tmp_path: Path) -> ServerOptions:
    """Parse the rendered config with supervisord's own parser, as `up` would run it."""
    RunDir(settings).logs.mkdir(parents=True, exist_ok=True)
    RunDir(settings).root.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "supervisord.conf"
    path.write_text(sv.render_supervisord_conf(settings))
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


# --- the rendered config ----------------------------------------------------------------


def test_conf_uses_a_private_unix_socket_never_tcp(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    text = sv.render_supervisord_conf(settings)
    assert "inet_http_server" not in text
    (server,) = parse_conf(settings, tmp_path).server_configs
    assert server["family"] == socket.AF_UNIX
    assert server["file"] == str(tmp_path / "run" / "supervisor.sock")
    assert server["chmod"] == 0o700


def test_conf_programs_match_the_contract(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"primary.workers": 3})
    options = parse_conf(settings, tmp_path)
    groups = {g.name: g for g in options.process_group_configs}
    assert set(groups) == {"gateway", "primary", "watchdog"}
    workers = groups["primary"].process_configs
    assert [p.name for p in workers] == ["primary_0", "primary_1", "primary_2"]
    for i, p in enumerate(workers):
        # The serving process itself, no wrapper shell: this python, -m the module.
        assert p.command == f"{sys.executable} -m sentiguard.primary --index {i}"
        assert p.autorestart is False  # the watchdog owns worker restarts
        assert p.startsecs == 0 and p.startretries == 0
        assert p.stdout_logfile == str(tmp_path / "logs" / f"primary_{i}.log")
    gateways = groups["gateway"].process_configs
    assert [p.name for p in gateways] == ["gateway_0", "gateway_1"]  # gateway.processes
    for i, p in enumerate(gateways):
        assert p.command == f"{sys.executable} -m sentiguard.gateway --index {i}"
        assert p.autorestart is not False
    (p,) = groups["watchdog"].process_configs
    assert p.command == f"{sys.executable} -m sentiguard.watchdog"
    assert p.autorestart is not False
    # The watchdog stops first (it must not restart what shutdown stops), the gateway last.
    assert groups["watchdog"].priority > groups["primary"].priority > groups["gateway"].priority


def test_conf_hands_every_child_the_resolved_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        **{"gateway.api_key": "k,e%y'x", "primary.model": "/models/a b#c", "faults.enabled": True},
    )
    for group in parse_conf(settings, tmp_path).process_group_configs:
        for p in group.process_configs:
            env = p.environment
            assert {k: env[k] for k in settings.as_env()} == settings.as_env()
            # A child loading its settings from that environment agrees with `up`.
            assert settings_mod.load(None, environ=env).as_dict() == settings.as_dict()


def test_conf_refuses_a_value_supervisord_would_mangle(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"gateway.api_key": "abc ;def"})
    with pytest.raises(SettingsError, match=r"gateway|GATEWAY_API_KEY"):
        sv.render_supervisord_conf(settings)


def test_conf_shutdown_fits_the_graceful_timeout(tmp_path: Path) -> None:
    for graceful in (1, 4, 10, 30):
        settings = make_settings(tmp_path, **{"service.graceful_timeout_s": graceful})
        options = parse_conf(settings, tmp_path)
        waits = [g.process_configs[0].stopwaitsecs for g in options.process_group_configs]
        assert all(
            p.stopasgroup and p.killasgroup
            for g in options.process_group_configs
            for p in g.process_configs
        )
        # Groups stop one after another.
        assert sum(waits) < max(graceful, len(waits) + 1)


def test_conf_asks_for_the_per_up_credentials_and_supervisorctl_has_them(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    secret = control.new_secret(settings)
    (server,) = parse_conf(settings, tmp_path).server_configs
    user, password = control.supervisor_credentials(secret)
    assert server["username"] == user and server["password"].startswith("{SHA}")
    assert secret not in sv.render_supervisord_conf(settings)  # a derived password only
    ctl = configparser.RawConfigParser()
    ctl.read_string(sv.render_supervisord_conf(settings))
    assert ctl["supervisorctl"]["username"] == user
    assert ctl["supervisorctl"]["password"] == password
    # A new `up` (a new secret) means new credentials.
    control.new_secret(settings)
    assert control.supervisor_credentials(control.read_secret(settings)) != (user, password)


def test_restarts_are_counted_since_supervisord_last_started(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    log = RunDir(settings).log("supervisord")
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-11-29 10:00:00,000 INFO supervisord started with pid 10\n"
        "2026-11-29 10:00:01,000 INFO spawned: 'gateway' with pid 11\n"
        "2026-11-29 10:00:05,000 INFO spawned: 'gateway' with pid 12\n"
        "2026-11-29 11:00:00,000 INFO supervisord started with pid 20\n"
        "2026-11-29 11:00:01,000 INFO spawned: 'gateway' with pid 21\n"
        "2026-11-29 11:00:01,000 INFO spawned: 'watchdog' with pid 22\n"
        "2026-11-29 11:00:09,000 INFO exited: watchdog (exit status 1; not expected)\n"
        "2026-11-29 11:00:10,000 INFO spawned: 'watchdog' with pid 23\n"
    )
    assert sv.restarts(settings) == {"gateway": 0, "watchdog": 1}
    assert sv.restarts(make_settings(tmp_path / "none")) == {}


def test_real_supervisord_is_quiet_and_refuses_other_credentials(tmp_path: Path) -> None:
    """No CRIT line; `supervisorctl -c` and our client get in; a stale secret does not."""
    settings = make_settings(tmp_path)
    control.new_secret(settings)
    text = sv.render_supervisord_conf(settings).replace("autostart = true", "autostart = false")
    RunDir(settings).logs.mkdir(parents=True, exist_ok=True)
    conf = RunDir(settings).supervisord_conf
    conf.write_text(text)
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bin_dir / "supervisord"), "-c", str(conf)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            try:
                return bool(sv.rpc(settings, timeout=1.0).supervisor.getState())
            except OSError:
                return False

        wait_until(answers, 20, "supervisord to answer over its socket")
        ctl = subprocess.run(
            [str(bin_dir / "supervisorctl"), "-c", str(conf), "status"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "gateway" in ctl.stdout and "STOPPED" in ctl.stdout, ctl.stdout + ctl.stderr
        assert "authentication" not in ctl.stdout.lower()
        control.new_secret(settings)  # as if another `up` had written the run directory
        with pytest.raises(PermissionError, match="another `sentiguard up`"):
            sv.rpc(settings, timeout=2.0).supervisor.getState()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    log = RunDir(settings).log("supervisord").read_text()
    assert "CRIT" not in log and b"CRIT" not in out, log


def test_a_gateway_still_starting_is_not_an_outage(tmp_path: Path) -> None:
    """The watchdog starts with the gateway: no control socket yet is not `unreachable`,
    until the start grace passes; once reached, losing it is logged at once."""
    settings = make_settings(tmp_path)
    control.new_secret(settings)  # `up` writes it before anything starts
    logged: list[str] = []
    now = [0.0]
    link = GatewayLink(
        settings,
        lambda event, **fields: logged.append(event),
        timeout_s=0.2,
        start_grace_s=30.0,
        clock=lambda: now[0],
    )
    assert link.put_watchdog({"pid": 1}) is False  # no control_I.sock there yet
    now[0] = 29.0
    assert link.put_watchdog({"pid": 1}) is False
    assert logged == []
    now[0] = 31.0  # a gateway that never came up within the grace is an outage
    link.put_watchdog({"pid": 1})
    link.put_watchdog({"pid": 1})
    # Once per gateway process.
    assert logged == ["gateway_unreachable"] * settings.gateway.processes


def test_a_missing_secret_is_an_outage_at_once(tmp_path: Path) -> None:
    logged: list[str] = []
    settings = make_settings(tmp_path, **{"gateway.processes": 1})
    link = GatewayLink(settings, lambda event, **f: logged.append(event))
    link.put_watchdog({"pid": 1})
    assert logged == ["gateway_unreachable"]


# --- refusals -----------------------------------------------------------------------------


def test_up_refuses_a_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(tmp_path, **{"gateway.port": port})
        assert service.up(settings) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert f"port {port}" in err and "--port" in err
    assert not RunDir(settings).supervisord_conf.exists()  # refused before writing anything


def test_up_refuses_a_taken_worker_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(tmp_path, **{"primary.base_port": taken.getsockname()[1]})
        assert service.up(settings) == ExitCode.ERROR
    assert "SENTIGUARD_PRIMARY_BASE_PORT" in capsys.readouterr().err


def test_up_refuses_a_live_instance_and_clears_a_stale_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    path = RunDir(settings).supervisor_socket
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(service.ServiceError, match="sentiguard down"):
            service.preflight(settings)
    # The listener is gone; the file is left behind as after a SIGKILL.
    assert path.exists()
    service.preflight(settings)
    assert not path.exists()


def test_status_and_down_say_how_to_start_when_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    assert status_cmd.status(settings) != 0
    assert "sentiguard up" in capsys.readouterr().err
    assert service.down(settings) != 0
    assert "sentiguard up" in capsys.readouterr().err


def test_status_json_failure_is_one_json_error_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    assert status_cmd.status(settings, as_json=True) == ExitCode.ERROR
    out, err = capsys.readouterr()
    error = json.loads(out)["error"]  # stdout holds only this object
    assert error["code"] == "not_running" and "sentiguard up" in error["message"]
    assert error["service"]["url"] == f"http://127.0.0.1:{settings.gateway.port}"
    assert error["service"]["source"] == "command line"
    assert "sentiguard up" in err and "sentiguard: service at" in err


# --- status rendering ---------------------------------------------------------------------

STATUS = {
    "workers": [
        {
            "name": "primary_0",
            "pid": 101,
            "port": 5101,
            "state": "ready",
            "ready": True,
            "rss_mb": 512.3,
            "uss_mb": 400.0,
            "restarts": {"memory": 1, "hang": 2, "crash": 0},
            "breaker": "closed",
            "in_flight": 3,
        },
        {
            "name": "primary_1",
            "pid": None,
            "port": 5102,
            "state": "parked",
            "ready": False,
            "rss_mb": None,
            "uss_mb": None,
            "restarts": {},
            "breaker": "open",
            "in_flight": 0,
        },
    ],
    "fallback": {"in_flight": 2, "capacity": 64, "answered": 17},
    "watchdog": {"pid": 99, "stale": False},
}


def test_status_table_shows_workers_fallback_and_decisions(tmp_path: Path) -> None:
    log = tmp_path / "watchdog.jsonl"
    lines = [
        json.dumps(
            {
                "ts": f"t{i}",
                "event": "recycle",
                "worker": "primary_0",
                "reason": "memory",
                "uss_mb": 1300 + i,
                "action": "restart",
            }
        )
        for i in range(8)
    ]
    log.write_text("\n".join([*lines, "not json"]) + "\n")
    decisions = status_cmd.last_decisions(log)
    assert [d["ts"] for d in decisions] == ["t3", "t4", "t5", "t6", "t7"]
    processes = [
        {"name": "gateway", "pid": 98, "uptime_s": 3725.0, "restarts": 0},
        {"name": "watchdog", "pid": 99, "uptime_s": 42.0, "restarts": 2},
    ]
    text = status_cmd.render_status(STATUS, decisions, processes)
    assert "primary_0" in text and "101" in text and "memory=1,hang=2" in text
    assert any(line.split() == ["gateway", "98", "1h02m", "0"] for line in text.splitlines())
    assert any(line.split() == ["watchdog", "99", "42s", "2"] for line in text.splitlines())
    assert "crash=0" not in text  # only the causes that happened
    assert "parked" in text and "open" in text
    assert "capacity=64" in text and "stale=no" in text
    assert "t7 recycle primary_0 memory restart uss_mb=1307" in text


def test_status_shows_the_programs_up_keeps_and_their_problems() -> None:
    report = {
        "age_s": 0.4,
        "stale": False,
        "programs": [
            {
                "name": "gateway_0",
                "state": "RUNNING",
                "starts_in_window": 1,
                "crash_loop": False,
                "restarts_by_up": 0,
                "next_restart_in_s": None,
            },
            {
                "name": "gateway_1",
                "state": "FATAL",
                "starts_in_window": 5,
                "crash_loop": True,
                "restarts_by_up": 3,
                "next_restart_in_s": 38.5,
            },
        ],
        "problems": ["gateway_1 is FATAL; `up` restarts it in 38 s (restart 4)"],
    }
    lines = status_cmd.render_status({**STATUS, "programs": report}, []).splitlines()
    assert "programs kept by `up` (report 0.4 s old)" in lines
    assert any(line.split() == ["gateway_1", "FATAL", "5", "yes", "3", "38"] for line in lines)
    assert any(line.split() == ["gateway_0", "RUNNING", "1", "no", "0", "-"] for line in lines)
    assert "  problem: gateway_1 is FATAL; `up` restarts it in 38 s (restart 4)" in lines
    stale = status_cmd.render_status({**STATUS, "programs": {**report, "stale": True}}, [])
    assert "STALE" in stale
    assert "no report (is `up` running?)" in status_cmd.render_status(STATUS, [])


def test_status_reads_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` asks /status over HTTP; --json prints it unchanged."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(STATUS).encode() if self.path == "/status" else b"{}"
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = make_settings(tmp_path, **{"gateway.port": server.server_address[1]})
        assert status_cmd.status(settings, as_json=True) == 0
        assert json.loads(capsys.readouterr().out) == STATUS
        assert status_cmd.status(settings) == 0
        assert "primary_1" in capsys.readouterr().out
    finally:
        server.shutdown()
        server.server_close()


# --- the real lifecycle (supervisord, gateway, workers, watchdog) -------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_status_json_shape_and_pids(healthy_service: ServiceHandle) -> None:
    result = healthy_service.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert set(status) >= {"workers", "fallback", "watchdog"}
    keys = {
        "name",
        "pid",
        "port",
        "state",
        "ready",
        "rss_mb",
        "uss_mb",
        "restarts",
        "breaker",
        "in_flight",
    }
    assert [w["name"] for w in status["workers"]] == ["primary_0", "primary_1"]
    for i, worker in enumerate(status["workers"]):
        assert set(worker) >= keys
        assert worker["port"] == healthy_service.worker_port(i)
        # The pid is the serving process itself: the one supervisord started.
        assert worker["pid"] == healthy_service.supervisor_pid(i)
        assert psutil.Process(worker["pid"]).cmdline()[1:3] == ["-m", "sentiguard.primary"]
    text = healthy_service.cli("status")
    assert text.returncode == 0 and "primary_1" in text.stdout and "watchdog" in text.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_down_stops_everything(tmp_path: Path) -> None:
    svc = start_service(tmp_path, workers=1, faults=False)
    try:
        tree = svc.tree()
        names = {" ".join(p.cmdline()[1:3]) for p in tree}
        assert {"-m sentiguard.gateway", "-m sentiguard.primary", "-m sentiguard.watchdog"} <= names
        again = svc.cli("up")  # a second instance on the same run_dir is refused
        assert again.returncode != 0 and "sentiguard down" in again.stderr
        result = svc.cli("down")
        print(f"down: {result.stdout.strip()}")
        assert result.returncode == 0, result.stderr
        # `down` returns once supervisord has stopped; `up` follows within its poll.
        wait_until(lambda: svc.proc.poll() is not None, 30, "`up` to exit after `down`")
        assert svc.proc.returncode == 0
        _, alive = psutil.wait_procs(tree, timeout=2)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not RunDir(svc.settings).supervisor_socket.exists()
        assert svc.cli("status").returncode != 0
        # Each process drained and exited by itself, none had to be killed: the gateway
        # used to wait on a /ready poll to a stopping worker until supervisord's SIGKILL.
        supervisord_log = (tmp_path / "logs" / "supervisord.log").read_text()
        assert "SIGKILL" not in supervisord_log, supervisord_log[-2000:]
    finally:
        svc.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_to_up_stops_everything_even_a_hung_worker(tmp_path: Path) -> None:
    graceful = 6
    svc = start_service(
        tmp_path, workers=1, faults=False, overrides={"service.graceful_timeout_s": graceful}
    )
    worker = svc.supervisor_pid(0)
    # A stopped process ignores SIGTERM: the stop must escalate to SIGKILL in time.
    os.kill(worker, signal.SIGSTOP)
    # The harness waits far longer than the promise, so only `up` keeps it, or not.
    took, orphans = svc.stop(signal.SIGTERM, timeout=graceful * 4 + 30)
    print(f"SIGTERM to up: stopped in {took:.1f} s (graceful timeout {graceful} s)")
    assert svc.proc.returncode == 0
    assert not orphans, orphans
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
    # `up`'s own promise on its own clock: from "stopping" to "stopped" (its log lines)
    # within the graceful timeout, plus one poll of its loop to notice the deadline.
    events = {e["event"]: e for e in up_events(svc.output)}
    took_up = wall_ts(events["stopped"]) - wall_ts(events["stopping"])
    assert took_up <= graceful + service.POLL_S + 0.5, (took_up, events)


@pytest.mark.integration
def test_up_refuses_when_the_gateway_port_is_taken_for_real(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        svc = start_service(
            tmp_path, workers=1, overrides={"gateway.port": taken.getsockname()[1]}, wait=False
        )
        wait_until(lambda: svc.proc.poll() is not None, 60, "`up` to refuse the taken port")
        code = svc.proc.returncode
    assert code == ExitCode.ERROR
    assert "already in use" in svc.output.read_text()
    svc.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_cli_finds_a_service_started_with_port_and_its_logs_stay_quiet(tmp_path: Path) -> None:
    """`up --port P` with no port in the environment: every command finds P from the
    record; a normal start and stop logs no CRIT line and no gateway_unreachable."""
    port = free_port()
    values = {
        "primary.base_port": free_port_block(1),
        "primary.workers": 1,
        "faults.enabled": False,
        "service.run_dir": str(tmp_path / "run"),
        "service.log_dir": str(tmp_path / "logs"),
        "watchdog.start_timeout_s": 300.0,  # worker start on busy cores
    }
    env = service_env(values)  # no SENTIGUARD_GATEWAY_PORT: the port is only on `up`'s line
    settings = settings_mod.load(None, environ=env, overrides={"gateway.port": port})
    output = tmp_path / "up.out"
    log = output.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentiguard", "up", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    svc = ServiceHandle(proc, tmp_path, env, settings, time.monotonic(), output, log)
    try:
        svc.wait_ready(starting=True)
        record = json.loads(RunDir(settings).service_record.read_text())
        assert record["port"] == port and record["pid"] == proc.pid
        said = f"sentiguard: service at http://127.0.0.1:{port} (up pid {proc.pid}, since "

        result = svc.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["workers"][0]["ready"] and body["gateways"][0]["pid"]
        assert said in result.stderr
        result = svc.cli("status")
        assert result.returncode == 0 and "processes" in result.stdout, result.stderr
        text = result.stdout.split("\nprocesses\n", 1)[1]
        processes, programs = text.split("\nprograms kept by `up`", 1)
        rows = {line.split()[0]: line.split() for line in processes.splitlines() if line}
        # What `up` keeps: every gateway process and the watchdog, RUNNING, no problem.
        section = itertools.takewhile(lambda ln: ln.startswith("  "), programs.splitlines()[1:])
        kept = {line.split()[0]: line.split() for line in list(section)[1:]}  # past the header
        assert {name: row[1] for name, row in kept.items()} == {
            **{g["name"]: "RUNNING" for g in body["gateways"]},
            "watchdog": "RUNNING",
        }, programs
        for g in body["gateways"]:  # every gateway process, with supervisord's restarts
            assert rows[g["name"]][1] == str(g["pid"]) and rows[g["name"]][3] == "0"
        assert rows["watchdog"][1] == str(body["watchdog"]["pid"])

        result = svc.cli("analyze", "服务很好", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["label"] == "positive" and said in result.stderr

        result = svc.cli("doctor", timeout=300)
        lines = result.stdout.splitlines()
        gateway_port = next(line for line in lines if "gateway port" in line)
        assert f":{port} in use by our running sentiguard.gateway" in gateway_port, lines
        service_line = next(line for line in lines if line.split()[1:2] == ["service"])
        assert service_line.startswith(("PASS", "WARN")) and "health" in service_line, lines

        conf = RunDir(settings).supervisord_conf
        ctl = subprocess.run(
            [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(conf), "status"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ctl.returncode == 0 and "RUNNING" in ctl.stdout, ctl.stdout + ctl.stderr

        result = svc.cli("logs", "--worker", "primary_0")
        assert result.returncode == 0 and "worker_ready" in result.stdout, result.stderr

        result = svc.cli("down")
        assert result.returncode == 0 and said in result.stderr, result.stderr
        assert proc.wait(timeout=30) == 0
        assert not RunDir(settings).service_record.exists()  # a clean stop forgets it
    finally:
        svc.stop()
    logs = RunDir(settings).logs
    for path in (output, RunDir(settings).log("supervisord")):
        assert "CRIT" not in path.read_text(errors="replace"), path
    decisions = RunDir(settings).watchdog_log.read_text()
    assert "gateway_unreachable" not in decisions, decisions
    assert (logs / "gateway_0.log").exists() and (logs / "gateway_1.log").exists()


def up_events(output: Path) -> list[dict[str, Any]]:
    """The JSON event lines `up` printed (supervisord's own lines are not JSON)."""
    events = []
    for line in output.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "event" in doc and "ts" in doc:
            events.append(doc)
    return events
