"""`sentiguard analyze`: reading review files, chunking, retries, output rows, errors.

Unit tests talk to a fake gateway (a threaded HTTP server on a free loopback port that
speaks POST /analyze and records every chunk); the integration test sends a 10,000-row
CSV through the real gateway process with the CLI, and `--local` uses the real fallback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sentiguard import analyze
from sentiguard import settings as settings_mod
from sentiguard.chaos.ports import free_port
from sentiguard.chaos.service import ServiceHandle, run_gateway, service_env
from sentiguard.cli import main
from sentiguard.errors import DataError, ExitCode, SentiguardError
from sentiguard.labels import label_fields


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


# --------------------------------------------------------------------------- read_reviews


def test_csv_reads_the_text_column_with_quotes_commas_and_newlines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv",
        '\ufeffid,Text,label\n1,"好,很好",1\n2,"第一行\n第二行",0\n\n3,"说""好""",1\n4,,0\n',
    )
    # the blank line is not a row; the record with an empty text is one (it keeps its place)
    assert analyze.read_reviews(path) == ["好,很好", "第一行\n第二行", '说"好"', ""]


def test_review_column_wins_and_tsv_is_read(tmp_path: Path) -> None:
    assert analyze.read_reviews(write(tmp_path / "r.csv", "text,review\nA,B\n")) == ["B"]
    assert analyze.read_reviews(write(tmp_path / "r.tsv", "sentence\tx\n好,的\t1\n")) == ["好,的"]
    # a TSV saved with a .csv name
    assert analyze.read_reviews(write(tmp_path / "t.csv", "id\ttext\n1\t好\n")) == ["好"]


