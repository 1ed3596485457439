"""Which arithmetic the primary serves with: fp32, int8 or bf16, chosen for the CPU.

`primary.precision` names one, or `auto`: at start the worker measures the candidates this
CPU can run natively (`offered`) on the known-answer texts plus a small calibration set
(arithmetic.py gathers the numbers), and `decide` turns those numbers into a choice. Both
`offered` and `decide` are pure (flags and measurements in, choice out), so every rule is a
fast test with fake CPU flags and fake timings; reading the CPU's flags is `cpu_flags`.

The rules of `decide`:

- a candidate whose answers fail the known-answer probe, or move any calibration answer
  (p_positive) more than `MAX_DRIFT` from fp32's, is refused however fast it is;
- of the rest, the fastest wins; those within `TIE` of it count as equally fast, and of
  those the one that drifts least wins;
- a lossy candidate must beat fp32 by `MIN_GAIN`, or fp32 serves (exact answers are worth
  a few percent), and fp32 serves when every other candidate is refused.

Why these candidates where: int8 (torch's dynamic quantisation) runs fbgemm's AVX2 or
AVX512-VNNI kernels, so it is offered on any x86 CPU with AVX2. bf16 is offered only where
the CPU multiplies bfloat16 natively (avx512_bf16, or AMX's amx_bf16); elsewhere oneDNN
converts to float32 and back, slower than fp32, so measuring it would only cost start time.
Measured (docs/primary-model.md, bench/precision.py): on an AMD EPYC Zen 4 (avx512_vnni,
avx512_bf16, no AMX) int8 was the fastest (before bf16 batches were padded to
LENGTH_MULTIPLE); on an Intel Xeon with AMX bf16 is, on the embedded model and the
base-size stand-in alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "int8", "bf16")
# What an old `primary.quantize` means when `primary.precision` is auto (its default).
QUANTIZE_ALIAS = {"none": "fp32", "int8": "int8"}
# What model_version gains: whoever compares or records versions sees which arithmetic
# answered (a lossy one answers a little differently).
VERSION_SUFFIX = {"fp32": "", "int8": "+int8", "bf16": "+bf16"}
# Batches are padded to a length that is a multiple of this (the attention mask hides the
# padding, so answers do not change). bf16's matrix products run in oneDNN, which builds
# (JIT-compiles) a kernel for every new shape and keeps a bounded number: a review's own
# length gives up to 128 lengths x 32 batch sizes, more than it keeps, and serving the
# embedded model's varied reviews through the batcher ran at 0.42-0.56x of a few texts in
# repeated shapes (docs/primary-model.md, "Precision"). fp32 (MKL) and int8 (fbgemm) need
# no kernel per shape: padding would only cost them compute.
LENGTH_MULTIPLE = {"bf16": 16}
# The largest change of one calibration answer (p_positive) a lossy candidate may make.
# It separates rounding from arithmetic that changes the answers. A trained model's
# rounding stays far below it (embedded model: int8 0.004-0.006, bf16 0.001-0.002). The
# base-size stand-in's random encoder gives [CLS] states that differ little between texts,
# so its fitted head magnifies every rounding: on an Intel Xeon with AMX its bf16 moved
# answers by 0.12-0.18 (0-2 of 256 held-out labels flipped) and its int8 by 0.51-0.96 (44 of
# 256 flipped, refused). An arithmetic that swaps or garbles answers moves them towards
# 1 and fails the probe besides. bench/precision.py prints both models' drift.
MAX_DRIFT = 0.2
TIE = 0.05  # rates within 5 % of the fastest: start-up timing noise, not a real difference
MIN_GAIN = 1.10  # a lossy arithmetic must be 10 % faster than fp32 to be worth its drift
INT8_FLAGS = frozenset({"avx2", "avx512_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The flags worth printing when telling CPUs apart (logs, bench).
RELEVANT_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


@dataclass(frozen=True)
class Measured:
    """One candidate's start-up measurement: texts/s on one batch lane, the largest change
    of p_positive from fp32's over the texts it ran, and whether it passed the probe."""

    precision: str
    rate: float
    drift: float
    probe_passed: bool = True
    texts: int = 0  # calibration texts it ran (a refused one may stop early)


