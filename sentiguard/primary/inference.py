"""The primary model at inference: batched, length-bucketed prediction.

A `PrimaryModel` (built by `model.load_model`) gives one `Prediction` per text, in input
order. It does not call the ModelScope pipeline per text: the pipeline's preprocessor pads
every input to `sequence_length`, which makes a 20-character review cost a 128-token
forward pass. Instead the batch is tokenized with the pipeline's own tokenizer, sorted by
length, cut into buckets padded only to their longest member, and run through the
pipeline's own model; a test checks the scores equal the plain pipeline call's.

A model serves in one arithmetic (`precision`: fp32, int8 or bf16, chosen at load by
`primary.precision`, see arithmetic.py); bf16's forward passes run in its autocast
`context`, on the batched and the pipeline path alike.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sentiguard.errors import ModelLoadError
from sentiguard.primary.precision import LENGTH_MULTIPLE, VERSION_SUFFIX

if TYPE_CHECKING:
    import torch

POSITIVE_LABELS = frozenset({"正面", "positive", "pos", "label_1", "1"})
NEGATIVE_LABELS = frozenset({"负面", "negative", "neg", "label_0", "0"})
# The fixed cost of one forward pass, in padded tokens: measured on the embedded model
# with one torch thread, a pass costs ~1.5 ms plus ~0.004 ms per token. Buckets trade
# this overhead against padding short reviews up to the length of a long one.
FORWARD_OVERHEAD_TOKENS = 256


@dataclass(frozen=True)
class Prediction:
    """One text's answer: probability of positive, and whether the text was cut to fit."""

    p_positive: float
    truncated: bool


def p_positive_from_output(output: dict[str, Any]) -> float:
    """Map a pipeline's `{'labels': [...], 'scores': [...]}` to the probability of positive.

    Accepts "正面"/"负面" (the hub model) and positive/negative, LABEL_1/LABEL_0, 1/0 ids.
    """
    scores = dict(zip((str(x).lower() for x in output["labels"]), output["scores"], strict=True))
    for label, score in scores.items():
        if label in POSITIVE_LABELS:
            return float(score)
    for label, score in scores.items():
        if label in NEGATIVE_LABELS:
            return 1.0 - float(score)
    raise ValueError(f"labels {output['labels']!r} name neither a positive nor a negative class")


def positive_index(id2label: dict[Any, Any]) -> int:
    """The logit index of the positive class, from a config's id2label."""
    for index, label in id2label.items():
        if str(label).lower() in POSITIVE_LABELS:
            return int(index)
    if len(id2label) == 2:
        for index, label in id2label.items():
            if str(label).lower() in NEGATIVE_LABELS:
                return 1 - int(index)
    raise ModelLoadError(
        f"the model's labels {id2label!r} name no positive class. Fix: set id2label in its "
        f"config.json to {{'0': '负面', '1': '正面'}} (or negative/positive).",
        "corrupt",
    )