def test_txt_is_one_review_per_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.txt", "第一条\r\n\r\n  \n第二条\x0c同一行\r第三条\n")
    assert analyze.read_reviews(path) == ["第一条", "第二条\x0c同一行", "第三条"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("r.json", "{}", "unknown format '.json'"),
        ("r.csv", "id,comment\n1,好\n", "no review / text / sentence column"),
        ("r.txt", "\n  \n", "no reviews in the file"),
        ("r.csv", "", "no review / text / sentence column"),
        # an unclosed quote would swallow every later row into one text: refused instead
        ("r.csv", 'text\n好\n"未闭合\n差\n', "r.csv:3: unexpected end of data"),
    ],
)
def test_unusable_files_name_the_problem_and_the_fix(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    with pytest.raises(DataError, match="Hint:") as error:
        analyze.read_reviews(write(tmp_path / name, content))
    assert message in str(error.value)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_bytes("très bien\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        analyze.read_reviews(path)


def test_chunks_respect_the_count_and_the_byte_budget() -> None:
    texts = ["好" * 10] * 7
    assert [len(c) for c in analyze.chunks(texts, 3, 10_000)] == [3, 3, 1]
    # each text is 30 bytes + 8: two fit in 80 bytes, three do not
    assert [len(c) for c in analyze.chunks(texts, 100, 80)] == [2, 2, 2, 1]
    assert [len(c) for c in analyze.chunks(["x" * 500], 3, 80)] == [1]  # never an empty chunk


# --------------------------------------------------------------------------- fake gateway


class FakeGateway:
    """POST /analyze on a free loopback port. Records every request's texts.

    `shed` 503s come first (Retry-After 0); a text containing "BAD" rejects its whole
    request with 400 like the real gateway; `status` answers every request with it.
    """

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.shed = 0
        self.status = 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body["texts"] if "texts" in body else [body["text"]]
                fake.requests.append(texts)
                if fake.shed > 0:
                    fake.shed -= 1
                    return self.reply(503, {"error": {"code": "overloaded", "message": "full"}})
                if fake.status != 200:
                    return self.reply(fake.status, {"error": {"code": "x", "message": "no"}})
                bad = [i for i, t in enumerate(texts) if "BAD" in t]
                if bad:
                    error = {"code": "not_allowed", "message": f"texts[{bad[0]}] is bad"}
                    return self.reply(400, {"error": error})
                results = [
                    {"text": t, **label_fields(0.9 if "好" in t else 0.2), "model": "primary",
                     "model_version": "fake", "degraded": False, "reason": None}
                    for t in texts
                ]  # fmt: skip
                self.reply(200, results[0] if "text" in body else {"results": results})

            def reply(self, status: int, doc: Any) -> None:
                data = json.dumps(doc, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeGateway]:
    gateway = FakeGateway()
    yield gateway
    gateway.close()


def settings_for(port: int, **overrides: Any) -> settings_mod.Settings:
    return settings_mod.load(None, environ={}, overrides={"gateway.port": port, **overrides})


def run(settings: settings_mod.Settings, **kwargs: Any) -> int:
    args: dict[str, Any] = {"text": None, "file": None, "out": None, "local": False}
    args["as_json"] = False
    return analyze.analyze_command(settings, **{**args, **kwargs})


def test_file_goes_in_capped_chunks_and_comes_back_one_row_per_input_row_in_order(
    fake: FakeGateway, tmp_path: Path
) -> None:
    texts = [f"{'好' if i % 3 else '差'} 第{i}条" for i in range(25)]
    texts[4] = "   "  # empty after stripping: not sent, marked
    texts[7] = "长" * 21  # over max_text_chars: not sent, marked
    texts[9] = "BAD review"  # the service rejects it: only this row fails
    source = write(tmp_path / "in.txt", "\n".join(texts) + "\n")
    del texts[4]  # a blank TXT line is not a row
    out = tmp_path / "out.csv"
    settings = settings_for(fake.port, **{"gateway.max_texts": 5, "gateway.max_text_chars": 20})
    fake.shed = 1
    assert run(settings, file=str(source), out=str(out)) == ExitCode.OK

    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(analyze.RESULT_COLUMNS)
    assert [r["text"] for r in rows] == texts
    assert rows[6]["reason"] == "text_too_long" and rows[6]["label"] == ""
    assert rows[8]["reason"] == "not_allowed" and rows[8]["label"] == ""
    ok = [r for i, r in enumerate(rows) if i not in (6, 8)]
    assert [r["label"] for r in ok] == [
        "positive" if t.startswith("好") else "negative"
        for i, t in enumerate(texts)
        if i not in (6, 8)
    ]
    assert {r["model"] for r in ok} == {"primary"} and {r["degraded"] for r in ok} == {"false"}
    assert all(0 < len(r) <= 5 for r in fake.requests)
    assert "长" * 21 not in [t for chunk in fake.requests for t in chunk]
    # the shed chunk was sent again; the rejected chunk was retried text by text
    sent = [tuple(chunk) for chunk in fake.requests]
    assert len(set(sent)) == len(sent) - 1
    assert ["BAD review"] in fake.requests


def test_jsonl_output_and_summary(
    fake: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "in.csv", "text\n很好\n很差\n")
    assert run(settings_for(fake.port), file=str(source), as_json=True) == ExitCode.OK
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["text"], r["label"]) for r in lines] == [("很好", "positive"), ("很差", "negative")]
    assert "2 rows: 1 positive (50.0 %), 1 negative, 0 failed; models: primary 2" in err
    assert "2/2" in err  # tqdm's progress bar on stderr


