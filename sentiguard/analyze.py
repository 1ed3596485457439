"""`sentiguard analyze`: one review, or a file of reviews, through the service or `--local`.

A file is a CSV/TSV whose header has a `review`, `text` or `sentence` column (any other
columns are ignored, a `label` is not needed) or a TXT with one review per line. A *row*
is a CSV record or a TXT line that is not blank; the results hold exactly one row per
input row, in input order, with the columns of `RESULT_COLUMNS`. A row that cannot be
analyzed (empty text, text over `gateway.max_text_chars`, a text the service rejects)
keeps its place with empty label fields and the error code in `reason`, so one bad row
never costs the other 9,999.

Through the service, texts go in chunks of at most `gateway.max_texts` (and at most
`CHUNK_TEXTS`, so a chunk fits the primary's deadline) as `POST /analyze {"texts"}`; a
503 is retried after its `Retry-After`. `--local` runs the fallback model in this process.
The web UI (gateway/static/app.js) follows the same rules, so both give the same file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import requests

from sentiguard.data import TEXT_COLUMNS, read_table, read_text
from sentiguard.errors import DataError, ExitCode, SentiguardError
from sentiguard.labels import label_fields
from sentiguard.runtime.endpoints import gateway_url
from sentiguard.runtime.locate import announce
from sentiguard.runtime.paths import write_atomic
from sentiguard.settings import Settings

RESULT_COLUMNS = ("text", "label", "label_zh", "score", "model", "degraded", "reason")
# The gateway sends one chunk to one worker under gateway.deadline_ms. 32 is the worker's
# default batch (primary.max_batch_size): one chunk is one forward pass, so it fits the
# deadline and the watchdog's /health probe waits behind at most one pass. Measured with 2
# busy workers on a loaded 2-core machine, 64-text chunks missed the deadline (answered by
# the fallback, primary_timeout) for 2-6 % of rows; 256 would miss it far more often.
CHUNK_TEXTS = 32
LANES = 2  # chunks in flight at once: one per default primary worker
MAX_SHED_WAIT_S = 120.0  # a service that sheds load this long is not coming back soon
CONNECT_RETRY_S = 10.0  # supervisord restarts a crashed gateway within a few seconds
REASONS = {
    "primary_down": "the primary model is down (no worker is ready)",
    "overloaded": "every primary worker is busy (overloaded)",
    "primary_timeout": "the primary model did not answer within the deadline",
    "primary_error": "the primary model answered with an error",
}


def read_reviews(path: str | Path) -> list[str]:
    """The review of each row of a CSV/TSV (text/review/sentence column) or TXT file.

    Raises DataError naming the file (and line) with a hint when the file cannot be used.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".tab", ".txt"):
        raise DataError(
            f"{path}: unknown format {suffix or '(no extension)'!r}. Hint: use a .csv with a "
            f"text or review column, or a .txt with one review per line."
        )
    content = read_text(path)
    if suffix == ".txt":
        # Only CR/LF end a line (str.splitlines would also split on \x0c, \x85, U+2028...),
        # so the CLI and the web UI see the same rows.
        lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        texts = [line for line in lines if line.strip()]
    else:
        header, rows = read_table(path, content)
        column = next((c for c in TEXT_COLUMNS if c in header), None)
        if column is None:
            raise DataError(
                f"{path}:1: header {header!r} has no {' / '.join(TEXT_COLUMNS)} column. Hint: "
                f"name the column of reviews 'text', or save one review per line as .txt."
            )
        at = header.index(column)
        # A record whose text cell is empty or missing keeps its place as "".
        texts = [row[at] if at < len(row) else "" for _, row in rows]
    if not texts:
        raise DataError(f"{path}: no reviews in the file. Hint: add at least one row.")
    return texts


def failed(text: str, code: str) -> dict[str, Any]:
    """The result row of a text that got no answer: empty label fields, `reason` = code."""
    return {"text": text, "label": "", "label_zh": "", "score": "", "model": "",
            "degraded": "", "reason": code}  # fmt: skip


class Analyzer(Protocol):
    def analyze(self, texts: list[str]) -> list[dict[str, Any]]:
        """One result per text, in order; a rejected text gives `failed(text, code)`."""
        ...


