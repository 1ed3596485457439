"""The corpus split and the data-file reader: deduplicated, deterministic, line-numbered errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiguard.data import SPLIT_SEED, Dataset, read_file, split, split_dataset
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
