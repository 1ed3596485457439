"""The character vocabulary of the embedded StructBERT, built from training texts only.

ModelScope's StructBERT preprocessor tokenizes with transformers' `BertTokenizer` over
`vocab.txt`: its basic tokenizer splits every CJK character into its own token and keeps
runs of Latin letters and digits together, then WordPiece splits those runs greedily
into the longest pieces found in the vocabulary. A vocabulary of single characters
(`x`) plus continuation characters (`##x`) therefore makes WordPiece spell every run
character by character, which is exactly a character model, and keeps the real hub
model's tokenizer code path. A run holding any character missing from the vocabulary
becomes one `[UNK]` (WordPiece's rule), so rare characters are cut by count only.

The vocabulary must be built from the training part of a split, never the held-out part:
a character seen only in held-out texts would otherwise get an embedding row that no
gradient ever trained and, worse, would leak which characters the held-out texts use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# Order and names follow BERT's vocab.txt: ids 0..4 are what BertTokenizer and the
# StructBERT config (pad_token_id 0) expect.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"


def basic_tokens(texts: Iterable[str]) -> Iterable[str]:
    """The words BertTokenizer's basic step makes: lower-cased, accents stripped, CJK split.

    Uses the Rust twin of that step from `tokenizers` (the one BertTokenizerFast runs):
    the Python BasicTokenizer takes ~30 s over the corpus here. A test checks that the
    fast and the slow tokenizer give the same ids.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalize = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    split_words = pre_tokenizers.BertPreTokenizer()
    for text in texts:
        for word, _ in split_words.pre_tokenize_str(normalize.normalize_str(text)):
            yield word


def build_vocab(texts: Iterable[str], min_count: int = 2) -> list[str]:
    """Vocabulary tokens, in id order, from the characters of `texts` seen >= `min_count` times.

    Deterministic for the same texts (ties broken by the character), so a retrain
    reproduces the same ids.
    """
    heads: Counter[str] = Counter()
    tails: Counter[str] = Counter()
    for token in basic_tokens(texts):
        heads[token[0]] += 1
        tails.update(token[1:])
    keep_heads = sorted(c for c, n in heads.items() if n >= min_count)
    keep_tails = sorted(c for c, n in tails.items() if n >= min_count)
    return [
        *SPECIAL_TOKENS,
        *(c for c in keep_heads if c not in SPECIAL_TOKENS),
        *(CONTINUATION + c for c in keep_tails),
    ]


def write_vocab(tokens: list[str], path: Path) -> None:
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
