"""Socket activation (issue 16): `up` adopts the sockets a service manager passes
(LISTEN_FDS), and a restart of `up` itself refuses no connection.

Unit tests of the sd_listen_fds protocol (`runtime.listener.listen_fds`, `adopt`) on fake
environments and descriptors of this process; integration tests run the real `sentiguard up`
under `systemd-socket-activate` with a keeper loop (`sentiguard.chaos.activation`) that
holds the socket across restarts of `up`, as systemd's sentiguard.socket does.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sentiguard import settings as settings_mod
from sentiguard.chaos import activation
from sentiguard.chaos.ports import free_port
from sentiguard.runtime import listener


def gateway_settings(port: int, host: str = "127.0.0.1") -> settings_mod.Settings:
    return settings_mod.load(
        None, environ={}, overrides={"gateway.host": host, "gateway.port": port}
    )


def env_for(pid: int, fds: int, names: str | None = None) -> dict[str, str]:
    env = {"LISTEN_PID": str(pid), "LISTEN_FDS": str(fds), "OTHER": "kept"}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


# --- the protocol ------------------------------------------------------------------------


def test_listen_fds_for_this_process_are_taken_and_the_variables_unset() -> None:
    env = env_for(os.getpid(), 2, "public:public6")
    assert listener.socket_activated(env)
    assert listener.socket_activated(env)  # only reads
    # fds 3 and 4 are this test process's own: listen_fds does not touch what they are
    # beyond close-on-exec, which they already are (Python opens everything so).
    assert listener.listen_fds(env) == [(3, "public"), (4, "public6")]
    assert env == {"OTHER": "kept"}
    assert not listener.socket_activated(env)
    assert listener.listen_fds(env) == []


def test_listen_fds_of_another_pid_are_ignored_and_still_unset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = env_for(os.getpid() + 1, 1)
    assert not listener.socket_activated(env)
    assert listener.listen_fds(env) == []
    assert env == {"OTHER": "kept"}  # no child of ours may misread them either
    err = capsys.readouterr().err
    assert '"event":"listen_fds_ignored"' in err and "LISTEN_PID" in err


def test_no_listen_fds_is_no_activation() -> None:
    env: dict[str, str] = {"OTHER": "kept"}
    assert not listener.socket_activated(env)
    assert listener.listen_fds(env) == []
    zero = env_for(os.getpid(), 0)
    assert not listener.socket_activated(zero)
    assert listener.listen_fds(zero) == []


def test_names_that_do_not_match_the_count_are_dropped() -> None:
    assert listener.listen_fds(env_for(os.getpid(), 2, "only-one")) == [(3, ""), (4, "")]


@pytest.mark.parametrize("count", ["x", "-1", str(listener.MAX_SOCKETS + 1)])
def test_a_malformed_listen_fds_is_refused(count: str) -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count}
    with pytest.raises(listener.ActivationError, match="LISTEN_FDS"):
        listener.listen_fds(env)
    assert env == {}


# --- adopting what was passed --------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_a_listening_socket_on_the_gateway_address_is_adopted(server: socket.socket) -> None:
    port = server.getsockname()[1]
    (adopted,) = listener.adopt(gateway_settings(port), [(server.fileno(), "public")])
    try:
        assert isinstance(adopted, listener.InheritedSocket)
        assert adopted.fileno() == server.fileno()
        # The whole-service stop leaves it listening, for the next `up`.
        action = listener.close_everywhere([adopted])
        assert "kept listening" in action
        assert listener.is_listening(server)
    finally:
        adopted.detach()  # the fixture owns the descriptor


def test_close_everywhere_still_shuts_down_a_socket_up_bound(server: socket.socket) -> None:
    assert "refuse" in listener.close_everywhere([server])
    assert not listener.is_listening(server)


def test_a_non_socket_descriptor_is_refused_with_the_fix(tmp_path: Path) -> None:
    with (tmp_path / "file").open("w") as f:
        fd = f.fileno()
        with pytest.raises(listener.ActivationError) as e:
            listener.adopt(gateway_settings(free_port()), [(fd, "public")])
        os.fstat(fd)  # left open
    message = str(e.value)
    assert f"fd {fd} (public)" in message and "a regular file" in message
    assert "Hint: " in message and "ListenStream=" in message


def test_a_closed_descriptor_is_refused() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(listener.ActivationError, match="is not open"):
        listener.adopt(gateway_settings(free_port()), [(fd, "")])


def test_a_socket_on_another_port_is_refused_naming_both(server: socket.socket) -> None:
    other = free_port()
    with pytest.raises(listener.ActivationError) as e:
        listener.adopt(gateway_settings(other), [(server.fileno(), "")])
    message = str(e.value)
    assert f"127.0.0.1:{server.getsockname()[1]}" in message and f"127.0.0.1:{other}" in message
    assert "SENTIGUARD_GATEWAY_PORT" in message
    assert listener.is_listening(server)  # left as it was


def test_a_wildcard_socket_for_a_loopback_gateway_is_refused() -> None:
    # Serving 0.0.0.0 when the settings say loopback would skip the public-bind checks.
    with socket.create_server(("0.0.0.0", 0)) as wide:
        port = wide.getsockname()[1]
        with pytest.raises(listener.ActivationError, match=re.escape(f"0.0.0.0:{port}")):
            listener.adopt(gateway_settings(port), [(wide.fileno(), "")])


@pytest.mark.parametrize(
    ("kind", "match"),
    [("datagram", "not a stream"), ("unlistened", "not listening"), ("unix", "AF_UNIX")],
)
def test_a_socket_that_cannot_serve_is_refused(kind: str, match: str) -> None:
    sock: Any
    if kind == "datagram":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    elif kind == "unlistened":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        with pytest.raises(listener.ActivationError, match=match):
            listener.adopt(gateway_settings(free_port()), [(sock.fileno(), "")])
        assert sock.fileno() >= 0  # not closed


def test_bind_public_without_activation_binds_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in listener.ACTIVATION_ENV:
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    (sock,) = listener.bind_public(gateway_settings(port))
    with sock:
        assert not isinstance(sock, listener.InheritedSocket)
        assert sock.getsockname() == ("127.0.0.1", port)


# --- the real `up` under systemd-socket-activate ---------------------------------------------


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


@pytest.fixture(scope="module")
def kept() -> Iterator[activation.Kept]:
    if shutil.which(activation.ACTIVATE) is None:
        pytest.fail(f"{activation.ACTIVATE} is missing: install it with `apt-get install systemd`")
    with tempfile.TemporaryDirectory(prefix="sentiguard-activation-") as tmp:
        service = activation.start_kept(Path(tmp), workers=1, activated=True)
        try:
            yield service
        finally:
            orphans = activation.stop_kept(service)
        assert not orphans, f"processes outlived the stop: {orphans}"


@pytest.mark.integration
@pytest.mark.slow
def test_up_serves_on_the_socket_the_service_manager_holds(kept: activation.Kept) -> None:
    svc = kept.service
    assert svc.get("/ready").status == 200
    up = kept.up_process()
    assert up is not None
    # The loop's shell (systemd-socket-activate exec'd it) holds the socket as fd 3, and
    # `up` serves on that same kernel socket as its own fd 3: it bound none of its own.
    held = activation.socket_inode(svc.proc.pid, 3)
    assert held.startswith("socket:")
    assert activation.socket_inode(up.pid, 3) == held
    listening = [
        c
        for c in up.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == svc.port
    ]
    assert [c.fd for c in listening] == [3]
    # Each gateway process got it over the handoff: the same socket.
    for name, pid in svc.gateway_pids().items():
        fds = Path(f"/proc/{pid}/fd")
        assert held in {os.readlink(fd) for fd in fds.iterdir()}, name
    assert kept.events("listener_adopted") >= 1
    assert f'"names":["{activation.FD_NAME}"]' in kept.output()
    # `up` took the variables out of the environment its children inherit.
    supervisord = psutil.Process(int(svc.rpc().supervisor.getPID()))
    for pid in [supervisord.pid, *svc.gateway_pids().values()]:
        assert not set(environ_of(pid)) & set(listener.ACTIVATION_ENV), pid


@pytest.mark.integration
@pytest.mark.slow
def test_restart_of_up_under_8_clients_refuses_no_connection(kept: activation.Kept) -> None:
    before = kept.events("listener_adopted")
    result = activation.restart_under_load(kept, clients=8, restarts=1)
    extra = result.extra
    print(activation.summary_line(result))  # pytest -rP shows the numbers
    assert extra["refused"] == 0, extra["outcomes_after_first_down"]
    assert extra["failed"] == 0, extra["outcomes_after_first_down"]
    assert extra["ok"] > 0 and set(extra["outcomes_after_first_down"]) == {"200"}
    # It was a real restart of `up`, on the same socket again.
    assert kept.events("listener_adopted") == before + 1
    up = kept.up_process()
    assert up is not None and up.pid == extra["up_pids"][-1]
    assert activation.socket_inode(up.pid, 3) == activation.socket_inode(kept.service.proc.pid, 3)
