"""The primary model in-process: local vs hub loading, label mapping, batched == pipeline."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from sentiguard import settings as settings_mod
from sentiguard.errors import ModelLoadError
from sentiguard.primary import batcher as batcher_mod
from sentiguard.primary import model as model_mod
from sentiguard.primary import probe
from sentiguard.primary.inference import PrimaryModel, p_positive_from_output, positive_index
from sentiguard.primary.model import classify, load_model
from sentiguard.primary.source import preflight, resolve_source
from tests.primary_helpers import EMBEDDED_MODEL

HUB_ID = "damo/nlp_structbert_sentiment-classification_chinese-base"
POSITIVE = [
    "这个手机非常好用，质量很好，我很满意，推荐购买！",
    "酒店环境很好，服务热情，下次还会再来。",
    "物流很快，包装完好，东西也很不错，五星好评。",
]
NEGATIVE = [
    "质量太差了，用了两天就坏了，客服也不理人，非常失望。",
    "房间又脏又小，服务态度恶劣，再也不会来了。",
    "物流太慢，东西是坏的，退货还不给退，垃圾。",
]

needs_model = pytest.mark.skipif(
    not (EMBEDDED_MODEL / "configuration.json").exists(),
    reason="the embedded model is not built yet: run `sentiguard train primary`",
)


def make_settings(**overrides: Any) -> settings_mod.Settings:
    # float32: these tests compare exact equivalences, which int8's per-batch scale breaks.
    values = {"primary.model": str(EMBEDDED_MODEL), "primary.quantize": "none", **overrides}
    return settings_mod.load(None, environ={}, overrides=values, check=False)


def fail_loudly(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"the hub was contacted: {args} {kwargs}")


def block_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way ModelScope reaches its hub now fails the test."""
    hub_snapshot = importlib.import_module("modelscope.hub.snapshot_download")
    monkeypatch.setattr(hub_snapshot, "snapshot_download", fail_loudly)
    builder = importlib.import_module("modelscope.pipelines.builder")
    monkeypatch.setattr(builder, "snapshot_download", fail_loudly)
    monkeypatch.setattr(
        importlib.import_module("modelscope.utils.hub"), "model_file_download", fail_loudly
    )
    api = importlib.import_module("modelscope.hub.api")
    monkeypatch.setattr(api.HubApi, "get_model", fail_loudly)


@pytest.fixture(scope="module")
def model() -> PrimaryModel:
    if not (EMBEDDED_MODEL / "configuration.json").exists():
        pytest.skip("the embedded model is not built yet: run `sentiguard train primary`")
    with pytest.MonkeyPatch.context() as mp:
        block_hub(mp)
        return load_model(make_settings())


# --- pure functions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ({"labels": ["正面", "负面"], "scores": [0.9, 0.1]}, 0.9),
        ({"labels": ["负面", "正面"], "scores": [0.8, 0.2]}, 0.2),
        ({"labels": ["positive", "negative"], "scores": [0.7, 0.3]}, 0.7),
        ({"labels": ["LABEL_0", "LABEL_1"], "scores": [0.6, 0.4]}, 0.4),
        ({"labels": [1, 0], "scores": [0.55, 0.45]}, 0.55),
        ({"labels": ["negative"], "scores": [0.75]}, 0.25),
    ],
)
def test_pipeline_output_maps_to_p_positive(output: dict[str, Any], expected: float) -> None:
    assert p_positive_from_output(output) == pytest.approx(expected)


def test_unknown_labels_are_an_error() -> None:
    with pytest.raises(ValueError, match="neither"):
        p_positive_from_output({"labels": ["cat", "dog"], "scores": [0.5, 0.5]})


@pytest.mark.parametrize(
    ("id2label", "index"),
    [
        ({0: "负面", 1: "正面"}, 1),
        ({"0": "positive", "1": "negative"}, 0),
        ({0: "LABEL_0", 1: "LABEL_1"}, 1),
        ({0: "正面", 1: "负面"}, 0),
    ],
)
def test_positive_index(id2label: dict[Any, str], index: int) -> None:
    assert positive_index(id2label) == index


def test_positive_index_without_a_positive_class_is_corrupt() -> None:
    with pytest.raises(ModelLoadError) as e:
        positive_index({0: "cat", 1: "dog", 2: "bird"})
    assert e.value.cause == "corrupt"


@pytest.mark.parametrize(
    ("setting", "workers", "cpus", "lanes"),
    [
        (0, 2, {0, 1}, 1),
        (0, 1, {0, 1}, 2),
        (0, 4, {0, 1}, 1),
        (0, 2, set(range(8)), 4),
        (3, 2, {0, 1}, 3),
    ],
)
def test_batch_lanes_are_the_workers_share_of_its_cpus_unless_set(
    monkeypatch: pytest.MonkeyPatch, setting: int, workers: int, cpus: set[int], lanes: int
) -> None:
    monkeypatch.setattr(batcher_mod.os, "sched_getaffinity", lambda pid: cpus)
    settings = make_settings(**{"primary.batch_lanes": setting, "primary.workers": workers})
    assert batcher_mod.batch_lanes(settings) == lanes


