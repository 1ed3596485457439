"""Settings: precedence, validation, and the generated documentation staying in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiguard import settings
from sentiguard.cli import build_parser, main
from sentiguard.doctor import Status
from sentiguard.doctor.config import check_settings
from sentiguard.errors import ExitCode, SettingsError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_file() -> None:
    s = settings.load(environ={})
    assert s.gateway.port == 5000
    assert s.gateway.host == "127.0.0.1"
    assert s.sources["gateway.port"] == "default"


def test_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[gateway]\nport = 6000\nthreads = 120\n[watchdog]\nmemory_limit_mb = 700\n"
    )
    env = {"SENTIGUARD_GATEWAY_PORT": "7000", "SENTIGUARD_CONFIG": str(path)}
    s = settings.load(environ=env, overrides={"gateway.port": 8000})
    assert s.gateway.port == 8000  # CLI beats env
    assert s.watchdog.memory_limit_mb == 700  # TOML beats default
    assert s.gateway.threads == 120
    s = settings.load(environ=env)
    assert s.gateway.port == 7000  # env beats TOML
    assert s.sources["gateway.port"] == "environment SENTIGUARD_GATEWAY_PORT"


def test_env_values_are_typed() -> None:
    env = {
        "SENTIGUARD_FAULTS_ENABLED": "1",
        "SENTIGUARD_WATCHDOG_INTERVAL_S": "0.25",
        "SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB": "900",
    }
    s = settings.load(environ=env)
    assert s.faults.enabled is True
    assert s.watchdog.interval_s == 0.25
    assert s.watchdog.memory_limit_mb == 900


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("[gateway]\nprot = 5000\n", {}, "gateway.port"),  # typo: suggest the real key
        ("[gateway]\nport = 'x'\n", {}, "gateway.port = 'x'"),
        ("[gateway]\nport = 70000\n", {}, "between 1 and 65535"),
        ("[primary]\nbackend = 'onnx2'\n", {}, "one of modelscope, transformers"),
        ("[nope]\nx = 1\n", {}, "unknown setting 'nope.x'"),
        ("", {"SENTIGUARD_WATCHDOG_MEMORY_LIMIT": "5"}, "SENTIGUARD_WATCHDOG_MEMORY_LIMIT"),
        ("", {"SENTIGUARD_FAULTS_ENABLED": "maybe"}, "faults.enabled"),
        ("[gateway\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(SettingsError) as info:
        settings.load(path, environ=env)
    assert needle in str(info.value)
    assert "Hint:" in str(info.value)


def test_bad_config_stops_the_cli_with_config_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[watchdog]\nmemory_limit_mb = -1\n")
    assert main(["--config", str(path), "status"]) == ExitCode.CONFIG_ERROR
    assert "watchdog.memory_limit_mb" in capsys.readouterr().err


def test_as_env_round_trips() -> None:
    s = settings.load(environ={}, overrides={"gateway.port": 5999, "faults.enabled": True})
    again = settings.load(environ=s.as_env())
    assert again.as_dict() == s.as_dict()


def test_conf_file_is_generated_from_the_settings() -> None:
    committed = (ROOT / "conf" / "sentiguard.toml").read_text(encoding="utf-8")
    assert committed == settings.render_toml(), (
        "conf/sentiguard.toml is out of date: run "
        "`.venv/bin/python -m sentiguard.settings > conf/sentiguard.toml`"
    )
    # and it loads as a config file unchanged
    assert settings.load(ROOT / "conf" / "sentiguard.toml", environ={}).as_dict() == (
        settings.load(environ={}).as_dict()
    )


def test_every_setting_has_help_and_a_valid_default() -> None:
    for s in settings.SETTINGS:
        assert s.help.strip(), s.name
        assert s.coerce(s.default, "default") == s.default


def test_every_cli_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"sentiguard {name}" in readme, f"README does not document `sentiguard {name}`"


def test_settings_that_do_not_fit_together_are_refused_at_load_as_doctor_words_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB": "3000",
        "SENTIGUARD_WATCHDOG_MEMORY_CRITICAL_MB": "2000",  # below the limit
    }
    with pytest.raises(SettingsError) as info:
        settings.load(environ=env)
    (result,) = check_settings(settings.load(environ=env, check=False))
    assert result.status is Status.FAIL
    assert str(info.value) == f"{result.detail}. Hint: {result.fix}."
    # `up` (every command) stops on it before starting anything
    with pytest.MonkeyPatch.context() as mp:
        for var, value in env.items():
            mp.setenv(var, value)
        assert main(["up"]) == ExitCode.CONFIG_ERROR
    assert result.detail in capsys.readouterr().err


def test_warnings_still_load() -> None:
    s = settings.load(environ={"SENTIGUARD_FAULTS_ENABLED": "1"})
    assert [r.status for r in check_settings(s)] == [Status.WARN]


def test_settings_read_back_with_their_declared_types() -> None:
    s = settings.load(environ={"SENTIGUARD_WATCHDOG_DRAIN_TIMEOUT_S": "2"})
    assert isinstance(s.watchdog.drain_timeout_s, float)
    for declared in settings.SETTINGS:
        assert isinstance(s.value(declared.name), declared.type), declared.name


def test_the_corpus_variable_train_and_eval_read_is_not_taken_for_a_setting() -> None:
    """`SENTIGUARD_SHOPPING_CORPUS=... sentiguard eval` (as the README says) must not stop
    at settings as an unknown variable."""
    from sentiguard import data

    assert data.SHOPPING_ENV in settings.NOT_SETTINGS
    s = settings.load(environ={data.SHOPPING_ENV: "/data/online_shopping_10_cats.csv"})
    assert s.as_dict() == settings.load(environ={}).as_dict()
