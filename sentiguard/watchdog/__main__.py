"""`python -m sentiguard.watchdog`: the watchdog process supervisord runs.

Settings come from the `SENTIGUARD_*` environment `sentiguard up` hands to every program.
SIGTERM and SIGINT only ask the loop to stop; it finishes its round and exits 0.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from sentiguard import settings as settings_mod
from sentiguard.errors import ExitCode, SettingsError
from sentiguard.logs import exit_now
from sentiguard.watchdog.main import Watchdog


def main() -> int:
    try:
        settings = settings_mod.load()
    except SettingsError as e:
        print(f"sentiguard.watchdog: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    watchdog = Watchdog(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        watchdog.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return watchdog.run()


if __name__ == "__main__":
    exit_now(main())
