"""Capacity benchmark: this machine's limit for the base-size primary, and the share of it
the service reaches.

    .venv/bin/python bench/capacity.py                  # 16 clients, 40 s, the stand-in
    .venv/bin/python bench/capacity.py --clients 4 --seconds 20
    .venv/bin/python bench/capacity.py --model /path/to/structbert-base --set primary.workers=2
    .venv/bin/python bench/capacity.py --limit-only     # the arithmetic, no service

1. The limit. sgemm GFLOP/s measured with torch on one thread at BERT-base shapes
   ((batch * tokens) x 768 @ 768 x 3072, 3072 x 768 and 768 x 768, one layer's mix), times
   the cores the workers may use (min(CPUs, workers x batch lanes x torch threads)). The
   work of one review at the mean token length t of the held-out reviews (the model's
   tokenizer, [CLS]/[SEP] included, capped at primary.sequence_length): per layer
   2t(4*768^2 + 2*768*3072) + 2*2*t^2*768, times 12, plus pooler and classifier. The
   limit in reviews/s is one over the other. It counts matrix products only (no softmax,
   LayerNorm, GELU, tokenizer, HTTP), so no real service reaches it.
2. The service. The real service on the model (`start_service`, 2 workers), driven by N
   closed-loop clients (sentiguard/chaos/load.py) for --seconds: primary answers/s and its
   share of the limit. The load driver sends its own short reviews, not held-out ones, so
   the limit is also printed at their mean length: that share compares like with like.

The worker runs its last layer for [CLS] only (primary/model.py); the limit "as served"
counts that pass, and is printed beside the one the formula above gives. With
`primary.quantize = "int8"` (the worker's Linear layers in dynamic int8) the service is
not bound by sgemm: the int8 Linear's rate at the same shapes is measured too, and the
limit at that rate (weight products int8, attention products float32) printed beside.
Numbers, never pass/fail; they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentiguard import settings as settings_mod
from sentiguard.chaos.load import TEXTS as LOAD_TEXTS
from sentiguard.chaos.load import Load
from sentiguard.chaos.service import start_service
from sentiguard.data import split
from sentiguard.primary.batcher import batch_lanes
from sentiguard.training import standin

HIDDEN, INTERMEDIATE = 768, 3072


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int


def review_gflop(t: float, shape: Shape, cls_only_last: bool = False) -> tuple[float, float]:
    """GFLOP of one review of `t` tokens, (matrix products with weights, attention):
    the formula above, or (`cls_only_last`) the pass the worker runs."""
    h, i = shape.hidden, shape.intermediate
    weights = shape.layers * 2 * t * (4 * h * h + 2 * h * i)
    attention = shape.layers * 2 * 2 * t * t * h
    if cls_only_last:
        # Keys and values of every token; query, output and feed-forward of [CLS] only.
        weights -= 2 * (t - 1) * (2 * h * h + 2 * h * i)
        attention -= 2 * 2 * t * (t - 1) * h
    weights += 2 * h * h + 2 * h * 2  # pooler, classifier
    return weights / 1e9, attention / 1e9


def matmul_rates(tokens: int, seconds: float, arithmetic: str = "none") -> dict[str, float]:
    """G(FL)OP/s of one thread at each of a layer's weight shapes and over the layer's mix.

    `none`: sgemm (torch.mm, float32). `int8`: the worker's dynamically quantised Linear
    (sentiguard.primary.model.quantize), the same shapes. Best of repeated runs.
    """
    import torch

    from sentiguard.primary.model import quantize

    torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = {
        "768x768": (HIDDEN, HIDDEN, 4),  # (k, n, times per layer): Q, K, V, attention out
        "768x3072": (HIDDEN, INTERMEDIATE, 1),
        "3072x768": (INTERMEDIATE, HIDDEN, 1),
    }
    rates: dict[str, float] = {}
    mix_flop = mix_s = 0.0
    with torch.inference_mode():
        for name, (k, n, times) in shapes.items():
            a, b = torch.randn(tokens, k), torch.randn(k, n)
            if arithmetic == "none":
                run = functools.partial(torch.mm, a, b)
            else:
                linear = quantize(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)), "int8")
                run = functools.partial(linear, a)
            for _ in range(3):
                run()  # warm-up: first calls pick kernels and fault pages in
            best = float("inf")
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            rates[name] = 2 * tokens * k * n / best / 1e9
            mix_flop += times * 2 * tokens * k * n
            mix_s += times * best
    rates["layer mix"] = mix_flop / mix_s / 1e9
    return rates


def mean_tokens(model_dir: Path, texts: list[str], cap: int) -> float:
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(str(model_dir / "vocab.txt"), do_lower_case=True)
    ids = tokenizer(texts, truncation=True, max_length=cap)["input_ids"]
    return statistics.fmean(len(x) for x in ids)


def model_shape(model_dir: Path) -> Shape:
    import json

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return Shape(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"])


def limit(args: argparse.Namespace, model_dir: Path, settings: Any) -> dict[str, Any]:
    shape = model_shape(model_dir)
    cap = settings.primary.sequence_length
    heldout_t = mean_tokens(model_dir, split().heldout.texts, cap)
    load_t = mean_tokens(model_dir, list(LOAD_TEXTS), cap)
    batch_tokens = round(args.batch * heldout_t)
    sgemm = matmul_rates(batch_tokens, args.sgemm_seconds)
    arithmetic = settings.primary.quantize
    linear = (
        sgemm if arithmetic == "none" else matmul_rates(batch_tokens, args.sgemm_seconds, "int8")
    )
    cpus = len(os.sched_getaffinity(0))
    lanes = batch_lanes(settings) * settings.primary.torch_threads
    cores = min(cpus, settings.primary.workers * lanes)
    print(f"== limit ({model_dir})")
    print(f"  model {shape.layers} layers x {shape.hidden}, intermediate {shape.intermediate}")
    print(f"  M = {batch_tokens} tokens ({args.batch} reviews x {heldout_t:.1f}), one thread:")
    print("  sgemm GFLOP/s " + ", ".join(f"{k} {v:.1f}" for k, v in sgemm.items()))
    if arithmetic != "none":
        print(
            f"  {arithmetic} Linear GOP/s " + ", ".join(f"{k} {v:.1f}" for k, v in linear.items())
        )
    print(
        f"  cores the workers may use {cores} (CPUs {cpus}, {settings.primary.workers} workers "
        f"x {lanes} lane threads): {sgemm['layer mix'] * cores:.1f} sgemm GFLOP/s"
    )
    out: dict[str, Any] = {"sgemm_gflops_per_core": sgemm["layer mix"], "cores": cores}
    for label, t in (("held-out reviews", heldout_t), ("load driver's reviews", load_t)):
        limits: dict[str, float] = {}  # reviews/s, by what bounds it
        gflop: dict[str, float] = {}
        for how, cls_only in (("", False), (", as served", True)):
            weights, attention = review_gflop(t, shape, cls_only)
            gflop[how] = weights + attention
            # The brief's limit: every product at the sgemm rate.
            limits[f"sgemm{how}"] = sgemm["layer mix"] * cores / (weights + attention)
            # The primary's own arithmetic: the weight products at its Linear rate.
            if arithmetic != "none":
                per_core_s = weights / linear["layer mix"] + attention / sgemm["layer mix"]
                limits[f"{arithmetic}{how}"] = cores / per_core_s
        print(
            f"  {label}: mean {t:.1f} tokens, {gflop['']:.2f} GFLOP a review "
            f"({gflop[', as served']:.2f} as served: last layer on [CLS]); limit in reviews/s: "
            + ", ".join(f"{key} {value:.1f}" for key, value in limits.items())
        )
        entry = {"tokens": t, "limits": limits}
        out[label] = entry
    return out


def drive(args: argparse.Namespace, overrides: dict[str, Any], workdir: Path) -> dict[str, Any]:
    print(f"\n== service: {args.clients} closed-loop clients for {args.seconds:.0f} s")
    workers = int(overrides.pop("primary.workers"))  # start_service's own argument
    service = start_service(workdir, workers=workers, faults=False, overrides=overrides)
    try:
        for _ in range(4):  # warm-up: first batches allocate buffers
            service.analyze(LOAD_TEXTS[0], timeout=60.0)
        restarts_before = _restarts(service.status())
        with Load(service.port, args.clients) as load:
            time.sleep(args.seconds)  # the measurement window itself, not a wait for a state
        samples = load.snapshot()
        status = service.status()
    finally:
        service.stop()
    window = (samples[-1].start + samples[-1].latency_s - samples[0].start) if samples else 0.0
    answers = Counter((s.model, s.reason) for s in samples if s.status == 200)
    statuses = Counter(s.status for s in samples)
    primary = answers.get(("primary", None), 0)
    latencies = sorted(s.latency_s * 1000 for s in samples if s.status == 200)
    p50 = latencies[len(latencies) // 2] if latencies else None
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else None
    restarts = _restarts(status)
    print(f"  requests {len(samples)} in {window:.1f} s, statuses {dict(statuses)}")
    print(f"  answers by model/reason {dict(answers)}")
    print(f"  latency p50 {p50:.0f} ms, p99 {p99:.0f} ms" if latencies else "  no answers")
    print(f"  worker restarts during the run {_diff(restarts, restarts_before)}")
    rate = primary / window if window else 0.0
    print(f"  primary answers/s {rate:.2f}  (all answers/s {sum(answers.values()) / window:.1f})")
    return {"primary_per_s": rate, "answers": {f"{m}/{r}": n for (m, r), n in answers.items()}}


def _restarts(status: dict[str, Any]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for worker in status.get("workers", []):
        total.update(worker.get("restarts") or {})
    return dict(total)


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the base-size stand-in)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="reviews a batch, for the sgemm M")
    parser.add_argument("--sgemm-seconds", type=float, default=2.0, help="per matrix shape")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the service, e.g. watchdog.memory_limit_mb=4000",
    )
    parser.add_argument("--limit-only", action="store_true", help="only the limit; no service")
    args = parser.parse_args(argv)
    model_dir = Path(args.model).resolve() if args.model else standin.ensure()
    overrides: dict[str, Any] = {"primary.model": str(model_dir), "primary.workers": args.workers}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = value
    settings = settings_mod.load(None, environ={}, overrides=overrides)
    bound = limit(args, model_dir, settings)
    if args.limit_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="sentiguard-capacity-") as tmp:
        served = drive(args, dict(overrides), Path(tmp))
    print("\n== share of the limit (primary answers/s / limit)")
    for label in ("held-out reviews", "load driver's reviews"):
        entry = bound[label]
        shares = {key: served["primary_per_s"] / value for key, value in entry["limits"].items()}
        print(
            f"  at the {label}' mean length ({entry['tokens']:.1f} tokens): "
            + ", ".join(f"{share:.0%} of the {key} limit" for key, share in shares.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
