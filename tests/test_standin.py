"""The base-size stand-in primary (sentiguard/training/standin.py).

Marked `base_model`: the directory has the hub StructBERT-base's shape, the worker's own
loading code takes it through the ModelScope pipeline and the known-answer probe passes
with margin, a second `ensure()` finds the cache, and the real service serves it. The
cache logic itself (atomic swap-in, rebuild on another version, one build at a time,
leftovers of a killed build) runs against a fake build, unmarked and fast.
"""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from sentiguard import settings as settings_mod
from sentiguard.chaos.client import wait_until
from sentiguard.primary import probe
from sentiguard.settings import project_path
from sentiguard.training import standin

BASE_PARAMETERS = 102_000_000  # the hub StructBERT-base's ~102 M


def _tensor_shapes(weights: Path) -> dict[str, list[int]]:
    """Each tensor's shape from the safetensors header, without loading 400 MB."""
    with weights.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.base_model
def test_standin_has_the_base_models_shape(base_model_dir: Path) -> None:
    config = json.loads((base_model_dir / "config.json").read_text(encoding="utf-8"))
    assert (config["num_hidden_layers"], config["hidden_size"]) == (12, 768)
    assert (config["num_attention_heads"], config["intermediate_size"]) == (12, 3072)
    assert (config["max_position_embeddings"], config["vocab_size"]) == (512, 21128)
    vocab = (base_model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    embedded = project_path("models/primary/vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 21128
    assert vocab[: len(embedded)] == embedded  # same ids for every text the embedded model sees
    shapes = _tensor_shapes(base_model_dir / "model.safetensors")
    parameters = sum(_count(shape) for shape in shapes.values())
    assert abs(parameters - BASE_PARAMETERS) <= 0.01 * BASE_PARAMETERS, parameters
    assert shapes["bert.embeddings.word_embeddings.weight"] == [21128, 768]
    assert sum(1 for k in shapes if k.endswith("attention.self.query.weight")) == 12
    # the hub model's own type, not the embedded model's (which carries an n-gram head)
    configuration = json.loads((base_model_dir / "configuration.json").read_text("utf-8"))
    assert configuration["model"]["type"] == "structbert"


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.base_model
def test_worker_loads_the_standin_and_the_probe_passes_with_margin(base_model_dir: Path) -> None:
    from sentiguard.primary.model import load_model

    settings = settings_mod.load(None, environ={}, overrides={"primary.model": str(base_model_dir)})
    model = load_model(settings)  # the worker's own loader: ModelScope pipeline, absolute dir
    assert model.pipeline is not None
    batched = [p.p_positive for p in model.predict(probe.TEXTS)]  # the worker's batched path
    plain = [p.p_positive for p in model.predict_pipeline(probe.TEXTS)]  # pipeline(text)
    for answers in (batched, plain):
        assert probe.passed(answers), answers
        pairs = zip(answers, probe.PROBE, strict=True)
        margins = [p if positive else 1 - p for p, (_, positive) in pairs]
        assert min(margins) >= 0.8, answers
    # The embedded model's tokenizer and the stand-in's split Chinese text the same way.
    text = "这家店的菜很好吃，服务也热情abc123，下次还来。"
    embedded = settings_mod.load(None, environ={})
    from transformers import BertTokenizerFast

    ours = BertTokenizerFast(str(embedded.primary.model_dir / "vocab.txt"), do_lower_case=True)
    assert model.tokenizer(text)["input_ids"] == ours(text)["input_ids"]


@pytest.mark.base_model
def test_a_second_ensure_finds_the_cache(
    base_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = base_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_build(*args: Any, **kwargs: Any) -> standin.BuildResult:
        raise AssertionError("ensure() rebuilt a current stand-in")

    monkeypatch.setattr(standin, "build", no_build)
    assert standin.ensure(base_model_dir) == base_model_dir
    assert weights.stat().st_mtime_ns == before


@pytest.mark.base_model
@pytest.mark.integration
def test_the_service_answers_from_the_standin(base_model_dir: Path, tmp_path: Path) -> None:
    from sentiguard.chaos.service import start_service

    service = start_service(
        tmp_path,
        workers=1,
        faults=False,
        # The memory limit is "auto" (it follows the model). The answer's source is the
        # point here, not its speed: on a loaded machine (the whole suite beside it) a cold
        # base-size pass can miss the 1.5 s deadline.
        overrides={"primary.model": str(base_model_dir), "gateway.deadline_ms": 20000},
    )
    try:
        answer = service.analyze(probe.TEXTS[0], timeout=30.0)
        assert answer.status == 200, answer.body
        # The reason (primary_down, overloaded, ...) and the logs say why the fallback answered.
        why = f"reason {answer.body.get('reason')!r}\n{service.diagnostics()}"
        assert answer.body["model"] == "primary", why
        assert answer.body["label"] == "positive"
        assert answer.body["model_version"].startswith(str(base_model_dir))
    finally:
        service.stop()


# --- the cache, against a fake build --------------------------------------------------


class FakeBuild:
    """Writes a tiny directory with a stand-in manifest; counts its calls (thread-safe)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[Path] = []
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, out_dir: str | Path, seed: int = 0) -> standin.BuildResult:
        out = Path(out_dir)
        with self.lock:
            self.calls.append(out)
        if self.gate is not None:
            self.gate.wait(10)
        (out / standin.WEIGHTS_FILE).write_bytes(b"w" * 10)
        manifest = {
            "standin_version": standin.STANDIN_VERSION,
            "seed": seed,
            "weights": {"bytes": 10},
            "embedded_vocab_sha256": standin.embedded_vocab_sha256(),
        }
        (out / standin.MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
        return standin.BuildResult(out, 0.0, [1.0, 0.0], 1.0)


def test_ensure_builds_beside_the_target_and_renames_it_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBuild()
    monkeypatch.setattr(standin, "build", fake)
    target = tmp_path / "standin"
    assert standin.ensure(target) == target
    assert fake.calls[0].parent == tmp_path and fake.calls[0] != target
    assert not fake.calls[0].exists()  # renamed, not copied
    assert standin.is_current(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["standin", "standin.lock"]
    standin.ensure(target)
    assert len(fake.calls) == 1


def test_a_stale_or_half_built_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBuild()
    monkeypatch.setattr(standin, "build", fake)
    target = tmp_path / "standin"
    standin.ensure(target)
    manifest = json.loads((target / standin.MANIFEST_FILE).read_text())
    manifest["standin_version"] = standin.STANDIN_VERSION - 1
    (target / standin.MANIFEST_FILE).write_text(json.dumps(manifest))
    leftover = tmp_path / ".standin.build-killed"  # what a killed build leaves
    leftover.mkdir()
    standin.ensure(target)
    assert len(fake.calls) == 2 and standin.is_current(target)
    assert not leftover.exists()
    (target / standin.WEIGHTS_FILE).write_bytes(b"w")  # truncated weights: not current
    standin.ensure(target)
    assert len(fake.calls) == 3
    standin.ensure(target, seed=1)  # another seed is another model
    assert len(fake.calls) == 4
    manifest = json.loads((target / standin.MANIFEST_FILE).read_text())
    manifest["embedded_vocab_sha256"] = "0" * 64  # built from another embedded vocabulary
    (target / standin.MANIFEST_FILE).write_text(json.dumps(manifest))
    standin.ensure(target, seed=1)
    assert len(fake.calls) == 5
    assert json.loads((target / standin.MANIFEST_FILE).read_text())["seed"] == 1


def test_two_ensures_at_once_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    fake = FakeBuild(gate)
    monkeypatch.setattr(standin, "build", fake)
    real_exclusive = standin._exclusive
    waiting: list[Path] = []  # ensure() calls that reached the lock

    def exclusive(target: Path) -> Any:
        waiting.append(target)
        return real_exclusive(target)

    monkeypatch.setattr(standin, "_exclusive", exclusive)
    target = tmp_path / "standin"
    results: list[Path] = []
    # Separate open()s of the lock file conflict under flock even in one process.
    threads = [
        threading.Thread(target=lambda: results.append(standin.ensure(target))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    # Both are past their first look at the cache, one of them inside build() (held there):
    # without the lock, the other would start a second build now.
    wait_until(lambda: len(waiting) == 2 and fake.calls, 10, "both ensure() calls at the lock")
    gate.set()
    for t in threads:
        t.join(20)
    assert results == [target, target]
    assert len(fake.calls) == 1


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(standin.ENV_DIR, "/tmp/somewhere/standin")
    assert standin.cache_dir() == Path("/tmp/somewhere/standin")
    monkeypatch.delenv(standin.ENV_DIR)
    assert standin.cache_dir() == Path.home() / ".cache/sentiguard/structbert-base-standin-v1"
