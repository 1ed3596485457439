"""Real worker processes: each injected fault, graceful SIGTERM, and every load failure.

The fault tests share one worker (a start is seconds of CPU) and run in file order:
leak, slow, hang, then crash, which ends it. The load-failure workers all start at
once and each test checks its own exit code (4) and `model_load_failed` line; the
failures that need the full imports first (damaged weights, out of memory) are checked
in-process in test_primary_model.py, through the same ModelLoadError.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sentiguard.chaos.client import wait_until
from sentiguard.errors import ExitCode
from sentiguard.primary.faults import CRASH_EXIT_CODE
from sentiguard.runtime import trust
from tests.primary_helpers import EMBEDDED_MODEL, Worker, start_worker, wait_ready

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (EMBEDDED_MODEL / "configuration.json").exists(),
        reason="the embedded model is not built yet: run `sentiguard train primary`",
    ),
]
FAULTS_ON = {"SENTIGUARD_FAULTS_ENABLED": "1"}
TEXT = "这个手机非常好用，质量很好，我很满意，推荐购买！"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = start_worker(tmp_path_factory.mktemp("primary-faults"), FAULTS_ON)
    try:
        wait_ready(w)
        yield w
    finally:
        w.stop()


def fault(worker: Worker, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(worker.url + "/_fault", json=body, headers=worker.auth, timeout=10)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def health(worker: Worker, timeout: float = 10) -> dict[str, Any]:
    r = requests.get(worker.url + "/health", timeout=timeout)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_bad_fault_requests_are_400(faulty: Worker) -> None:
    bodies: list[Any] = [{"kind": "melt"}, {"kind": "leak"}, {"kind": "hang", "seconds": -1}, []]
    for body in bodies:
        r = requests.post(faulty.url + "/_fault", json=body, headers=faulty.auth, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_faults_need_the_secret_of_this_up(faulty: Worker) -> None:
    body: dict[str, Any] = {"kind": "slow", "ms": 0}
    for headers in ({}, trust.bearer_headers("not-the-secret")):
        r = requests.post(faulty.url + "/_fault", json=body, headers=headers, timeout=10)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
        assert "Authorization: Bearer" in r.json()["error"]["message"]
    assert fault(faulty, body)["ms"] == 0


def test_leak_grows_the_memory_the_worker_reports(faulty: Worker) -> None:
    before = health(faulty)
    assert fault(faulty, {"kind": "leak", "mb": 150})["leaked_mb"] == 150
    after = health(faulty)
    assert after["rss_mb"] - before["rss_mb"] >= 140
    assert after["uss_mb"] - before["uss_mb"] >= 140
    assert after["leaked_mb"] == 150


def test_slow_delays_predictions_and_the_probe(faulty: Worker) -> None:
    fault(faulty, {"kind": "slow", "ms": 400})
    try:
        start = time.perf_counter()
        r = requests.post(
            faulty.url + "/predict", json={"texts": [TEXT]}, headers=faulty.auth, timeout=30
        )
        assert r.status_code == 200
        assert time.perf_counter() - start >= 0.4
        slowed = health(faulty)["probe_ms"]
        assert slowed >= 400
    finally:
        assert fault(faulty, {"kind": "slow", "ms": 0})["ms"] == 0
    # The delay is gone: the probe passes again, faster than with the 400 ms sleep in it.
    # No absolute bound (a loaded machine slows inference, not the sleep); the quickest of
    # three probes only has to beat the slowed one, which paid the same inference + 400 ms.
    after = [health(faulty) for _ in range(3)]
    assert all(h["status"] == "ok" for h in after)
    assert min(h["probe_ms"] for h in after) < slowed


def test_hang_stops_every_answer_and_ignores_sigterm(faulty: Worker) -> None:
    fault(faulty, {"kind": "hang", "seconds": 4})
    with pytest.raises(requests.Timeout):
        requests.get(faulty.url + "/health", timeout=1)
    with pytest.raises(requests.Timeout):
        requests.get(faulty.url + "/ready", timeout=1)
    faulty.proc.send_signal(signal.SIGTERM)
    # After the hang it answers again: the SIGTERM it got meanwhile did not stop it.
    wait_until(lambda: _answers(faulty), 30, "the worker to answer after the hang")
    assert faulty.proc.poll() is None
    assert faulty.event("signal_ignored")["reason"] == "hang_fault"


def _answers(worker: Worker) -> bool:
    try:
        return requests.get(worker.url + "/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_crash_exits_with_a_code_that_is_not_model_load_error(faulty: Worker) -> None:
    fault(faulty, {"kind": "crash"})
    code = faulty.wait_exit(30)
    assert code == CRASH_EXIT_CODE != ExitCode.MODEL_LOAD_ERROR


def test_sigterm_finishes_in_flight_work_then_exits_0(tmp_path: Path) -> None:
    w = start_worker(tmp_path, FAULTS_ON)
    try:
        wait_ready(w)
        fault(w, {"kind": "slow", "ms": 1500})
        answer: dict[str, Any] = {}

        def slow_request() -> None:
            r = requests.post(
                w.url + "/predict", json={"texts": [TEXT]}, headers=w.auth, timeout=30
            )
            answer.update(status=r.status_code, body=r.json())

        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_until(
            lambda: requests.get(w.url + "/ready", timeout=5).json().get("in_flight"),
            10,
            "the request to be in flight",
        )
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait_exit(30) == ExitCode.OK
        thread.join(10)
        assert answer["status"] == 200 and len(answer["body"]["results"]) == 1
        assert w.event("worker_stopped")["unfinished"] == 0
    finally:
        w.stop()


# --- a model that cannot load: exit code 4 and one line naming cause and fix ------------


def _broken_copy(tmp: Path, name: str) -> Path:
    import shutil

    target = tmp / name
    shutil.copytree(EMBEDDED_MODEL, target)
    return target


def _failing_workers(tmp: Path) -> dict[str, tuple[Worker, str]]:
    """Start one worker per failure; value: (worker, expected cause)."""
    setups: dict[str, tuple[dict[str, str], Path | None, str]] = {}

    setups["missing_dir"] = (
        {"SENTIGUARD_PRIMARY_MODEL": str(tmp / "no-such-model")},
        None,
        "missing",
    )

    corrupt_config = _broken_copy(tmp, "corrupt-config")
    (corrupt_config / "config.json").write_text('{"hidden_size": 64,', encoding="utf-8")
    setups["corrupt_config"] = ({"SENTIGUARD_PRIMARY_MODEL": str(corrupt_config)}, None, "corrupt")

    no_weights = _broken_copy(tmp, "no-weights")
    (no_weights / "model.safetensors").unlink()
    setups["missing_weights"] = ({"SENTIGUARD_PRIMARY_MODEL": str(no_weights)}, None, "missing")

    # A broken install: an importable `modelscope` that fails on import.
    shadow = tmp / "shadow"
    (shadow / "modelscope").mkdir(parents=True)
    (shadow / "modelscope" / "__init__.py").write_text(
        'raise ImportError("modelscope is half-installed (simulated)")\n', encoding="utf-8"
    )
    setups["import"] = ({}, shadow, "import")

    return {
        name: (start_worker(tmp / name, env, extra_path=path), cause)
        for name, (env, path, cause) in setups.items()
    }


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Worker, str]]]:
    workers = _failing_workers(tmp_path_factory.mktemp("primary-load-failures"))
    try:
        yield workers
    finally:
        for w, _ in workers.values():
            w.stop()


@pytest.mark.parametrize(
    "case",
    ["missing_dir", "corrupt_config", "missing_weights", "import"],
)
def test_a_model_that_cannot_load_exits_4_naming_cause_and_fix(
    failing: dict[str, tuple[Worker, str]], case: str
) -> None:
    worker, cause = failing[case]
    assert worker.wait_exit(120) == ExitCode.MODEL_LOAD_ERROR
    line = worker.event("model_load_failed")
    assert line["cause"] == cause
    assert line["fix"] and line["exit_code"] == 4 and line["worker"] == "primary_0"
    expected_fix = {
        "missing": "sentiguard train primary",
        "corrupt": "sentiguard train primary",
        "memory": "memory",
        "import": "make install",
    }[cause]
    assert expected_fix in line["fix"]