def test_relative_existing_directory_is_local_and_absolute(tmp_path: Path) -> None:
    source = resolve_source(make_settings(**{"primary.model": "sentiguard"}))
    assert source.hub_id is None
    assert source.local_dir is not None and source.local_dir.is_absolute()


def test_owner_slash_name_without_a_directory_is_a_hub_id() -> None:
    source = resolve_source(make_settings(**{"primary.model": HUB_ID}))
    assert (source.hub_id, source.local_dir) == (HUB_ID, None)


def test_a_missing_absolute_path_is_local_and_missing(tmp_path: Path) -> None:
    settings = make_settings(**{"primary.model": str(tmp_path / "nope")})
    assert resolve_source(settings).hub_id is None
    with pytest.raises(ModelLoadError) as e:
        preflight(settings)
    assert e.value.cause == "missing"
    assert "sentiguard train primary" in str(e.value)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (MemoryError(), "memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 8 TB"), "memory"),
        (ModuleNotFoundError("No module named 'transformers'"), "import"),
        (FileNotFoundError("vocab.txt"), "missing"),
        (ValueError("Error while deserializing header: HeaderTooLarge"), "corrupt"),
    ],
)
def test_load_errors_are_classified(error: BaseException, cause: str) -> None:
    wrapped = RuntimeError("SbertForSequenceClassification: failed")
    wrapped.__cause__ = error
    result = classify(wrapped, "models/primary")
    assert result.cause == cause
    assert "Fix: " in str(result)


def test_windows_cover_the_whole_text_with_overlap() -> None:
    m = PrimaryModel.__new__(PrimaryModel)
    m.long_text = "window"
    ids = list(range(25))
    pieces = m._pieces(ids, 10)
    assert [p[0] for p in pieces] == [0, 5, 10, 15]
    assert pieces[-1][-1] == 24 and all(len(p) == 10 for p in pieces)
    m.long_text = "truncate"
    assert m._pieces(ids, 10) == [list(range(10))]


# --- the embedded model ---------------------------------------------------------------


@needs_model
def test_loads_the_local_directory_without_the_hub(model: PrimaryModel) -> None:
    assert model.name == str(EMBEDDED_MODEL)
    name, digest = model.version.rsplit("@", 1)
    assert name == str(EMBEDDED_MODEL) and len(digest) == 12
    assert model.pipeline is not None  # it went through ModelScope's pipeline()


@needs_model
def test_hub_id_is_fetched_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_snapshot(model_id: str, *args: Any, **kwargs: Any) -> str:
        calls.append(model_id)
        return str(EMBEDDED_MODEL)  # stands in for the downloaded snapshot

    block_hub(monkeypatch)
    hub_snapshot = importlib.import_module("modelscope.hub.snapshot_download")
    monkeypatch.setattr(hub_snapshot, "snapshot_download", fake_snapshot)
    loaded = load_model(make_settings(**{"primary.model": HUB_ID}))
    assert calls == [HUB_ID]
    assert loaded.name == HUB_ID and loaded.version.startswith(HUB_ID + "@")


def test_unreachable_hub_is_a_missing_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("modelscope.cn unreachable")

    hub_snapshot = importlib.import_module("modelscope.hub.snapshot_download")
    monkeypatch.setattr(hub_snapshot, "snapshot_download", offline)
    with pytest.raises(ModelLoadError) as e:
        load_model(make_settings(**{"primary.model": HUB_ID}))
    assert e.value.cause == "missing"
    assert "primary.model" in str(e.value)


@needs_model
def test_known_answers(model: PrimaryModel) -> None:
    answers = model.predict(POSITIVE + NEGATIVE)
    assert [a.p_positive > 0.5 for a in answers] == [True] * 3 + [False] * 3
    assert not any(a.truncated for a in answers)


@needs_model
def test_the_known_answer_probe_passes(model: PrimaryModel) -> None:
    assert probe.passed([a.p_positive for a in model.predict(probe.TEXTS)])
    assert not probe.passed([1 - a.p_positive for a in model.predict(probe.TEXTS)])


@needs_model
def test_batched_equals_the_plain_pipeline(model: PrimaryModel) -> None:
    long_review = "这家店的东西还行，" * 40  # longer than sequence_length: truncated
    texts = [*POSITIVE, "好", long_review, *NEGATIVE, "一般般吧，价格有点贵。"]
    before, model.long_text = model.long_text, "truncate"  # what the pipeline does
    try:
        batched = model.predict(texts)
    finally:
        model.long_text = before
    reference = model.predict_pipeline(texts)
    assert [b.truncated for b in batched] == [r.truncated for r in reference]
    assert batched[4].truncated
    for b, r in zip(batched, reference, strict=True):
        assert b.p_positive == pytest.approx(r.p_positive, abs=1e-5)


