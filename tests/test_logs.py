"""`sentiguard logs`: reading, merging, filtering, formatting and following the watchdog's
decisions and the workers' lifecycle lines."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sentiguard import settings as settings_mod
from sentiguard.cli import main
from sentiguard.errors import SentiguardError
from sentiguard.runtime import logview
from sentiguard.runtime.paths import RunDir

NOW = datetime(2026, 11, 29, 18, 30, 0, tzinfo=UTC)


def ts(minutes_ago: float) -> str:
    when = NOW - timedelta(minutes=minutes_ago)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(minutes_ago: float, event: str, **fields: Any) -> str:
    return json.dumps({"ts": ts(minutes_ago), "event": event, **fields}, separators=(",", ":"))


def make_settings(tmp_path: Path) -> settings_mod.Settings:
    return settings_mod.load(
        None,
        environ={},
        overrides={"service.run_dir": str(tmp_path / "run"), "service.log_dir": str(tmp_path)},
    )


@pytest.fixture
def settings(tmp_path: Path) -> settings_mod.Settings:
    """A log directory as a chaos run leaves it: decisions, two workers, one rotation."""
    s = make_settings(tmp_path)
    run = RunDir(s)
    run.watchdog_log.write_text(
        "\n".join(
            [
                line(30, "watchdog_started", pid=10, action="watch"),
                line(20, "crash", worker="primary_1", pid=11, reason="exit -9", action="restart"),
                line(19, "start", worker="primary_1", pid=None, reason="crash", action="start"),
                line(5, "ready", worker="primary_1", pid=12, reason=None, recovered_s=61.2),
                "not json",
            ]
        )
        + "\n"
    )
    # supervisord rotated primary_1.log once: the older lines are in primary_1.log.1.
    run.log("primary_1").with_name("primary_1.log.1").write_text(
        line(40, "worker_ready", worker="primary_1", pid=11, port=5102) + "\n"
    )
    run.log("primary_1").write_text(
        "\n".join(
            [
                "Traceback (most recent call last):",
                line(19.5, "worker_listening", worker="primary_1", port=5102, pid=12),
                line(19.4, "request", worker="primary_1", texts=3),  # not lifecycle
                line(6, "model_loaded", worker="primary_1", model_version="v1", load_s=4.1),
                line(5.5, "worker_ready", worker="primary_1", pid=12, port=5102),
            ]
        )
        + "\n"
    )
    run.log("primary_0").write_text(
        line(35, "worker_ready", worker="primary_0", pid=9, port=5101) + "\n"
    )
    return s


def events(text: str) -> list[str]:
    return [json.loads(raw)["event"] for raw in text.splitlines()]


def run(settings: settings_mod.Settings, **kwargs: Any) -> str:
    out = io.StringIO()
    assert logview.logs_command(settings, out=out, now=NOW, **kwargs) == 0
    return out.getvalue()


def test_decisions_and_lifecycle_merge_in_time_order(settings: settings_mod.Settings) -> None:
    # Without --since only the current files are read (primary_1.log.1 is not).
    assert events(run(settings, as_json=True)) == [
        "worker_ready",  # primary_0, 35 min ago
        "watchdog_started",
        "crash",
        "worker_listening",
        "start",
        "model_loaded",
        "worker_ready",
        "ready",
    ]


def test_json_passes_lines_through_unchanged(settings: settings_mod.Settings) -> None:
    out = run(settings, as_json=True)
    raw = RunDir(settings).watchdog_log.read_text().splitlines()
    assert raw[1] in out.splitlines()  # byte for byte
    assert "request" not in events(out) and "Traceback" not in out


def test_worker_and_since_filter_and_since_reads_rotated_files(
    settings: settings_mod.Settings,
) -> None:
    assert events(run(settings, as_json=True, worker="primary_1")) == [
        "crash",
        "worker_listening",
        "start",
        "model_loaded",
        "worker_ready",
        "ready",
    ]
    # --since reaches into the rotated file: 40 minutes ago is in primary_1.log.1.
    assert events(run(settings, as_json=True, worker="primary_1", since="1h"))[0] == (
        "worker_ready"
    )
    assert events(run(settings, as_json=True, since="10m")) == [
        "model_loaded",
        "worker_ready",
        "ready",
    ]
    with pytest.raises(SentiguardError, match="primary_0, primary_1"):
        run(settings, worker="gateway")


def test_since_parses_the_usual_units() -> None:
    assert logview.parse_since("30s") == timedelta(seconds=30)
    assert logview.parse_since("10m") == timedelta(minutes=10)
    assert logview.parse_since("2h") == timedelta(hours=2)
    assert logview.parse_since("1d") == timedelta(days=1)
    assert logview.parse_since("1.5h") == timedelta(minutes=90)
    with pytest.raises(SentiguardError, match="30s, 10m, 2h, 1d"):
        logview.parse_since("10 minutes")


def test_readable_lines_are_plain_when_piped(settings: settings_mod.Settings) -> None:
    out = run(settings, worker="primary_1", since="25m")
    assert "\033[" not in out
    crash, *_, ready = out.splitlines()
    when = (NOW - timedelta(minutes=20)).astimezone()
    # A line from another day than today starts with its date.
    assert when.strftime("%H:%M:%S.000 crash ") in crash
    assert crash.endswith('primary_1 pid=11 reason="exit -9" -> restart')
    assert ready.endswith("primary_1 pid=12 recovered_s=61.2")  # no null fields


def test_colour_only_on_a_terminal_without_no_color() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logview.use_colour(Tty(), environ={})
    assert not logview.use_colour(Tty(), environ={"NO_COLOR": "1"})
    assert not logview.use_colour(io.StringIO(), environ={})
    entry = logview.parse_line(line(1, "crash", worker="primary_0", action="restart"), False)
    assert entry is not None
    text = logview.format_entry(entry, logview.Painter(True))
    assert "\033[31mcrash" in text and "\033[36mprimary_0\033[0m" in text


def test_fix_hints_are_shown() -> None:
    entry = logview.parse_line(
        line(1, "park", worker="primary_0", reason="corrupt", action="park", fix="retrain"), False
    )
    assert entry is not None
    text = logview.format_entry(entry, logview.Painter(False))
    assert text.endswith("primary_0 reason=corrupt -> park fix: retrain")


def test_follow_prints_appended_lines_and_survives_rotation(
    settings: settings_mod.Settings,
) -> None:
    run_dir = RunDir(settings)
    follower = logview.Follower(lambda: logview.sources(settings), sleep=lambda s: None)
    assert follower.poll() == []  # starts at the end
    with run_dir.watchdog_log.open("a") as f:
        f.write(line(1, "recycle", worker="primary_0", reason="memory", action="drain"))
    assert follower.poll() == []  # a half-written line waits
    with run_dir.watchdog_log.open("a") as f:
        f.write("\n")
    assert [e.record["event"] for e in follower.poll()] == ["recycle"]
    # supervisord rotates primary_0.log: one last line went to the old file first.
    log = run_dir.log("primary_0")
    with log.open("a") as f:
        f.write(line(0.5, "worker_stopping", worker="primary_0", in_flight=0) + "\n")
    os.replace(log, log.with_name("primary_0.log.1"))
    log.write_text(line(0.2, "worker_listening", worker="primary_0", port=5101) + "\n")
    # A worker log that appears later is followed too.
    run_dir.log("primary_2").write_text(line(0.1, "worker_ready", worker="primary_2") + "\n")
    got = [e.record["event"] for e in follower.poll()]
    assert got == ["worker_stopping", "worker_listening", "worker_ready"]
    assert follower.poll() == []


def test_cli_logs_command(
    settings: settings_mod.Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[service]\nrun_dir = "{tmp_path / "run"}"\nlog_dir = "{tmp_path}"\n')
    assert main(["--config", str(config), "logs", "--json", "--worker", "primary_0"]) == 0
    assert events(capsys.readouterr().out)[-1] == "worker_ready"
    assert main(["--config", str(config), "logs", "--since", "soon"]) != 0
    assert "30s, 10m" in capsys.readouterr().err
