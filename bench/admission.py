"""Admission policies side by side: which `gateway.admission` holds the primary at capacity?

For each policy (`aimd`, `gradient`, `fixed`; `gateway.admission`) it starts the real
service (`sentiguard up`, 2 workers) with the same model and the same injected slowness,
lets the limiter learn under `--low` clients, then measures `--low` and `--high` closed-loop
clients for `--seconds` each: the primary's answers/s, its share of the answers, the client
p50/p99 against the deadline, the answers by model/reason, and each worker's `capacity`
(the learnt limit, summed over the gateway processes) sampled from /status during the
phase. `--rounds` repeats the policies interleaved (a b c a b c), so a machine that gets
busier during the run does not favour whichever policy ran first. It prints numbers,
never pass/fail; the lead takes the real ones on a quiet machine.

The model: by default the embedded one with a `slow` fault on each worker (`--slow-ms`,
added to every forward pass, so a batch costs about as much as one review of a base-size
model); `--model standin` the base-size stand-in (`sentiguard.training.standin.ensure()`,
built on first use, ~400 MB, outside git), with no fault unless `--slow-ms` is given.

    .venv/bin/python bench/admission.py                        # 3 policies, 20 s a phase
    .venv/bin/python bench/admission.py --seconds 40 --rounds 2 --json admission.json
    .venv/bin/python bench/admission.py --model standin --slow-ms 0 --only aimd,gradient
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sentiguard.chaos.load import Load, Sample
from sentiguard.chaos.service import ServiceHandle, start_service

POLICIES = ("aimd", "gradient", "fixed")


class CapacityWatch:
    """Samples each worker's `capacity` from /status every `interval_s` while it runs."""

    def __init__(self, service: ServiceHandle, interval_s: float = 0.5) -> None:
        self.service = service
        self.interval_s = interval_s
        self.seen: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CapacityWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                workers = self.service.status()["workers"]
            except (AssertionError, OSError):
                continue
            for w in workers:
                if isinstance(w.get("capacity"), int):
                    self.seen.setdefault(w["name"], []).append(w["capacity"])


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase(service: ServiceHandle, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` closed-loop clients for `seconds`: what the primary served, and how fast."""
    with CapacityWatch(service) as watch, Load(service.port, clients) as load:
        start = time.monotonic()
        time.sleep(seconds)  # the measuring window itself
    elapsed = time.monotonic() - start
    samples: list[Sample] = load.snapshot()
    answered = [s for s in samples if s.status == 200]
    primary = [s for s in answered if s.model == "primary"]
    latencies = [s.latency_s for s in answered]
    deadline_ms = service.settings.gateway.deadline_ms
    p99 = quantile(latencies, 0.99)
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(samples),
        "primary_per_s": round(len(primary) / elapsed, 2),
        "primary_share": round(len(primary) / len(answered), 3) if answered else None,
        "p50_ms": _ms(quantile(latencies, 0.50)),
        "p99_ms": _ms(p99),
        "p99_over_deadline_ms": None if p99 is None else round(p99 * 1000 - deadline_ms, 1),
        "statuses": dict(Counter(s.status for s in samples)),
        "answers": dict(Counter(f"{s.model}/{s.reason}" for s in answered)),
        "capacity_mean": {
            name: round(statistics.fmean(values), 2) for name, values in watch.seen.items()
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def run_policy(root: Path, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"gateway.admission": policy}
    if args.model_dir is not None:
        overrides["primary.model"] = str(args.model_dir)
    service = start_service(root, workers=2, faults=True, overrides=overrides)
    try:
        if args.slow_ms:
            for index in range(service.workers):
                response = service.fault(index, {"kind": "slow", "ms": args.slow_ms})
                assert response.status == 200, f"slow fault refused: {response.body}"
        phase(service, args.low, args.warmup_s)  # the limiters learn; not counted
        low = phase(service, args.low, args.seconds)
        high = phase(service, args.high, args.seconds)
        restarts: Counter[str] = Counter()
        for w in service.status()["workers"]:
            restarts.update(w.get("restarts") or {})
        return {
            "policy": policy,
            "low": low,
            "high": high,
            "high_over_low": (
                round(high["primary_per_s"] / low["primary_per_s"], 3)
                if low["primary_per_s"]
                else None
            ),
            "restarts": dict(restarts),
        }
    finally:
        service.stop()


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'policy':<9} {'clients':>7} {'primary/s':>9} {'share':>6} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'capacity (mean per worker)':<30}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        for key in ("low", "high"):
            p = r[key]
            capacity = ", ".join(f"{n}={v}" for n, v in sorted(p["capacity_mean"].items()))
            print(
                f"{r['policy']:<9} {p['clients']:>7} {p['primary_per_s']:>9} "
                f"{p['primary_share'] or 0:>6} {p['p50_ms'] or 0:>8} {p['p99_ms'] or 0:>8} "
                f"{capacity:<30}"
            )
        print(f"{'':<9} high/low primary/s: {r['high_over_low']}  restarts: {r['restarts']}")
    by_policy: dict[str, list[float]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(r["high"]["primary_per_s"])
    print("\nprimary/s at the high load, median over rounds:")
    for policy, rates in by_policy.items():
        print(f"  {policy:<9} {statistics.median(rates):.2f}  ({rates})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(POLICIES), help="policies, comma-separated")
    parser.add_argument("--low", type=int, default=4, help="clients of the low phase")
    parser.add_argument("--high", type=int, default=16, help="clients of the high phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="each measured phase")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="learning, not counted")
    parser.add_argument("--rounds", type=int, default=1, help="policies repeated, interleaved")
    parser.add_argument(
        "--model", default="embedded", help="embedded | standin | a model directory"
    )
    parser.add_argument(
        "--slow-ms",
        type=float,
        default=None,
        help="slow fault per forward pass (default 150 on the embedded model, 0 otherwise)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    policies = [p for p in args.only.split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        parser.error(f"unknown policies {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    args.model_dir = None
    if args.model == "standin":
        from sentiguard.training import standin

        args.model_dir = standin.ensure()
    elif args.model != "embedded":
        args.model_dir = Path(args.model).resolve()
    if args.slow_ms is None:
        args.slow_ms = 150.0 if args.model == "embedded" else 0.0
    print(
        f"model {args.model_dir or 'embedded'}, slow fault {args.slow_ms} ms a forward pass, "
        f"{args.low} then {args.high} clients, {args.seconds} s a phase, {args.rounds} round(s)",
        file=sys.stderr,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="sentiguard-admission-") as tmp:
        for round_index in range(args.rounds):
            for policy in policies:
                root = Path(tmp) / f"{policy}-{round_index}"
                print(f"round {round_index + 1}: {policy} ...", file=sys.stderr)
                results.append(run_policy(root, policy, args))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
