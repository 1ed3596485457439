"""Which listening socket survives a gateway's death: the measurement behind runtime/listener.py.

Stand-in gateways (a small accept loop, a 1 s start like the gateway's model load, 10 ms a
request) run under the real supervisord, three ways:

- `fcgi`: supervisord's `[fcgi-program]` socket, fd 0 in each child; supervisord ref-counts
  it and closes it when no process of the group holds it;
- `handoff`: the socket held by the parent (as `sentiguard up` does), handed to each child
  over a unix socket with SCM_RIGHTS;
- `reuseport`: each child binds its own socket with SO_REUSEPORT.

16 clients open a new connection per request (the worst case for a listener: a client that
keeps its connection alive only reconnects after an error). After 2 s of load one of three
faults: `one` SIGKILLs one process, `all` SIGKILLs every process, `restart` stops and starts
the group through supervisord. It prints, for the 6 s after the fault: answers, refused
connections, resets, and when the first request started after the fault was answered.

    .venv/bin/python bench/listener.py                  # every way x every fault
    .venv/bin/python bench/listener.py --way fcgi --processes 1 --fault one
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from pathlib import Path
from typing import Any

START_S = 1.0
AFTER_S = 6.0
CLIENTS = 16

SERVER = """
import os, socket, sys, threading, time
way, where = sys.argv[1], sys.argv[2]
time.sleep(float(sys.argv[3]))
if way == "fcgi":
    lsock = socket.socket(fileno=0)
elif way == "handoff":
    c = socket.socket(socket.AF_UNIX)
    c.connect(where)
    _, fds, _, _ = socket.recv_fds(c, 16, 4)
    c.close()
    lsock = socket.socket(fileno=fds[0])
else:
    host, port = where.rsplit(":", 1)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lsock.bind((host, int(port)))
    lsock.listen(1024)
lsock.setblocking(True)

def serve(conn):
    data = b""
    try:
        while b"\\r\\n\\r\\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        time.sleep(0.01)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    except OSError:
        pass
    finally:
        conn.close()

while True:
    conn, _ = lsock.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        path = self.path

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)

        return Conn("localhost")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hand_out(server: socket.socket, held: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            socket.send_fds(conn, [b"L"], [held.fileno()])


def run_one(way: str, processes: int, fault: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sentiguard-listener-"))
    port = free_port()
    held: socket.socket | None = None
    where = f"127.0.0.1:{port}"
    if way == "handoff":
        held = socket.create_server(("127.0.0.1", port), backlog=1024)
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(tmp / "listener.sock"))
        server.listen(16)
        threading.Thread(target=hand_out, args=(server, held), daemon=True).start()
        where = str(tmp / "listener.sock")
    (tmp / "server.py").write_text(SERVER)
    section = "fcgi-program" if way == "fcgi" else "program"
    conf = (
        f"[supervisord]\nnodaemon=true\nlogfile={tmp}/sd.log\npidfile={tmp}/sd.pid\n"
        f"[unix_http_server]\nfile={tmp}/sd.sock\n[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[{section}:gw]\ncommand={sys.executable} {tmp}/server.py {way} {where} {START_S}\n"
        f"numprocs={processes}\nprocess_name=gw_%(process_num)d\nautorestart=true\n"
        "startsecs=0\nstopsignal=KILL\n"
        + (f"socket=tcp://127.0.0.1:{port}\n" if way == "fcgi" else "")
    )
    (tmp / "sd.conf").write_text(conf)
    sd = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(tmp / "sd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rpc = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(f"{tmp}/sd.sock"))
    try:
        return measure(rpc, port, fault)
    finally:
        rpc.supervisor.shutdown()
        sd.wait(30)
        if held is not None:
            held.close()


def measure(rpc: Any, port: int, fault: str) -> dict[str, Any]:
    def answers() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    end = time.monotonic() + 30
    while not answers() and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(START_S + 1)
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    fault_at: list[float] = []
    first: list[float] = []

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    data = b""
                    while chunk := c.recv(4096):
                        data += chunk
                outcome = "ok" if data.startswith(b"HTTP/1.1 200") else "reset"
            except ConnectionRefusedError:
                outcome = "refused"
                time.sleep(0.01)
            except (ConnectionResetError, BrokenPipeError):
                outcome = "reset"
            except OSError as e:
                outcome = type(e).__name__
            with lock:
                if fault_at and started >= fault_at[0]:
                    counts[outcome] += 1
                    if outcome == "ok" and not first:
                        first.append(time.monotonic() - fault_at[0])

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    pids = [int(i["pid"]) for i in rpc.supervisor.getAllProcessInfo()]
    with lock:
        fault_at.append(time.monotonic())
    if fault == "restart":
        rpc.supervisor.stopProcessGroup("gw")
        rpc.supervisor.startProcessGroup("gw", False)
    else:
        for pid in pids[:1] if fault == "one" else pids:
            os.kill(pid, signal.SIGKILL)
    time.sleep(AFTER_S)
    stop.set()
    for t in threads:
        t.join()
    return {
        "answered": counts["ok"],
        "refused": counts["refused"],
        "reset": counts["reset"],
        "first_answer_s": round(first[0], 3) if first else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--way", choices=("fcgi", "handoff", "reuseport"))
    parser.add_argument("--processes", type=int)
    parser.add_argument("--fault", choices=("one", "all", "restart"))
    args = parser.parse_args()
    runs = [
        (way, processes, fault)
        for way in ("fcgi", "handoff", "reuseport")
        for processes, fault in ((1, "one"), (2, "one"), (2, "all"), (2, "restart"))
        if (args.way in (None, way))
        and (args.processes in (None, processes))
        and (args.fault in (None, fault))
    ]
    print(f"{CLIENTS} clients, a new connection per request; counts over {AFTER_S:.0f} s after")
    for way, processes, fault in runs:
        print(f"{way:9} processes={processes} fault={fault:7} {run_one(way, processes, fault)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
