"""`sentiguard eval`: score the fallback, the primary or the running service on labelled texts.

The texts come from a CSV/TSV file (`data.read_file`), the packaged held-out split
(`--split heldout`) or the held-out tenth of online_shopping_10_cats (`--split
shopping-heldout`, which needs that file: `--shopping PATH` or
`SENTIGUARD_SHOPPING_CORPUS`), optionally only the first `limit`. The summary is
human-readable; with `--json` the last line printed is one JSON object with at least n,
accuracy, macro_f1, texts_per_s, model and model_version (plus `models`, the count of
answers per model, for the service).
`texts_per_s` is wall-clock over the prediction calls only (not loading); `cpu_seconds`
is this process's CPU time over the same calls.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentiguard.data import Dataset, read_file, split
from sentiguard.errors import ExitCode, SentiguardError
from sentiguard.settings import Settings

# One call's worth of texts for the in-process models: large enough to amortise the
# per-call cost, small enough that a progress-less run does not look stuck.
BATCH = 256


def metrics(labels: Sequence[int], p_positive: Sequence[float]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion counts, with
    the decision threshold at p >= 0.5 (the API's own)."""
    if len(labels) != len(p_positive):
        raise ValueError(f"{len(labels)} labels but {len(p_positive)} predictions")
    pairs = Counter((int(y), int(p >= 0.5)) for y, p in zip(labels, p_positive, strict=True))
    n = len(labels)
    per_class: dict[str, dict[str, float]] = {}
    for name, c in (("positive", 1), ("negative", 0)):
        tp = pairs[(c, c)]
        predicted = pairs[(0, c)] + pairs[(1, c)]
        actual = pairs[(c, 0)] + pairs[(c, 1)]
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "n": actual,
        }
    correct = pairs[(1, 1)] + pairs[(0, 0)]
    return {
        "n": n,
        "accuracy": round(correct / n, 4) if n else 0.0,
        "macro_f1": round((per_class["positive"]["f1"] + per_class["negative"]["f1"]) / 2, 4),
        "classes": per_class,
        "confusion": {
            "true_pos": pairs[(1, 1)],
            "false_neg": pairs[(1, 0)],
            "true_neg": pairs[(0, 0)],
            "false_pos": pairs[(0, 1)],
        },
    }


# A predictor takes a batch of texts and returns (p_positive list, model name per text).
Predictor = Callable[[list[str]], tuple[list[float], list[str]]]


@dataclass
class Source:
    """Where answers come from: `predict` one batch of at most `batch` texts; `version`
    of the model, or for the service the versions seen in its answers (`versions`)."""

    predict: Predictor
    batch: int
    version: str = ""
    versions: Counter[str] = field(default_factory=Counter)

    def model_version(self) -> str:
        return self.version or ",".join(v for v, _ in self.versions.most_common()) or "unknown"


def _fallback(settings: Settings) -> Source:
    from sentiguard.fallback.model import FallbackModel

    model = FallbackModel.load(settings.fallback.model_dir)

    def predict(texts: list[str]) -> tuple[list[float], list[str]]:
        return model.predict_proba(texts), ["fallback"] * len(texts)

    return Source(predict, BATCH, model.version)


def _primary(settings: Settings) -> Source:
    from sentiguard.primary.model import load_model  # torch: import only when asked

    model = load_model(settings)

    def predict(texts: list[str]) -> tuple[list[float], list[str]]:
        return [float(r.p_positive) for r in model.predict(texts)], ["primary"] * len(texts)

    return Source(predict, settings.primary.max_batch_size, str(model.version))


def _service(settings: Settings) -> Source:
    """POST /analyze to the running gateway, in batches of at most gateway.max_texts."""
    from sentiguard.analyze import ServiceClient

    client = ServiceClient(settings)
    source = Source(lambda texts: ([], []), settings.gateway.max_texts)

    def predict(texts: list[str]) -> tuple[list[float], list[str]]:
        results = client.analyze(texts)
        source.versions.update(str(r.get("model_version", "unknown")) for r in results)
        return (
            [float(r["scores"]["positive"]) for r in results],
            [str(r.get("model", "unknown")) for r in results],
        )

    source.predict = predict
    return source


SOURCES: dict[str, Callable[[Settings], Source]] = {
    "fallback": _fallback,
    "primary": _primary,
    "service": _service,
}


def evaluate(
    predict: Predictor, dataset: Dataset, batch: int
) -> tuple[dict[str, Any], Counter[str]]:
    """Run `predict` over `dataset` in batches; metrics plus texts/s and answers per model."""
    probabilities: list[float] = []
    answered_by: Counter[str] = Counter()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(dataset), batch):
        p, models = predict(dataset.texts[i : i + batch])
        probabilities += p
        answered_by.update(models)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    result = metrics(dataset.labels, probabilities)
    result["seconds"] = round(elapsed, 3)
    result["texts_per_s"] = round(len(dataset) / elapsed, 1) if elapsed > 0 else None
    # This process's CPU time: for the in-process models, the speed one core gives when
    # other jobs share the machine (for the service it only counts the client's work).
    result["cpu_seconds"] = round(cpu, 3)
    return result, answered_by


def eval_command(
    settings: Settings,
    model: str,
    data: str | None = None,
    split: str | None = None,
    as_json: bool = False,
    limit: int | None = None,
    shopping: str | None = None,
) -> int:
    """The CLI entry: a readable summary, and with `as_json` one JSON object last."""
    dataset = read_file(data) if data else _heldout(split or "heldout", shopping)
    if limit is not None:
        if limit < 1:
            raise SentiguardError(f"--limit {limit} must be 1 or more.")
        dataset = Dataset(dataset.texts[:limit], dataset.labels[:limit], dataset.source)
    source = SOURCES[model](settings)
    result, answered_by = evaluate(source.predict, dataset, source.batch)
    summary = {
        "model": model,
        "model_version": source.model_version(),
        "data": dataset.source,
        **result,
        "models": dict(answered_by),
    }
    _print_summary(summary)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, separators=(",", ":")))
    return ExitCode.OK


def _heldout(which: str, shopping: str | None) -> Dataset:
    if which == "shopping-heldout":
        from sentiguard.training.corpora import recipe_corpora

        return recipe_corpora(shopping).heldout["shopping_heldout"]
    return split().heldout


def _print_summary(s: dict[str, Any]) -> None:
    pos, neg, c = s["classes"]["positive"], s["classes"]["negative"], s["confusion"]
    lines = [
        f"model      {s['model']} ({s['model_version']})",
        f"data       {s['data']}: {s['n']} texts",
        f"accuracy   {s['accuracy']:.4f}    macro-F1 {s['macro_f1']:.4f}",
        f"positive   precision {pos['precision']:.4f}  recall {pos['recall']:.4f}  "
        f"F1 {pos['f1']:.4f}  (n={pos['n']})",
        f"negative   precision {neg['precision']:.4f}  recall {neg['recall']:.4f}  "
        f"F1 {neg['f1']:.4f}  (n={neg['n']})",
        f"confusion  TP {c['true_pos']}  FN {c['false_neg']}  TN {c['true_neg']}  "
        f"FP {c['false_pos']}",
        f"speed      {s['texts_per_s']} texts/s ({s['seconds']} s wall, "
        f"{s['cpu_seconds']} s CPU in this process)",
    ]
    if s["model"] == "service":
        lines.append("answered   " + ", ".join(f"{m}: {k}" for m, k in sorted(s["models"].items())))
    print("\n".join(lines))