@needs_model
def test_window_mode_averages_windows_of_long_texts(model: PrimaryModel) -> None:
    long_review = "质量很好，非常满意。" * 30 + "但是后来坏了，很失望。" * 30
    before = model.long_text
    try:
        model.long_text = "window"
        (windowed,) = model.predict([long_review])
        model.long_text = "truncate"
        (truncated,) = model.predict([long_review])
    finally:
        model.long_text = before
    assert windowed.truncated and truncated.truncated
    assert windowed.p_positive != pytest.approx(truncated.p_positive, abs=1e-4)


def _tiny_hf_bert(directory: Path) -> None:
    """A random 1-layer Hugging Face BERT classifier directory (no configuration.json)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    chars = sorted(set("".join(POSITIVE + NEGATIVE)))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)


def test_transformers_backend_serves_a_hugging_face_directory(tmp_path: Path) -> None:
    import torch

    directory = tmp_path / "hf-bert"
    _tiny_hf_bert(directory)
    settings = make_settings(
        **{
            "primary.model": str(directory),
            "primary.backend": "transformers",
            "primary.sequence_length": 32,
        }
    )
    loaded = load_model(settings)
    assert loaded.pipeline is None and loaded.version.startswith(f"{directory}@")
    texts = [*POSITIVE, "好", *NEGATIVE, "好" * 100]
    batched = loaded.predict(texts)
    assert [b.truncated for b in batched] == [False] * 7 + [True]
    # Reference: each text alone through the model, padded to sequence_length as a
    # plain tokenizer call would.
    net, tokenizer = loaded._forward, loaded.tokenizer
    for text, b in zip(texts, batched, strict=True):
        enc = tokenizer(
            text, truncation=True, max_length=32, padding="max_length", return_tensors="pt"
        )
        with torch.inference_mode():
            p = torch.softmax(net(**enc).logits, dim=-1)[0, 1].item()
        assert b.p_positive == pytest.approx(p, abs=1e-5)


def test_buckets_keep_short_texts_apart_from_a_long_one() -> None:
    m = PrimaryModel.__new__(PrimaryModel)
    m.max_batch = 4
    segments = [(i, [0] * n) for i, n in enumerate([10, 10, 10, 10, 10, 10, 120])]
    buckets = m._buckets(segments)
    # 4x10 | 10,10,120 costs 2 passes (2 x 256 overhead) + 40 + 360 padded tokens: less
    # than a third pass would save.
    assert [len(b) for b in buckets] == [4, 3]
    assert [s for b in buckets for s in b] == segments  # every segment once, in order
    assert all(len(b) <= 4 for b in buckets)
    m.max_batch = 32
    assert [len(b) for b in m._buckets(segments)] == [6, 1]  # no padding 10 -> 120


@needs_model
def test_damaged_weights_are_corrupt(tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "bad-weights"
    shutil.copytree(EMBEDDED_MODEL, broken)
    (broken / "model.safetensors").write_bytes(b"\x00\x01 not safetensors at all")
    with pytest.raises(ModelLoadError) as e:
        load_model(make_settings(**{"primary.model": str(broken)}))
    assert e.value.cause == "corrupt"
    assert "sentiguard train primary" in str(e.value)


def _kernel_refuses_huge_allocations() -> bool:
    # With vm.overcommit_memory = 1 the kernel grants any size and the OOM killer would
    # end this test run instead; 0 (the default) and 2 refuse a 16 TB request outright.
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@needs_model
@pytest.mark.skipif(
    not _kernel_refuses_huge_allocations(), reason="vm.overcommit_memory=1 grants any size"
)
def test_a_model_too_big_for_memory_is_a_memory_failure(tmp_path: Path) -> None:
    import json
    import shutil

    # A 64-billion-token vocabulary: torch's allocator refuses it, as it would refuse a
    # model too big for the machine (or its container limit).
    too_big = tmp_path / "too-big"
    shutil.copytree(EMBEDDED_MODEL, too_big)
    config = json.loads((too_big / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = 2**36
    (too_big / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError) as e:
        load_model(make_settings(**{"primary.model": str(too_big)}))
    assert e.value.cause == "memory"
    assert "memory" in str(e.value).split("Fix: ", 1)[1]


@needs_model
def test_last_layer_on_cls_gives_the_full_pass_logits(model: PrimaryModel) -> None:
    import torch

    net = model.pipeline.model
    fast = model_mod._last_layer_on_cls(net)
    assert fast is not None and model._forward is not net  # the worker serves the fast path
    torch.manual_seed(0)
    ids = torch.randint(5, net.config.vocab_size, (6, 40))
    mask = torch.ones_like(ids)
    for row, length in enumerate([40, 33, 20, 7, 3, 1]):  # padded rows, as in buckets
        ids[row, length:] = 0
        mask[row, length:] = 0
    types = torch.zeros_like(ids)
    with torch.inference_mode():
        full = net(input_ids=ids, attention_mask=mask, token_type_ids=types)["logits"]
        cls = fast(input_ids=ids, attention_mask=mask, token_type_ids=types)["logits"]
    assert torch.allclose(full, cls, atol=1e-5), (full, cls)