class PrimaryModel:
    """A sequence classifier with batched, length-bucketed inference.

    `predict` may run in several threads at once (the batcher's lanes): the tokenizer,
    whose Rust core refuses concurrent calls ("Already borrowed"), runs under a lock, and
    the forward pass only reads the weights.
    `name` is the model as configured; `version` is "<name>@<12 hex of the weights' sha256>",
    followed by "+int8" or "+bf16" when `precision` is not fp32. `precision_report` is
    what the worker reports of that choice (`precision.Choice.as_json`), None until made.
    """

    def __init__(
        self,
        *,
        name: str,
        version: str,
        tokenizer: Any,
        forward: Callable[..., Any],
        positive: int,
        sequence_length: int,
        long_text: str,
        max_batch: int,
        pipeline: Any = None,
        precision: str = "fp32",
        context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
        precision_report: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.weights_version = version  # without the precision's suffix
        self.precision = precision
        self.precision_report = precision_report
        self._context = context
        self.tokenizer = tokenizer
        self._forward = forward
        self._positive = positive
        self.sequence_length = sequence_length
        self.long_text = long_text
        self.max_batch = max_batch
        self.pipeline = pipeline  # the ModelScope pipeline, for the one-call-per-text path
        self._tokenizer_lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.weights_version + VERSION_SUFFIX[self.precision]

    def with_arithmetic(
        self,
        precision: str,
        context: Callable[[], AbstractContextManager[Any]],
        report: dict[str, Any] | None = None,
    ) -> PrimaryModel:
        """This model computing in `precision` (its layers already installed in the
        network, arithmetic.py), forward passes under `context`: a shallow copy sharing
        tokenizer, network and tokenizer lock."""
        twin = copy.copy(self)
        twin.precision, twin._context, twin.precision_report = precision, context, report
        return twin

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One Prediction per text, in input order."""
        import torch

        if not texts:
            return []
        room = self.sequence_length - self.tokenizer.num_special_tokens_to_add()
        # verbose=False: a text longer than the model's limit is expected here (it is
        # windowed or cut below), not worth transformers' warning.
        with self._tokenizer_lock:
            content = self.tokenizer(
                list(texts), add_special_tokens=False, truncation=False, verbose=False
            )
        segments: list[tuple[int, list[int]]] = []  # (text index, token ids with specials)
        truncated: list[bool] = []
        for i, ids in enumerate(content["input_ids"]):
            truncated.append(len(ids) > room)
            for piece in self._pieces(ids, room):
                segments.append((i, self.tokenizer.build_inputs_with_special_tokens(piece)))
        sums = [0.0] * len(texts)
        counts = [0] * len(texts)
        with torch.inference_mode(), self._context():
            for bucket in self._buckets(sorted(segments, key=lambda s: len(s[1]))):
                probs = self._probabilities([ids for _, ids in bucket])
                for (i, _), p in zip(bucket, probs, strict=True):
                    sums[i] += p
                    counts[i] += 1
        return [Prediction(s / c, t) for s, c, t in zip(sums, counts, truncated, strict=True)]

    def predict_pipeline(self, texts: Sequence[str]) -> list[Prediction]:
        """The plain ModelScope pipeline, one call per text: the reference the batched path
        must equal, and the "Flask wraps pipeline" baseline of bench/primary.py."""
        if self.pipeline is None:
            raise RuntimeError(f"{self.name}: no ModelScope pipeline (backend transformers)")
        room = self.sequence_length - self.tokenizer.num_special_tokens_to_add()
        out = []
        for text in texts:
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            with self._context():
                output = self.pipeline(text)
            out.append(Prediction(p_positive_from_output(output), n > room))
        return out

    def _pieces(self, ids: list[int], room: int) -> list[list[int]]:
        if len(ids) <= room or self.long_text == "truncate":
            return [ids[:room]]
        # Half-overlapping windows, the last one flush with the end of the text.
        stride = max(room // 2, 1)
        starts = [*range(0, len(ids) - room, stride), len(ids) - room]
        return [ids[s : s + room] for s in starts]

    def _buckets(self, segments: list[tuple[int, list[int]]]) -> list[list[tuple[int, list[int]]]]:
        """Cut length-sorted segments into the buckets that cost the least to run.

        A bucket costs FORWARD_OVERHEAD_TOKENS plus its size times its longest member
        (everything is padded to that); exact dynamic programming over the sorted
        lengths, each bucket at most `max_batch` segments.
        """
        n = len(segments)
        best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j segments
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            longest = len(segments[j - 1][1])  # sorted: the last one is the longest
            for i in range(max(0, j - self.max_batch), j):
                cost = best[i] + FORWARD_OVERHEAD_TOKENS + (j - i) * longest
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        buckets = []
        j = n
        while j > 0:
            buckets.append(segments[cut[j] : j])
            j = cut[j]
        return buckets[::-1]

    def _probabilities(self, batch: list[list[int]]) -> list[float]:
        import torch

        longest = max(len(ids) for ids in batch)
        # bf16: lengths in steps, so oneDNN reuses its kernels (precision.LENGTH_MULTIPLE).
        step = LENGTH_MULTIPLE.get(self.precision, 1)
        longest = max(longest, min(-(-longest // step) * step, self.sequence_length))
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        out = self._forward(
            input_ids=input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(input_ids)
        )
        logits = _logits(out)
        return torch.softmax(logits.float(), dim=-1)[:, self._positive].tolist()


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, dict) or hasattr(out, "keys"):
        return out["logits"]
    return out.logits if hasattr(out, "logits") else out[0]
