"""Shared fixtures.

`running_service` (session): the real service, `sentiguard up` under the real supervisord,
2 workers on the embedded models, faults enabled, ports of this run's reserved block
(sentiguard.chaos.ports), a private run/log directory.
It starts once per session, the first time a test asks for it; tests that break a worker
must leave it healthy again (`healthy_service` waits for that before each test). At the end
it is stopped like an operator's Ctrl-C (SIGINT to the whole process group) and the
teardown fails if any of its processes outlived the stop.

Use it from any integration test:

    @pytest.mark.integration
    def test_something(healthy_service: ServiceHandle) -> None:
        assert healthy_service.analyze("很好").status == 200
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentiguard.chaos.scenarios import LEAK_LIMIT_MB
from sentiguard.chaos.service import ServiceHandle, start_service

# A low memory limit for the leak scenario (see sentiguard.chaos.scenarios.LEAK_LIMIT_MB).
SHARED_OVERRIDES = {
    "watchdog.memory_limit_mb": LEAK_LIMIT_MB,
    "watchdog.memory_critical_mb": LEAK_LIMIT_MB + 1000,
}


@pytest.fixture(scope="session")
def running_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    service = start_service(
        tmp_path_factory.mktemp("service"), workers=2, faults=True, overrides=SHARED_OVERRIDES
    )
    yield service
    _, orphans = service.stop(signal.SIGINT, group=True)
    assert not orphans, f"processes outlived Ctrl-C of `up`: {orphans}"


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The base-size stand-in primary (sentiguard.training.standin), built on first use.

    Cached outside the repository ($SENTIGUARD_STANDIN_DIR, else ~/.cache/sentiguard/...):
    the first session on a machine builds it (about a minute on one core), later ones
    find it. Tests that use it are marked `base_model`.
    """
    from sentiguard.training import standin

    return standin.ensure()


@pytest.fixture
def healthy_service(running_service: ServiceHandle) -> ServiceHandle:
    """The shared service, once every worker is ready (a previous test may have broken one)."""
    running_service.wait_ready()
    return running_service
