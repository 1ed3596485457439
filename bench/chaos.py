"""Chaos benchmark: the resilience scenarios of tests/test_resilience.py, run longer.

Starts the real service (`sentiguard up`, 2 workers, faults enabled) on free ports in a
temporary directory, runs each scenario with the same drivers the tests use
(sentiguard/chaos/scenarios.py), and prints, per scenario: requests, statuses, answers by
model/reason, latency quantiles, and time-to-detect / time-to-recover of each fault.
It prints numbers, never pass/fail.

    .venv/bin/python bench/chaos.py                      # every scenario, defaults
    .venv/bin/python bench/chaos.py --only kill,hang --kill-s 60
    .venv/bin/python bench/chaos.py --model /path/to/another/model --only kill
    .venv/bin/python bench/chaos.py --model standin     # the base-size stand-in
    .venv/bin/python bench/chaos.py --json results.json
    .venv/bin/python bench/chaos.py --only hostile_body,flood --flood-connections 5000

`hostile_body` and `flood` (issue 11) run against the same service: a body of the maximum
size built to be slow to check, and thousands of half-open connections while closed-loop
clients keep the workers busy (sentiguard/chaos/floods.py). `slow_body` (issue 16) opens
`--slow-body-connections` (1000) that each send a whole header announcing a 200 KB body, then
one byte every 2 s, and counts how the gateway ended them (408, 503, evicted) and how new
clients fared meanwhile (sentiguard/chaos/slow_bodies.py).

`gateway_kill` SIGKILLs one of the gateway processes under `--gateway-clients` (16) clients
and counts refused connections and lost requests against those in flight on it;
`stop_under_load` runs `sentiguard down` under `--stop-clients` (8) clients and counts resets
(sentiguard/chaos/gateways.py). `stop_under_load` stops the service, so it runs last.

    .venv/bin/python bench/chaos.py --only gateway_kill,stop_under_load

`gateway_churn` (issue 16) SIGKILLs a gateway process every `--churn-every-s` (4) s for
`--churn-s` (40) s under 8 clients while a probe times /metrics; `supervisord_kill` SIGKILLs
supervisord under 8 clients and times how long until every program runs under the new one
and every worker is ready; `up_kill_then_down` (on a service of its own) SIGKILLs `up` under
8 clients, then runs `sentiguard down` and says whether it had to kill anything
(sentiguard/chaos/supervision.py).

    .venv/bin/python bench/chaos.py --only gateway_churn,supervisord_kill,up_kill_then_down

`up_restart` (issue 16) restarts `sentiguard up` itself `--up-restarts` (3) times under
`--up-restart-clients` (8) clients, first under socket activation (systemd-socket-activate
holds the socket across restarts), then with each `up` binding its own, and counts refused
connections, failed requests and the longest wait (sentiguard/chaos/activation.py). It runs
on services of its own, one worker each.

    .venv/bin/python bench/chaos.py --only up_restart

`reload` runs `sentiguard reload` (same model) under `--reload-clients` (4) clients and
prints answers by model/reason, failures, the fallback share, fallback answers by reload
step and each worker's restart window (sentiguard/chaos/reloads.py).

    .venv/bin/python bench/chaos.py --only reload
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sentiguard.chaos import activation, capacity, floods, slow_bodies, supervision
from sentiguard.chaos import gateways as gateway_faults
from sentiguard.chaos import scenarios as chaos
from sentiguard.chaos.reloads import reload_under_load
from sentiguard.chaos.service import ServiceHandle, start_service
from sentiguard.chaos.timeline import Result
from sentiguard.settings import ROOT

SCENARIOS = (
    "hold",
    "deadline_abuse",
    "overload",
    "leak",
    "hang",
    "kill",
    "broken_model",
    "hostile_body",
    "flood",
    "slow_body",
    "gateway_kill",
    "gateway_churn",
    "supervisord_kill",
    "reload",
    "stop_under_load",
    "up_restart",
    "up_kill_then_down",
)


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if len(known) == 1:
        return f"{known[0]:.2f}"
    missed = len(values) - len(known)
    return f"median {statistics.median(known):.2f}, max {max(known):.2f} (n={len(known)}" + (
        f", missed {missed})" if missed else ")"
    )


def report(result: Result) -> dict[str, Any]:
    summary = result.summary()
    print(f"\n== {result.scenario} ({summary['duration_s']} s)")
    print(f"  requests {summary['requests']}  statuses {summary['statuses']}")
    print(f"  answers by model/reason {summary['answers']}")
    print(
        f"  latency of answered p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms  "
        f"max (all) {summary['max_ms']} ms"
    )
    if result.faults:
        print(f"  faults {len(result.faults)}")
        print(f"  time to detect (s): {_spread([f.detect_s for f in result.faults])}")
        print(f"  time to recover (s): {_spread([f.recover_s for f in result.faults])}")
        replaced = [f.replaced_s for f in result.faults if f.replaced_s is not None]
        if replaced:
            print(f"  time to replace (s): {_spread(list(replaced))}")
    for key, value in summary.items():
        if key not in (
            "scenario",
            "duration_s",
            "requests",
            "statuses",
            "answers",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "faults",
        ):
            print(f"  {key} {value}")
    return summary


def report_summary(summary: dict[str, Any]) -> dict[str, Any]:
    print(f"\n== {summary['scenario']}")
    for key, value in summary.items():
        if key != "scenario":
            print(f"  {key} {value}")
    return summary


def run_hostile(args: argparse.Namespace, svc: ServiceHandle, name: str) -> dict[str, Any]:
    if name == "slow_body":
        return report_summary(
            slow_bodies.slow_bodies(svc.port, args.slow_body_connections).summary()
        )
    if name == "hostile_body":
        return report_summary(
            floods.hostile_body(svc.port, args.hostile_bytes, args.hostile_rounds).summary()
        )
    result = floods.flood(
        svc.port,
        args.flood_connections,
        wait_close_s=2 * svc.settings.gateway.header_timeout_s + 10,
        rounds=args.flood_rounds,
        clients=args.flood_clients,
    )
    return report_summary(result.summary())


def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    only = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    overrides: dict[str, Any] = {}
    if args.memory_limit_mb is not None:
        overrides["watchdog.memory_limit_mb"] = args.memory_limit_mb
        overrides["watchdog.memory_critical_mb"] = args.memory_limit_mb + 1000
    if args.model == "standin":
        from sentiguard.training import standin

        args.model = str(standin.ensure())
    if args.model:
        overrides["primary.model"] = args.model
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = value
    if args.gateway_processes:
        overrides["gateway.processes"] = args.gateway_processes
    results = []
    # stop_under_load ends the shared service: last of those that use it.
    own_service = ("broken_model", "stop_under_load", "up_restart", "up_kill_then_down")
    healing = [s for s in only if s not in own_service]
    if "stop_under_load" in only:
        healing.append("stop_under_load")
    if healing:
        print(f"starting the service ({args.workers} workers) in {workdir / 'service'} ...")
        svc: ServiceHandle = start_service(
            workdir / "service", workers=args.workers, overrides=overrides
        )
        print(f"ready on port {svc.port} after {time.monotonic() - svc.started_at:.1f} s")
        try:
            for name in healing:
                svc.wait_ready()
                if name == "hold":
                    r = capacity.hold(svc, low=4, high=args.hold_clients, seconds=args.hold_s)
                elif name == "deadline_abuse":
                    r = capacity.deadline_abuse(svc, seconds=args.abuse_s)
                elif name == "overload":
                    r = chaos.overload(svc, clients=args.clients, duration_s=args.overload_s)
                elif name == "leak":
                    r = chaos.leak(svc, index=0)
                elif name == "hang":
                    r = chaos.hang(svc, index=1)
                elif name in ("hostile_body", "flood", "slow_body"):
                    results.append(run_hostile(args, svc, name))
                    continue
                elif name == "gateway_kill":
                    r = gateway_faults.gateway_kill(
                        svc, clients=args.gateway_clients, after_s=args.gateway_kill_s
                    )
                elif name == "gateway_churn":
                    r = supervision.gateway_churn(
                        svc, duration_s=args.churn_s, every_s=args.churn_every_s
                    )
                elif name == "supervisord_kill":
                    r = supervision.supervisord_kill(svc)
                elif name == "stop_under_load":
                    r = gateway_faults.stop_under_load(svc, clients=args.stop_clients)
                elif name == "reload":
                    r = reload_under_load(svc, clients=args.reload_clients)
                else:
                    r = chaos.kill(svc, duration_s=args.kill_s, every_s=args.every_s)
                results.append(report(r))
        finally:
            took, orphans = svc.stop()
            print(f"\nstopped in {took:.1f} s, orphans {len(orphans)}")
    if "broken_model" in only:
        source = Path(args.model) if args.model else ROOT / "models" / "primary"
        chaos.corrupt_copy(source, workdir / "broken")
        svc = start_service(
            workdir / "broken-service",
            workers=args.workers,
            overrides={**overrides, "primary.model": str(workdir / "broken")},
            wait=False,
        )
        try:
            results.append(report(chaos.broken_model(svc, window_s=args.broken_s)))
        finally:
            svc.stop()
    if "up_kill_then_down" in only:
        svc = start_service(workdir / "up-kill", workers=args.workers, overrides=overrides)
        try:
            results.append(report(supervision.up_kill_then_down(svc)))
        finally:
            svc.stop()
    if "up_restart" in only:
        for activated in (True, False):
            kind = "activated" if activated else "plain"
            kept = activation.start_kept(workdir / f"up-restart-{kind}", 1, activated, overrides)
            try:
                results.append(
                    report(
                        activation.restart_under_load(
                            kept, clients=args.up_restart_clients, restarts=args.up_restarts
                        )
                    )
                )
            finally:
                orphans = activation.stop_kept(kept)
                print(f"  orphans after the keeper loop's stop {len(orphans)}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--model", help="primary model directory, hub id or standin (default: embedded)"
    )
    parser.add_argument("--kill-s", type=float, default=60.0, help="kill scenario length")
    parser.add_argument("--every-s", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--overload-s", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=64, help="overload clients")
    parser.add_argument("--broken-s", type=float, default=90.0, help="broken-model watch window")
    parser.add_argument(
        "--memory-limit-mb", type=int, help="watchdog.memory_limit_mb (default: auto)"
    )
    parser.add_argument(
        "--churn-s", type=float, default=40.0, help="gateway_churn: how long the kills go on"
    )
    parser.add_argument(
        "--churn-every-s", type=float, default=4.0, help="gateway_churn: seconds between kills"
    )
    parser.add_argument("--gateway-clients", type=int, default=16, help="gateway_kill clients")
    parser.add_argument(
        "--gateway-kill-s", type=float, default=10.0, help="gateway_kill: load kept after the kill"
    )
    parser.add_argument("--stop-clients", type=int, default=8, help="stop_under_load clients")
    parser.add_argument("--reload-clients", type=int, default=4, help="reload: clients")
    parser.add_argument("--up-restart-clients", type=int, default=8, help="up_restart: clients")
    parser.add_argument("--up-restarts", type=int, default=3, help="up_restart: restarts of up")
    parser.add_argument(
        "--gateway-processes", type=int, help="gateway.processes (default: the setting's, 2)"
    )
    parser.add_argument("--hostile-bytes", type=int, default=2_000_000, help="hostile body size")
    parser.add_argument("--hostile-rounds", type=int, default=5)
    parser.add_argument("--flood-connections", type=int, default=5000)
    parser.add_argument("--slow-body-connections", type=int, default=1000)
    parser.add_argument(
        "--flood-clients", type=int, default=64, help="closed-loop clients during the flood"
    )
    parser.add_argument(
        "--flood-rounds", type=int, default=5, help="new-client requests during, after"
    )
    parser.add_argument("--hold-clients", type=int, default=16, help="hold: clients after 4")
    parser.add_argument("--hold-s", type=float, default=40.0, help="hold: seconds at that load")
    parser.add_argument("--abuse-s", type=float, default=20.0, help="deadline_abuse: each phase")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any setting for the service, e.g. gateway.max_in_flight_per_worker=16 (repeat)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the summaries here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sentiguard-chaos-") as tmp:
        results = run(args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
