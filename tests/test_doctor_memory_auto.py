"""doctor's memory check with watchdog.memory_limit_mb = "auto" (issue 10): estimated from
the primary model's weights on disk, the way the watchdog derives it from a measured peak."""

from __future__ import annotations

from pathlib import Path

from sentiguard import settings as settings_mod
from sentiguard.doctor.report import Status
from sentiguard.doctor.resources import (
    GATEWAY_MB,
    SUPPORT_MB,
    WEIGHTS_FACTOR,
    WORKER_RUNTIME_MB,
    check_memory,
    memory_budget_mb,
    worker_limit_mb,
)
from sentiguard.watchdog.limits import auto_limit_mb


def with_model(tmp_path: Path, weights_mb: int, **env: str) -> settings_mod.Settings:
    model = tmp_path / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\0" * (weights_mb * 2**20))
    (model / "vocab.txt").write_text("[PAD]\n")  # not weights: not counted
    environ = {
        "SENTIGUARD_PRIMARY_MODEL": str(model),
        "SENTIGUARD_SERVICE_RUN_DIR": str(tmp_path / "run"),
        **env,
    }
    return settings_mod.load(environ=environ, check=False)


def test_auto_is_estimated_from_the_weights_on_disk(tmp_path: Path) -> None:
    s = with_model(tmp_path, weights_mb=400)
    limit, how = worker_limit_mb(s)
    assert limit == int(auto_limit_mb(WORKER_RUNTIME_MB + WEIGHTS_FACTOR * 400))
    assert "auto" in how and "400 MB of weights" in how and "at start" in how
    workers, gateways = s.primary.workers, s.gateway.processes
    assert memory_budget_mb(s) == workers * limit + gateways * GATEWAY_MB + SUPPORT_MB
    result = check_memory(s, available_mb=10_000)
    assert result.status is Status.PASS and "auto" in result.detail


def test_a_bigger_model_needs_more_memory(tmp_path: Path) -> None:
    small = worker_limit_mb(with_model(tmp_path / "a", weights_mb=10))[0]
    big = worker_limit_mb(with_model(tmp_path / "b", weights_mb=400))[0]
    assert big > small + 400


def test_a_number_still_overrides_and_is_named(tmp_path: Path) -> None:
    s = with_model(tmp_path, weights_mb=400, SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB="900")
    assert worker_limit_mb(s) == (900, "900 MB (watchdog.memory_limit_mb)")
    need = memory_budget_mb(s)
    failed = check_memory(s, available_mb=need - 1)
    assert failed.status is Status.FAIL and "lower watchdog.memory_limit_mb" in failed.fix


def test_too_little_memory_for_an_auto_limit_names_a_fix(tmp_path: Path) -> None:
    s = with_model(tmp_path, weights_mb=400)
    failed = check_memory(s, available_mb=memory_budget_mb(s) - 1)
    assert failed.status is Status.FAIL and "smaller primary model" in failed.fix