def test_single_text_prints_label_score_and_model(
    fake: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(settings_for(fake.port), text="  服务很好 ") == ExitCode.OK
    assert capsys.readouterr().out == "正面 positive  score 0.900  model primary (fake)\n"
    assert fake.requests == [["服务很好"]]
    assert run(settings_for(fake.port), text="服务很好", as_json=True) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["model_version"] == "fake"


def test_degraded_answer_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    answer = {**label_fields(0.1), "model": "fallback", "degraded": True, "reason": "primary_down"}
    analyze.print_result(answer)
    assert capsys.readouterr().out.splitlines()[1] == (
        "degraded: answered by the fallback because the primary model is down (no worker is ready)"
    )


def test_service_not_running_says_to_start_it_or_use_local(tmp_path: Path) -> None:
    settings = settings_for(free_port())  # of this run's reserved block: nothing listens
    with pytest.raises(SentiguardError, match="sentiguard up") as error:
        run(settings, text="很好")
    assert "--local" in str(error.value)
    # Says so at once: the client never waited to retry (its only waits go through `sleep`).
    waits: list[float] = []
    client = analyze.ServiceClient(settings, sleep=waits.append)
    with pytest.raises(SentiguardError, match="not running"):
        client.analyze_one("很好")
    assert waits == []
    source = write(tmp_path / "in.txt", "很好\n")
    with pytest.raises(SentiguardError, match="not running"):
        run(settings, file=str(source), out=str(tmp_path / "out.csv"))
    assert not (tmp_path / "out.csv").exists()


def test_api_key_and_server_errors_are_clear(fake: FakeGateway) -> None:
    fake.status = 401
    with pytest.raises(SentiguardError, match="SENTIGUARD_GATEWAY_API_KEY"):
        run(settings_for(fake.port), text="好")
    fake.status = 500
    requests_before = len(fake.requests)
    with pytest.raises(SentiguardError, match="HTTP 500"):
        analyze.ServiceClient(settings_for(fake.port)).analyze(["好"] * 10)
    assert len(fake.requests) == requests_before + 1  # a 500 is not retried text by text


def test_api_key_is_sent(fake: FakeGateway) -> None:
    client = analyze.ServiceClient(settings_for(fake.port, **{"gateway.api_key": "k1"}))
    assert client.session.headers["X-API-Key"] == "k1"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SENTIGUARD_* variable of the caller's shell reaches `main`'s settings."""
    for name in [n for n in os.environ if n.startswith(settings_mod.ENV_PREFIX)]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_cli_needs_exactly_one_of_text_and_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze"]) == ExitCode.USAGE
    assert main(["analyze", "好", "--file", "x.csv"]) == ExitCode.USAGE
    assert main(["analyze", "  "]) == ExitCode.USAGE
    assert "give a text" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_unreadable_file_through_the_cli_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "in.csv", "id,comment\n1,好\n")
    assert main(["analyze", "--file", str(source), "--local"]) == ExitCode.ERROR
    assert "name the column of reviews 'text'" in capsys.readouterr().err


# --------------------------------------------------------------------------- real models


def test_local_uses_the_real_fallback_in_process(tmp_path: Path) -> None:
    source = write(tmp_path / "in.txt", "这家酒店服务很好，房间干净。\n质量太差了，用一天就坏。\n")
    out = tmp_path / "out.csv"
    settings = settings_for(free_port())  # no service anywhere: --local must not need one
    assert run(settings, file=str(source), out=str(out), local=True) == ExitCode.OK
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert {r["model"] for r in rows} == {"fallback"}


@pytest.mark.integration
def test_10000_row_csv_through_the_real_gateway_with_the_cli(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("cli-gateway")
    texts = [("物流很快，质量很好" if i % 2 else "太差了，不推荐") + f" {i}" for i in range(10_000)]
    texts[3] = '带"引号",逗号\n和换行'
    source = root / "reviews.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "label"])
        writer.writerows([t, i % 2] for i, t in enumerate(texts))
    out = root / "results.csv"
    with run_gateway(root) as url:
        port = int(url.rsplit(":", 1)[1])
        env = service_env({"gateway.port": port})
        started = time.monotonic()  # reported, not held: two shared cores
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sentiguard",
                "analyze",
                "--file",
                str(source),
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"CLI batch: {len(texts)} rows in {seconds:.1f} s")
    assert "10000/10000" in proc.stderr  # the progress bar reached the end on stderr
    assert "models: fallback 10000; degraded: primary_down 10000" in proc.stderr
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == texts
    assert {r["model"] for r in rows} == {"fallback"} and {r["reason"] for r in rows} == {
        "primary_down"
    }
    right = sum(r["label"] == ("positive" if "很好" in r["text"] else "negative") for r in rows)
    assert right > 0.9 * len(rows)


@pytest.mark.integration
@pytest.mark.slow
def test_single_text_through_the_real_service(healthy_service: ServiceHandle) -> None:
    proc = healthy_service.cli("analyze", "这家酒店服务很好，房间干净。")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("正面 positive  score ")
    assert "model primary" in proc.stdout and "degraded" not in proc.stdout
