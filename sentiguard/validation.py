"""Turning a request body into a list of texts, or one precise 4xx: one validator, one
set of error codes for the gateway's POST /analyze and a worker's POST /predict.

Checks run cheapest first, each with its own error code, and each message says what to
send instead: content type (415) -> body size (413) -> UTF-8 -> JSON nesting depth (before
parsing, so a hostile `[[[[...` never reaches the recursive parser) -> JSON -> shape ->
each text (a batch names the index of its first bad item).

The codes are the public contract (DESIGN.md "HTTP API", openapi.py): `unsupported_media_type`,
`payload_too_large`, `invalid_utf8`, `json_too_deep`, `invalid_json`, `missing_text`,
`bad_texts`, `too_many_texts`, `not_a_string`, `empty_text`, `text_too_long`. A worker
answers the same codes, so the gateway and a test read one vocabulary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import IO, Any

from sentiguard.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from sentiguard.settings import Settings

# A string literal or a bracket, one token at a time and never retried: a literal runs to
# its closing quote or, left open, to the end of the body. Possessive loops (`*+`, `++`)
# keep a literal that fails from being re-scanned from every later quote, the quadratic
# trap of a body like `{"text": "` followed by `\"` repeated (10 s for 48 KB, hours for
# 2 MB, all of it holding the GIL that /health needs).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}

# The time a caller has left, in whole milliseconds: a client to the gateway (its deadline,
# floored by gateway.min_deadline_ms), the gateway to a worker (what is left of it).
DEADLINE_HEADER = "X-Deadline-Ms"
# The error code of a worker's 504 when that time passed before its batch ran.
DEADLINE_PASSED = "deadline_passed"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_json_depth: int
    max_texts: int
    max_text_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        g = settings.gateway
        return cls(g.max_body_bytes, g.max_json_depth, g.max_texts, g.max_text_chars)


@dataclass(frozen=True)
class AnalyzeRequest:
    texts: list[str]
    batch: bool  # True for {"texts": [...]}: answer {"results": [...]}


def check_content_type(mimetype: str, charset: str | None) -> None:
    if mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {mimetype or 'missing'}. "
            f'Send a JSON body like {{"text": "这家店很好吃"}} with that header.'
        )
    if charset and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMediaType(
            f"charset {charset} is not supported: encode the body as UTF-8 "
            f"(Content-Type: application/json; charset=utf-8)."
        )


def read_body(stream: IO[bytes], content_length: int | None, limits: Limits) -> bytes:
    """Read at most `max_body_bytes`; more, announced or sent, is a 413."""
    too_large = PayloadTooLarge(
        f"the request body is larger than {limits.max_body_bytes} bytes. Split the texts "
        f"into several requests of at most {limits.max_texts} texts each."
    )
    if content_length is not None and content_length > limits.max_body_bytes:
        raise too_large
    data = stream.read(limits.max_body_bytes + 1)
    if len(data) > limits.max_body_bytes:
        raise too_large
    return data


def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects, counting brackets outside string literals.

    Linear in the body's length whatever it holds, and every step runs in C (the regex
    engine, `map`, `accumulate`): 2 MB of `[],` takes tens of milliseconds, not a Python
    loop's half second of GIL.
    """
    brackets = _BRACKET.findall(_STRING.sub("", text))
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets)), default=0))


def parse_analyze(data: bytes, limits: Limits) -> AnalyzeRequest:
    """The gateway's body, `{"text": ...}` or `{"texts": [...]}`, already read by `read_body`;
    raise a `HTTPError` subclass if bad."""
    return _shape(_parse_json(data, limits), limits)


def parse_predict(data: bytes, limits: Limits) -> list[str]:
    """A worker's body, `{"texts": [...]}` only (the gateway always sends a list)."""
    doc = _parse_json(data, limits)
    if not isinstance(doc, dict) or "texts" not in doc:
        raise BadRequest(
            'the body must be a JSON object with "texts" (a list of strings), e.g. '
            '{"texts": ["这家店很好吃"]}.',
            code="missing_text",
        )
    return _check_texts(doc["texts"], limits)


def _parse_json(data: bytes, limits: Limits) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(
            f"the body is not valid UTF-8 (bad byte at offset {e.start}). Encode the "
            f"JSON body as UTF-8.",
            code="invalid_utf8",
        ) from None
    if json_depth(text) > limits.max_json_depth:
        raise BadRequest(
            f"the JSON is nested deeper than {limits.max_json_depth} levels. Send "
            f'{{"text": "..."}} or {{"texts": ["...", ...]}}.',
            code="json_too_deep",
        )
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(
            f"the body is not valid JSON ({e}). Send "
            f'{{"text": "..."}} or {{"texts": ["...", ...]}}.',
            code="invalid_json",
        ) from None
    return doc


def _shape(doc: Any, limits: Limits) -> AnalyzeRequest:
    if not isinstance(doc, dict) or ("text" in doc) == ("texts" in doc):
        raise BadRequest(
            'the body must be a JSON object with exactly one of "text" (a string) or '
            '"texts" (a list of strings), e.g. {"text": "这家店很好吃"}.',
            code="missing_text",
        )
    if "text" in doc:
        return AnalyzeRequest([_check_text(doc["text"], None, limits)], batch=False)
    return AnalyzeRequest(_check_texts(doc["texts"], limits), batch=True)


def _check_texts(texts: Any, limits: Limits) -> list[str]:
    if not isinstance(texts, list) or not texts:
        raise BadRequest(
            '"texts" must be a non-empty list of strings, e.g. {"texts": ["好", "差"]}.',
            code="bad_texts",
        )
    if len(texts) > limits.max_texts:
        raise BadRequest(
            f"{len(texts)} texts in one request; the limit is {limits.max_texts}. Split "
            f"them into several requests.",
            code="too_many_texts",
        )
    return [_check_text(t, i, limits) for i, t in enumerate(texts)]


def _check_text(value: Any, index: int | None, limits: Limits) -> str:
    where = "text" if index is None else f"texts[{index}]"
    if not isinstance(value, str):
        raise BadRequest(
            f"{where} is a {type(value).__name__}, not a string. Send the review as a JSON string.",
            code="not_a_string",
        )
    if not value.strip():
        raise BadRequest(
            f"{where} is empty. Send a review with at least one visible character.",
            code="empty_text",
        )
    if len(value) > limits.max_text_chars:
        raise BadRequest(
            f"{where} has {len(value)} characters; the limit is {limits.max_text_chars}. "
            f"Shorten it or split it into several texts.",
            code="text_too_long",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            f"{where} contains an unpaired surrogate escape (\\ud800-\\udfff), which is "
            f"not valid Unicode text. Send the review as UTF-8 text.",
            code="invalid_utf8",
        ) from None
    return value
