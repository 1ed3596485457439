"""`sentiguard doctor`: a healthy install passes every check; each broken thing gives a
FAIL (or WARN) line that names the fix.

Everything runs against temporary copies (model directories, lock files, run and log
directories) and free ports, so nothing here depends on what else runs on the machine.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import psutil
import pytest

from sentiguard import settings as settings_mod
from sentiguard.chaos.client import wait_until
from sentiguard.chaos.ports import free_port, free_port_block
from sentiguard.chaos.service import ServiceHandle
from sentiguard.doctor import Result, Status, doctor_command
from sentiguard.doctor.config import check_settings
from sentiguard.doctor.deps import (
    RUNTIME_MODULES,
    check_dependencies,
    check_imports,
    check_python,
    read_requirements_lock,
)
from sentiguard.doctor.models import (
    check_model,
    check_models,
    manifest_files,
    sha256_file,
    structbert_problem,
)
from sentiguard.doctor.ports import check_port, check_ports, check_supervisor_socket
from sentiguard.doctor.resources import (
    cgroup_available_mb,
    check_memory,
    check_writable,
    memory_budget_mb,
    service_rss_mb,
    worker_limit_mb,
)
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import ROOT

LOCK = ROOT / "requirements.lock"
# Light modules stand in for torch & co. in the import check: the import mechanism is the
# same, and the real list costs ~15 s of CPU (one CLI test below pays it once).
LIGHT_MODULES = ("json", "psutil")


def make_settings(tmp_path: Path, **overrides: Any) -> settings_mod.Settings:
    """Settings on free ports, with temporary run/log dirs and copies of the embedded models."""
    models = tmp_path / "models"
    if not models.exists():
        for name in ("fallback", "primary"):
            source = ROOT / "models" / name
            if not (source / "manifest.json").is_file():
                pytest.fail(f"{source} is missing: run `make install` (it trains the models)")
            shutil.copytree(source, models / name)
    values: dict[str, Any] = {
        "gateway.port": free_port(),
        "primary.base_port": free_port_block(2),
        "primary.workers": 2,
        "primary.model": str(models / "primary"),
        "fallback.model": str(models / "fallback"),
        "service.run_dir": str(tmp_path / "run"),
        "service.log_dir": str(tmp_path / "logs"),
        **overrides,
    }
    env = {settings_mod.BY_NAME[k].env: str(v) for k, v in values.items()}
    return settings_mod.load(environ=env)


def report(settings: settings_mod.Settings, **kwargs: Any) -> tuple[int, list[str]]:
    out = io.StringIO()
    kwargs.setdefault("modules", LIGHT_MODULES)
    kwargs.setdefault("available_mb", 1e6)
    code = doctor_command(settings, out=out, **kwargs)
    return code, out.getvalue().splitlines()


def only(results: list[Result], status: Status) -> list[Result]:
    return [r for r in results if r.status is status]


# --- the whole report -------------------------------------------------------------------


def test_healthy_install_passes_every_check(tmp_path: Path) -> None:
    code, lines = report(make_settings(tmp_path))
    assert code == 0, "\n".join(lines)
    checks = lines[:-1]
    assert all(line.startswith("PASS") for line in checks), "\n".join(lines)
    names = " ".join(checks)
    for check in (
        "python",
        "dependencies",
        "imports",
        "settings",
        "gateway port",
        "worker port 0",
        "worker port 1",
        "supervisord",
        "fallback model",
        "primary model",
        "memory",
        "log dir",
        "run dir",
    ):
        assert check in names
    assert lines[-1].startswith("doctor: ") and " 0 fail" in lines[-1]


def test_port_taken_fails_and_names_the_fix(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.gateway.port))
        squatter.listen()
        code, lines = report(settings)
    assert code == 1
    (line,) = [x for x in lines if "gateway port" in x]
    assert line.startswith("FAIL")
    assert f"taken by pid {os.getpid()}" in line
    assert "fix: stop that process, or choose another port" in line
    assert "--port" in line


def test_removed_model_file_fails_and_names_the_fix(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    primary = settings.primary.model_dir
    weights = next(iter(manifest_files(json.loads((primary / "manifest.json").read_text()))))
    (primary / weights).unlink()
    code, lines = report(settings)
    assert code == 1
    (line,) = [x for x in lines if "primary model" in x]
    assert line.startswith("FAIL") and f"{weights} is missing" in line
    assert "fix: restore it" in line and "sentiguard train primary" in line


def test_wrong_dependency_version_fails_and_names_the_fix(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK.read_text().replace("Flask==", "Flask==0.1.0\n# was Flask=="))
    code, lines = report(make_settings(tmp_path), lock=lock)
    assert code == 1
    (line,) = [x for x in lines if x.startswith("FAIL")]
    assert "flask" in line and "pins 0.1.0" in line
    assert "fix: pip install 'flask==0.1.0'" in line


@pytest.mark.slow
def test_cli_doctor_runs_the_real_checks_and_exits_non_zero_on_failure(tmp_path: Path) -> None:
    # End to end through `sentiguard doctor`, with the real import list: one port taken.
    settings = make_settings(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIGUARD_")}
    env.update(settings.as_env())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.primary.base_port + 1))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "sentiguard", "doctor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    imports = f"PASS  imports          {len(RUNTIME_MODULES)} runtime modules import"
    assert any(x.startswith(imports) for x in lines), result.stdout
    fails = [x for x in lines if x.startswith("FAIL")]
    assert len(fails) == 1 and "worker port 1" in fails[0], result.stdout


# --- dependencies -----------------------------------------------------------------------


def test_lock_pins_are_read_by_canonical_name(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("# comment\nPyYAML==6.0.4\nscikit_learn==1.9.1  # note\n-e .\nfoo>=1\n\n")
    assert read_requirements_lock(lock) == {"pyyaml": "6.0.4", "scikit-learn": "1.9.1"}


def test_missing_runtime_package_fails_but_missing_dev_tool_does_not(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("flask==3.1.3\npytest==9.2.0\n")
    results = check_dependencies(lock, runtime={"flask"}, installed=lambda name: None)
    (failed,) = only(results, Status.FAIL)
    assert failed.check == "flask" and "not installed" in failed.detail
    assert "requirements.lock" in failed.fix


def test_wrong_dev_tool_version_only_warns(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("flask==3.1.3\npytest==1.0\n")
    versions = {"flask": "3.1.3", "pytest": "9.2.0"}
    results = check_dependencies(lock, runtime={"flask"}, installed=versions.get)
    assert not only(results, Status.FAIL)
    (warned,) = only(results, Status.WARN)
    assert warned.check == "pytest" and "pip install 'pytest==1.0'" in warned.fix


def test_local_version_label_matches_its_pin(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("torch==2.13.0+cpu\n")
    results = check_dependencies(lock, runtime={"torch"}, installed=lambda n: "2.13.0+cpu")
    assert [r.status for r in results] == [Status.PASS]
    results = check_dependencies(lock, runtime={"torch"}, installed=lambda n: "2.13.0")
    assert only(results, Status.FAIL)


def test_unimportable_module_fails() -> None:
    (result,) = check_imports(("json", "sentiguard_no_such_module"))
    assert result.status is Status.FAIL and "ModuleNotFoundError" in result.detail
    assert "pip install -r requirements.lock" in result.fix


def test_old_python_fails() -> None:
    assert check_python((3, 11, 7)).status is Status.PASS
    old = check_python((3, 10, 12))
    assert old.status is Status.FAIL and "3.11" in old.fix


# --- ports and supervisord's socket -------------------------------------------------------


def test_port_held_by_our_own_service_passes(tmp_path: Path) -> None:
    port = free_port()
    # A listener whose command line names the gateway module, as supervisord starts it.
    code = (
        "import socket, sys, time; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "-m", "sentiguard.gateway"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        result = check_port("gateway port", "127.0.0.1", port, "sentiguard.gateway", "/h", "x")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert result.status is Status.PASS
    assert f"in use by our running sentiguard.gateway (pid {proc.pid})" in result.detail


def test_worker_ports_are_each_checked() -> None:
    base = free_port_block(2)
    settings = settings_mod.load(
        environ={
            "SENTIGUARD_GATEWAY_PORT": str(free_port()),
            "SENTIGUARD_PRIMARY_BASE_PORT": str(base),
        }
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))
        squatter.listen()
        results = check_ports(settings)
    assert [r.status for r in results] == [Status.PASS, Status.FAIL, Status.PASS]
    assert f"127.0.0.1:{base} is taken" in results[1].detail


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # A unix socket path must stay under ~107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sg-doc-", dir="/tmp") as d:
        yield Path(d)


def socket_settings(run_dir: Path) -> settings_mod.Settings:
    return settings_mod.load(environ={"SENTIGUARD_SERVICE_RUN_DIR": str(run_dir)})


def test_supervisord_socket_absent_passes(run_dir: Path) -> None:
    result = check_supervisor_socket(socket_settings(run_dir))
    assert result.status is Status.PASS and "absent" in result.detail


def test_stale_supervisord_socket_warns_with_rm(run_dir: Path) -> None:
    path = run_dir / "supervisor.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # the file stays after close: what a killed supervisord leaves
    result = check_supervisor_socket(socket_settings(run_dir))
    assert result.status is Status.WARN and "stale" in result.detail
    assert f"rm {path}" in result.fix


def test_a_regular_file_in_place_of_the_socket_fails(run_dir: Path) -> None:
    (run_dir / "supervisor.sock").write_text("")
    result = check_supervisor_socket(socket_settings(run_dir))
    assert result.status is Status.FAIL and "not a socket" in result.detail


class UnixRequestHandler(SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False  # TCP_NODELAY does not exist on a unix socket


class UnixXMLRPCServer(SimpleXMLRPCServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        # AF_UNIX peers have no (host, port); the handler only logs it.
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


@pytest.mark.parametrize(
    ("states", "status"),
    [(["RUNNING", "RUNNING"], Status.PASS), (["RUNNING", "FATAL"], Status.WARN)],
)
def test_live_supervisord_reports_program_states(
    run_dir: Path, states: list[str], status: Status
) -> None:
    settings = socket_settings(run_dir)
    infos = [{"name": f"primary_{i}", "statename": s} for i, s in enumerate(states)]
    server = UnixXMLRPCServer(
        # a unix socket's address is its path; typeshed only knows (host, port)
        str(RunDir(settings).supervisor_socket),  # type: ignore[arg-type]
        requestHandler=UnixRequestHandler,
        logRequests=False,
    )
    server.register_function(lambda: infos, "supervisor.getAllProcessInfo")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = check_supervisor_socket(settings)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.status is status, result.line()
    assert "live" in result.detail and f"primary_1 {states[1]}" in result.detail


# --- models -------------------------------------------------------------------------------


def fake_model(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"weights" * 100)
    for name in ("configuration.json", "config.json"):
        (directory / name).write_text('{"ok": true}')
    (directory / "vocab.txt").write_text("[PAD]\n")
    manifest = {
        "weights": {
            "file": "model.safetensors",
            "sha256": sha256_file(directory / "model.safetensors"),
        },
        "files": {"vocab.txt": {"sha256": sha256_file(directory / "vocab.txt")}},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def model_check(directory: Path) -> Result:
    required = ("configuration.json", "config.json", "vocab.txt")
    return check_model(
        "primary model", directory, "primary.model", required, "sentiguard train primary"
    )


def test_complete_model_passes(tmp_path: Path) -> None:
    result = model_check(fake_model(tmp_path / "m"))
    assert result.status is Status.PASS, result.line()
    assert "model.safetensors" in result.detail and "vocab.txt" in result.detail


def test_corrupt_weights_fail_the_hash(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "m")
    with (model / "model.safetensors").open("r+b") as f:
        f.write(b"X")
    result = model_check(model)
    assert result.status is Status.FAIL and "sha256 differs" in result.detail
    assert "sentiguard train primary" in result.fix


@pytest.mark.parametrize("broken", ["config.json", "configuration.json"])
def test_unparsable_config_fails(tmp_path: Path, broken: str) -> None:
    model = fake_model(tmp_path / "m")
    (model / broken).write_text("{not json")
    result = model_check(model)
    assert result.status is Status.FAIL and f"{broken} does not parse" in result.detail


def test_missing_manifest_or_directory_fails(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "m")
    (model / "manifest.json").unlink()
    assert "manifest.json is missing" in model_check(model).detail
    gone = model_check(tmp_path / "nowhere")
    assert gone.status is Status.FAIL and "set primary.model" in gone.fix


@pytest.fixture
def primary_copy(tmp_path: Path) -> Path:
    source = ROOT / "models" / "primary"
    if not (source / "manifest.json").is_file():
        pytest.fail(f"{source} is missing: run `make install` (it trains the models)")
    return Path(shutil.copytree(source, tmp_path / "primary"))


def test_embedded_primary_model_is_consistent(primary_copy: Path) -> None:
    assert structbert_problem(primary_copy) is None


def test_vocab_not_matching_the_config_would_not_load(primary_copy: Path) -> None:
    # vocab.txt is not in the manifest's hashes; its size must still match the embeddings.
    with (primary_copy / "vocab.txt").open("a", encoding="utf-8") as f:
        f.write("多余\n")
    problem = structbert_problem(primary_copy)
    assert problem is not None and "vocab_size" in problem


def test_truncated_weights_would_not_load(primary_copy: Path) -> None:
    weights = primary_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    problem = structbert_problem(primary_copy)
    assert problem is not None and "its header says" in problem


def test_manifest_shapes_of_both_trainers() -> None:
    primary = {"weights": {"file": "model.safetensors", "sha256": "a" * 64, "bytes": 1}}
    assert manifest_files(primary) == {"model.safetensors": "a" * 64}
    fallback = {"model_file": "model.joblib", "version": "fallback@0123456789ab"}
    assert manifest_files(fallback) == {"model.joblib": "0123456789ab"}
    assert manifest_files({**fallback, "model_sha256": "b" * 64}) == {"model.joblib": "b" * 64}
    assert manifest_files({"model_file": "m", "version": "unhashed"}) == {}


def test_hash_prefix_from_the_version_is_checked(tmp_path: Path) -> None:
    model = tmp_path / "fallback"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"model")
    good = sha256_file(model / "model.joblib")[:12]
    for prefix, status in ((good, Status.PASS), ("0" * 12, Status.FAIL)):
        manifest = {"model_file": "model.joblib", "version": f"fallback@{prefix}"}
        (model / "manifest.json").write_text(json.dumps(manifest))
        result = check_model("fallback model", model, "fallback.model")
        assert result.status is status, result.line()


def test_primary_is_resolved_like_the_worker_does(tmp_path: Path, primary_copy: Path) -> None:
    hub = "damo/nlp_structbert_sentiment-classification_chinese-base"
    s = settings_mod.load(
        environ={"SENTIGUARD_PRIMARY_MODEL": hub, "SENTIGUARD_SERVICE_RUN_DIR": str(tmp_path)}
    )
    primary = check_models(s)[1]
    assert primary.status is Status.WARN and hub in primary.detail
    # `sentiguard reload` wrote a new model for the workers: that one is checked.
    (tmp_path / "primary_model").write_text(f"{primary_copy}\n")
    primary = check_models(s)[1]
    assert primary.check == "primary (reload)" and primary.status is Status.PASS
    assert str(primary_copy) in primary.detail


def test_hub_id_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    hub = "damo/nlp_structbert_sentiment-classification_chinese-base"
    result = check_model("primary model", tmp_path / hub, "primary.model", hub_id=hub)
    assert result.status is Status.WARN and "hub" in result.detail


# --- memory, directories, settings --------------------------------------------------------


def test_memory_budget_is_workers_times_limit_plus_the_rest() -> None:
    s = settings_mod.load(environ={"SENTIGUARD_PRIMARY_WORKERS": "3"})
    # 400 MB for each of the 2 gateway processes, 100 for supervisord and the watchdog.
    assert memory_budget_mb(s) == 3 * worker_limit_mb(s)[0] + 2 * 400 + 100


def test_too_little_memory_fails_and_says_how_many_workers_fit() -> None:
    # 2 workers x 1200 MB + 2 x 400 + 100 = 3300 MB
    s = settings_mod.load(environ={"SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB": "1200"})
    failed = check_memory(s, available_mb=2400)
    assert failed.status is Status.FAIL and "primary.workers = 1" in failed.fix
    assert check_memory(s, available_mb=3500).status is Status.WARN
    assert check_memory(s, available_mb=5000).status is Status.PASS


def test_cgroup_limit_counts(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**30}\n")
    assert cgroup_available_mb(tmp_path) == 2048
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_available_mb(tmp_path) is None


# The stand-in's child: holds CHILD_MB of touched memory, then blocks (its RSS stays put).
CHILD_MB = 64
CHILD = f"import time; held = b'x' * ({CHILD_MB} * 2**20); time.sleep(120)"


def test_running_service_memory_counts_as_available(run_dir: Path) -> None:
    settings = socket_settings(run_dir)
    assert service_rss_mb(settings) == 0.0  # no pid file: not running
    # A stand-in supervisord with one child, its pid where supervisord writes it.
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {CHILD!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    try:
        RunDir(settings).supervisord_pid.write_text(f"{proc.pid}\n")
        root = psutil.Process(proc.pid)

        def child_holding() -> psutil.Process | None:
            children = root.children()
            if children and children[0].memory_info().rss >= CHILD_MB * 2**20:
                return children[0]
            return None

        # Fails the test, naming what it waited for, if the child never gets there.
        child = wait_until(child_holding, 30, f"the stand-in's child to hold {CHILD_MB} MB")
        # Both processes now block, so their RSS no longer moves: one moment's figures.
        root_mb = root.memory_info().rss / 2**20
        child_mb = child.memory_info().rss / 2**20
        counted = service_rss_mb(settings)
        # The whole tree counts (the child's 64 MB dwarf any page the runtime touches).
        assert counted == pytest.approx(root_mb + child_mb, abs=CHILD_MB / 4)
        assert counted > root_mb + CHILD_MB * 0.9
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_unwritable_log_dir_fails_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = check_writable("log dir", blocker / "logs", "service.log_dir")
    assert result.status is Status.FAIL and "service.log_dir" in result.fix
    assert check_writable("log dir", tmp_path / "logs", "service.log_dir").status is Status.PASS


def test_overlapping_ports_fail() -> None:
    s = settings_mod.load(
        environ={"SENTIGUARD_GATEWAY_PORT": "5101", "SENTIGUARD_PRIMARY_BASE_PORT": "5100"},
        check=False,
    )
    (result,) = check_settings(s)
    assert result.status is Status.FAIL and "worker ports" in result.detail


def test_public_bind_without_key_fails_with_how_to_set_one() -> None:
    s = settings_mod.load(environ={"SENTIGUARD_GATEWAY_HOST": "0.0.0.0"}, check=False)
    (result,) = check_settings(s)
    assert result.status is Status.FAIL and "SENTIGUARD_GATEWAY_API_KEY" in result.fix
    keyed = settings_mod.load(
        environ={"SENTIGUARD_GATEWAY_HOST": "0.0.0.0", "SENTIGUARD_GATEWAY_API_KEY": "k"}
    )
    assert [r.status for r in check_settings(keyed)] == [Status.PASS]


def test_every_failing_line_names_a_fix(tmp_path: Path) -> None:
    s = settings_mod.load(
        environ={"SENTIGUARD_GATEWAY_HOST": "0.0.0.0", "SENTIGUARD_GATEWAY_THREADS": "4"},
        check=False,
    )
    results = [*check_settings(s), check_memory(s, available_mb=10)]
    assert len(only(results, Status.FAIL)) == 3
    for r in results:
        assert r.fix and " -> fix: " in r.line()


# --- against the real running service -------------------------------------------------------


@pytest.mark.integration
def test_running_service_ports_and_socket_pass(healthy_service: ServiceHandle) -> None:
    settings = healthy_service.settings
    ports = check_ports(settings)
    assert [r.status for r in ports] == [Status.PASS] * 3, [r.line() for r in ports]
    assert "our running sentiguard.gateway" in ports[0].detail
    assert "our running sentiguard.primary" in ports[1].detail
    sock = check_supervisor_socket(settings)
    assert sock.status is Status.PASS and "live" in sock.detail, sock.line()
    memory = check_memory(settings)
    assert "the running service holds" in memory.detail, memory.line()