class ServiceClient:
    """POST /analyze on the running gateway, retrying 503s after their Retry-After."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] | None = None):
        self.url = gateway_url(settings)
        self.sleep = sleep or time.sleep
        self.reached = False  # once the service answered, a refused connection is a restart
        self.headers = {"Content-Type": "application/json"}
        if settings.gateway.api_key:
            self.headers["X-API-Key"] = settings.gateway.api_key
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One keep-alive session per thread: requests.Session is not thread-safe."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            # Our own service on this host: never through an http_proxy from the
            # environment (sentiguard.runtime.net's policy for every local request).
            session.trust_env = False
            session.headers.update(self.headers)
        return session

    def analyze(self, texts: list[str]) -> list[dict[str, Any]]:
        status, body = self._post({"texts": texts})
        if status == 200:
            return list(body["results"])
        code = _error_code(body, status)
        if status >= 500:
            raise SentiguardError(
                f"the service at {self.url} failed with HTTP {status} ({code}). Hint: see "
                f"the gateway's log and `sentiguard status`, or add --local."
            )
        if len(texts) == 1:
            return [failed(texts[0], code)]
        if status == 413 or code == "too_many_texts":  # the service's caps are lower than ours
            half = len(texts) // 2
            return self.analyze(texts[:half]) + self.analyze(texts[half:])
        # One bad text rejects its whole chunk (the API names its index); ask one by one
        # so only that row is marked and the others still get their answer.
        return [row for text in texts for row in self.analyze([text])]

    def analyze_one(self, text: str) -> dict[str, Any]:
        status, body = self._post({"text": text})
        if status != 200:
            message = body.get("error", {}).get("message", f"HTTP {status}")
            raise SentiguardError(f"the service rejected the text: {message}")
        return dict(body)

    def _post(self, payload: dict[str, Any]) -> tuple[int, Any]:
        # Raw UTF-8: json.dumps' default \uXXXX escapes would double a Chinese body's size.
        body = json.dumps(payload, ensure_ascii=False).encode()
        shed_wait = connect_wait = 0.0
        while True:
            try:
                r = self.session.post(f"{self.url}/analyze", data=body, timeout=(3, 120))
            except requests.Timeout as e:
                if isinstance(e, requests.ConnectTimeout) and not self.reached:
                    raise SentiguardError(
                        f"no sentiguard service answers at {self.url}. Hint: start it with "
                        f"`sentiguard up`, or add --local."
                    ) from e
                raise SentiguardError(
                    f"the service at {self.url} did not answer within 120 s. Hint: check "
                    f"`sentiguard status`; retry, or add --local."
                ) from e
            except requests.ConnectionError as e:
                if not self.reached or connect_wait >= CONNECT_RETRY_S:
                    raise SentiguardError(
                        f"the sentiguard service is not running at {self.url}. Hint: start "
                        f"it with `sentiguard up` (another shell), or add --local to analyze "
                        f"in this process with the fallback model."
                    ) from e
                connect_wait += 1.0
                self.sleep(1.0)
                continue
            self.reached = True
            if r.status_code == 401:
                raise SentiguardError(
                    f"{self.url} needs an API key. Hint: set SENTIGUARD_GATEWAY_API_KEY "
                    f"(or gateway.api_key in --config) to the service's key."
                )
            if r.status_code == 503 and shed_wait < MAX_SHED_WAIT_S:
                delay = min(max(_float(r.headers.get("Retry-After"), 1.0), 0.1), 30.0)
                shed_wait += delay
                self.sleep(delay)
                continue
            if r.status_code == 503:
                raise SentiguardError(
                    f"the service at {self.url} kept shedding load for {MAX_SHED_WAIT_S:.0f} s. "
                    f"Hint: try again later, or add --local."
                )
            try:
                return r.status_code, r.json()
            except ValueError:
                return r.status_code, {}


class LocalAnalyzer:
    """The fallback model in this process: no service needed, `model` is "fallback"."""

    def __init__(self, settings: Settings) -> None:
        from sentiguard.fallback.model import FallbackModel

        self.model = FallbackModel.load(settings.fallback.model_dir)

    def analyze(self, texts: list[str]) -> list[dict[str, Any]]:
        probs = self.model.predict_proba(texts)
        return [
            {"text": t, **label_fields(p), "model": "fallback", "model_version":
             self.model.version, "degraded": False, "reason": None}
            for t, p in zip(texts, probs, strict=True)
        ]  # fmt: skip


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


def _error_code(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or f"http_{status}")
    return f"http_{status}"


def chunks(texts: Sequence[str], max_count: int, max_bytes: int) -> Iterator[list[str]]:
    """Consecutive slices of at most `max_count` texts and about `max_bytes` of UTF-8 each."""
    part: list[str] = []
    size = 0
    for text in texts:
        n = len(text.encode()) + 8  # quotes, comma and a few escapes per text
        if part and (len(part) >= max_count or size + n > max_bytes):
            yield part
            part, size = [], 0
        part.append(text)
        size += n
    if part:
        yield part


def analyze_rows(
    analyzer: Analyzer,
    texts: Sequence[str],
    *,
    chunk: int,
    max_chars: int | None,
    max_bytes: int = 1_000_000,
    lanes: int = 1,
    progress: Callable[[int], None] = lambda n: None,
) -> list[dict[str, Any]]:
    """One result row per text, in order, valid texts sent in `chunks`, `lanes` at a time.

    Empty texts and texts over `max_chars` are not sent; they get `failed` rows. The first
    error stops the run: chunks not yet sent are cancelled.
    """

    def one(part: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [failed(text, "empty_text") for text in part]
        send: list[int] = []
        for i, text in enumerate(part):
            if max_chars is not None and len(text.strip()) > max_chars:
                rows[i] = failed(text, "text_too_long")
            elif text.strip():
                send.append(i)
        if send:
            answers = analyzer.analyze([part[i].strip() for i in send])
            for i, answer in zip(send, answers, strict=True):
                rows[i] = {**answer, "text": part[i]}
        return rows

    results: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(lanes, thread_name_prefix="analyze")
    try:
        for rows in pool.map(one, chunks(texts, chunk, max_bytes)):  # map keeps input order
            results.extend(rows)
            progress(len(rows))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


# A cell starting with one of these is a formula to a spreadsheet program (=HYPERLINK(...),
# +cmd|..., @SUM(...)); tab and CR too, as OWASP's "CSV Injection" page lists them.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value: Any) -> Any:
    """A CSV cell: empty for None, true/false, and text that a spreadsheet would run as a
    formula neutralised with a leading apostrophe (OWASP's advice: shown, not evaluated)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_results(rows: Sequence[dict[str, Any]], out: str | None, as_json: bool) -> None:
    """CSV (RESULT_COLUMNS) or JSON lines to `out`, written whole or not at all; else stdout."""
    buffer = io.StringIO(newline="")
    if as_json:
        for row in rows:
            buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        # CRLF rows (RFC 4180, the csv module's default): with "\n" alone, a text holding a
        # bare CR is written unquoted, and a reader splits the row there.
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(RESULT_COLUMNS)
        writer.writerows([_csv_value(row.get(c)) for c in RESULT_COLUMNS] for row in rows)
    if out is None:
        sys.stdout.write(buffer.getvalue())
        return
    write_atomic(Path(out), buffer.getvalue(), private=False)


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line: counts by label, share positive, failures, and which model answered how many."""
    labels = Counter(r["label"] for r in rows if r.get("label"))
    models = Counter(r["model"] for r in rows if r.get("model"))
    reasons = Counter(r["reason"] for r in rows if r.get("degraded") is True)
    answered = labels["positive"] + labels["negative"]
    share = f"{100 * labels['positive'] / answered:.1f} %" if answered else "n/a"
    parts = [
        f"{len(rows)} rows: {labels['positive']} positive ({share}), "
        f"{labels['negative']} negative, {len(rows) - answered} failed",
        "models: " + (", ".join(f"{m} {n}" for m, n in sorted(models.items())) or "none"),
    ]
    if reasons:
        parts.append("degraded: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    return "; ".join(parts)


def print_result(result: dict[str, Any]) -> None:
    version = f" ({result['model_version']})" if result.get("model_version") else ""
    print(
        f"{result['label_zh']} {result['label']}  score {float(result['score']):.3f}  "
        f"model {result['model']}{version}"
    )
    if result.get("degraded"):
        reason = str(result.get("reason"))
        print(f"degraded: answered by the fallback because {REASONS.get(reason, reason)}")


def analyze_command(
    settings: Settings,
    *,
    text: str | None,
    file: str | None,
    out: str | None,
    local: bool,
    as_json: bool,
    url: str | None = None,
) -> int:
    """Analyze TEXT (print one result) or --file (write one result row per input row).

    Through the service `runtime.locate` finds (`url` first), named on stderr.
    """
    if (text is None) == (file is None):
        print('sentiguard analyze: give a text ("文本") or --file FILE, not both.', file=sys.stderr)
        return ExitCode.USAGE
    if not local:
        settings = announce(settings, url).settings
    if text is not None:
        if not text.strip():
            print("sentiguard analyze: the text is empty. Hint: quote the review.", file=sys.stderr)
            return ExitCode.USAGE
        result = (
            LocalAnalyzer(settings).analyze([text.strip()])[0]
            if local
            else ServiceClient(settings).analyze_one(text.strip())
        )
        result["text"] = text
        if as_json:
            print(json.dumps(result, ensure_ascii=False))
        else:
            print_result(result)
        return ExitCode.OK

    from tqdm import tqdm

    assert file is not None
    texts = read_reviews(file)
    analyzer: Analyzer = LocalAnalyzer(settings) if local else ServiceClient(settings)
    max_chars = None if local else settings.gateway.max_text_chars
    chunk = min(CHUNK_TEXTS, settings.gateway.max_texts)
    max_bytes = settings.gateway.max_body_bytes // 2  # leaves room for the JSON around
    with tqdm(total=len(texts), unit="review", file=sys.stderr, desc="analyze") as bar:
        rows = analyze_rows(
            analyzer,
            texts,
            chunk=chunk,
            max_chars=max_chars,
            max_bytes=max_bytes,
            lanes=1 if local else LANES,
            progress=bar.update,
        )
    write_results(rows, out, as_json)
    print(summary(rows) + (f" -> {out}" if out else ""), file=sys.stderr)
    return ExitCode.OK