@dataclass(frozen=True)
class Choice:
    """The arithmetic to serve with and why: `as_json()` is what the worker reports."""

    precision: str
    requested: str  # auto, fp32, int8 or bf16
    setting: str  # the setting that asked: primary.precision or primary.quantize
    reason: str
    measured: tuple[Measured, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    cpu_flags: tuple[str, ...] = ()
    measure_ms: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The precision report of worker_ready, /ready and /status."""
        body: dict[str, Any] = {
            "precision": self.precision,
            "requested": self.requested,
            "setting": self.setting,
            "reason": self.reason,
        }
        if self.measured:
            body["max_drift"] = MAX_DRIFT
            body["rates"] = {m.precision: round(m.rate, 1) for m in self.measured}
            body["drift"] = {m.precision: round(m.drift, 4) for m in self.measured}
            body["measure_ms"] = self.measure_ms
        if self.refused:
            body["refused"] = dict(self.refused)
        if self.skipped:
            body["skipped"] = dict(self.skipped)
        if self.cpu_flags:
            body["cpu_flags"] = list(self.cpu_flags)
        return body


def requested(precision: str, quantize: str) -> tuple[str, str]:
    """(the precision asked for, the setting that asked).

    `primary.precision` wins whenever it is not auto; while it is auto (its default), an
    old config's `primary.quantize` (none or int8) still decides, so a config that pinned
    `quantize = "none"` keeps serving fp32; quantize's own default, auto, defers.
    """
    if precision != "auto":
        return precision, "primary.precision"
    if quantize in QUANTIZE_ALIAS:
        return QUANTIZE_ALIAS[quantize], "primary.quantize"
    return "auto", "primary.precision"


def fixed(precision: str, setting: str) -> Choice:
    """The choice when a setting names the precision: nothing is measured."""
    return Choice(precision, precision, setting, f"{setting} = {precision}")


def offered(flags: Iterable[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the candidates worth measuring on a CPU with `flags`, fp32 first; why the others
    are skipped)."""
    have = frozenset(flags)
    candidates, skipped = ["fp32"], {}
    if have & INT8_FLAGS:
        candidates.append("int8")
    else:
        skipped["int8"] = "no avx2/avx512_vnni/amx_int8: int8 kernels would run unvectorised"
    if have & BF16_FLAGS:
        candidates.append("bf16")
    else:
        skipped["bf16"] = "no avx512_bf16/amx_bf16: bfloat16 would be emulated, slower than fp32"
    return tuple(candidates), skipped


def refusal(m: Measured, max_drift: float = MAX_DRIFT) -> str | None:
    """Why `m` may not serve, or None."""
    if not m.probe_passed:
        return "fails the known-answer probe"
    if m.drift > max_drift:
        return f"drift {m.drift:.4f} > {max_drift:g}"
    return None


def decide(
    flags: Iterable[str],
    measured: Sequence[Measured],
    *,
    max_drift: float = MAX_DRIFT,
    measure_ms: float | None = None,
) -> Choice:
    """The choice of `auto`, from the CPU's flags and the start-up measurements."""
    have = frozenset(flags)
    candidates, skipped = offered(have)
    by_name = {m.precision: m for m in measured if m.precision in candidates}
    refused = {name: why for name, m in by_name.items() if (why := refusal(m, max_drift))}
    refused.pop("fp32", None)  # the reference: it is what the others are held to
    usable = [m for name, m in by_name.items() if name not in refused]

    def choice(precision: str, reason: str) -> Choice:
        return Choice(
            precision,
            "auto",
            "primary.precision",
            reason,
            measured=tuple(measured),
            refused=refused,
            skipped=skipped,
            cpu_flags=tuple(f for f in RELEVANT_FLAGS if f in have),
            measure_ms=measure_ms,
        )

    fp32 = by_name.get("fp32")
    lossy = [m for m in usable if m.precision != "fp32"]
    if fp32 is None or not lossy:
        why = "every other candidate refused" if refused else "no other candidate on this CPU"
        return choice("fp32", why)
    fastest = max(m.rate for m in lossy)
    if fastest < fp32.rate * MIN_GAIN:
        return choice("fp32", f"no candidate {MIN_GAIN:g}x faster than fp32")
    tied = [m for m in lossy if m.rate >= fastest * (1 - TIE)]
    best = min(tied, key=lambda m: (m.drift, -m.rate))
    gain = best.rate / fp32.rate
    return choice(best.precision, f"fastest within drift {max_drift:g}: {gain:.2f}x fp32")


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`); empty when unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(path: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, as lscpu prints it ("" when unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""
