"""``embed`` follows the folder's sentence-transformers modules, checked against
sentence-transformers itself.

Tiny random-init encoders (BERT, RoBERTa, XLM-RoBERTa, MPNet, DistilBERT) are saved as
sentence-transformers folders (pooling cls / mean / max / lasttoken / weightedmean /
mean_sqrt_len_tokens or several concatenated, with or without Dense and Normalize,
``max_seq_length`` 16), chunked, and embedded by the engine; every vector must be within 1e-5
of ``SentenceTransformer.encode`` -- including a text longer than ``max_seq_length``, which
both truncate. The bundled all-MiniLM-L6-v2 (legacy config files, ``max_seq_length`` 256)
is checked the same way on texts of about 300 and 600 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sw_core.chunks.chunker import chunk_model
from sw_core.engine import StreamingEngine
from sw_core.exceptions import ModelError
from tests.support.models import ChunkedModel
from tests.support.st_zoo import encoder_model, minilm_tokenizer, sentence_folder

TEXTS = [
    "The cat sits on the mat.",
    "hi",
    "Streaming weights layer by layer keeps memory low, even for long sentences like this one "
    "which is well beyond sixteen tokens.",
]

#: (encoder, pooling, Dense output size or None, Normalize module, memory budget MiB)
CASES = [
    ("bert", "cls", 24, True, 2048),
    ("roberta", "mean", None, False, 2048),
    ("xlm-roberta", "max", None, True, 2048),
    ("mpnet", "lasttoken", 16, False, 2048),
    ("distilbert", "weightedmean", None, True, 2048),
    ("bert", "mean_sqrt_len_tokens", None, False, 2048),
    ("roberta", ["cls", "mean"], 24, True, 2048),
    ("mpnet", "mean", None, True, 2),
]


async def _embed(folder: Path, texts: list[str], budget_mb: int = 2048, **params: Any) -> Any:
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=budget_mb)
    try:
        return await engine.run_async("embed", [{"text": t, **params} for t in texts])
    finally:
        engine.close()


@pytest.mark.parametrize(("kind", "pooling", "dense", "normalize", "budget_mb"), CASES)
async def test_pooling_matches_sentence_transformers(
    kind: str,
    pooling: str | list[str],
    dense: int | None,
    normalize: bool,
    budget_mb: int,
    tmp_path: Path,
) -> None:
    st_dir = tmp_path / "st"
    reference_model = sentence_folder(
        kind, st_dir, pooling=pooling, dense_out=dense, normalize=normalize
    )
    manifest = chunk_model(st_dir, tmp_path / "chunks", max_chunk_mb=0.5)
    assert {"modules.json", "1_Pooling/config.json"} <= {f.file for f in manifest.files}
    if dense is not None:
        assert any(f.file.endswith("_Dense/model.safetensors") for f in manifest.files)
    with torch.inference_mode():
        reference = reference_model.encode(TEXTS, convert_to_tensor=True)
    results = await _embed(tmp_path / "chunks", TEXTS, budget_mb, details=True)
    actual = torch.tensor([r["embedding"] for r in results])
    torch.testing.assert_close(actual, reference.float(), atol=1e-5, rtol=0)
    modes = "+".join(pooling) if isinstance(pooling, list) else pooling
    expected = modes + ("+dense" if dense else "") + ("+normalize" if normalize else "")
    assert {r["pooling"] for r in results} == {expected}
    assert [r["truncated"] for r in results] == [False, False, True]
    assert results[2]["tokens"] == 16


async def test_truncate_false_keeps_the_error(tmp_path: Path) -> None:
    sentence_folder("roberta", tmp_path / "st", pooling="cls", max_seq_length=16)
    chunk_model(tmp_path / "st", tmp_path / "chunks")
    long_text = " ".join(["word"] * 80)  # 82 tokens: RoBERTa's 66 positions read 65 tokens
    [error] = await _embed(tmp_path / "chunks", [long_text], truncate=False)
    assert isinstance(error, ModelError) and "accepts at most 65" in str(error)
    [vector] = await _embed(tmp_path / "chunks", [long_text])
    assert len(vector) == 32


async def test_folder_without_sentence_modules_gets_mean_and_normalize(tmp_path: Path) -> None:
    tokenizer = minilm_tokenizer()
    model = encoder_model("roberta", tokenizer.vocab_size)
    chunk_model(model, tmp_path, tokenizer=tokenizer)
    [result] = await _embed(tmp_path, ["hello there"], details=True)
    batch = tokenizer(["hello there"], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state[0]
    expected = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
    torch.testing.assert_close(torch.tensor(result["embedding"]), expected, atol=1e-5, rtol=0)
    assert (result["pooling"], result["modules"]) == ("mean+normalize", "default")
    [raw] = await _embed(tmp_path, ["hello there"], normalize=False)
    torch.testing.assert_close(torch.tensor(raw), hidden.mean(dim=0), atol=1e-5, rtol=0)


async def test_unknown_sentence_module_is_refused_at_load(tmp_path: Path) -> None:
    sentence_folder("bert", tmp_path / "st", pooling="mean")
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "", "type": "sentence_transformers.LSTM"})
    (tmp_path / "st" / "modules.json").write_text(json.dumps(modules))
    chunk_model(tmp_path / "st", tmp_path / "chunks")
    with pytest.raises(ModelError, match="'LSTM' module"):
        await StreamingEngine.open(str(tmp_path / "chunks"))


def _words(n: int) -> str:
    return " ".join(f"river{i % 50} mountain" for i in range(n))


async def test_minilm_long_texts_match_sentence_transformers(minilm_chunked: ChunkedModel) -> None:
    """all-MiniLM-L6-v2 keeps 256 tokens (sentence_bert_config.json): a ~300- and a ~600-token
    text embed as sentence-transformers embeds them; with truncate=false the 600 fails."""
    from sentence_transformers import SentenceTransformer

    from sw_core.local.bundled import minilm_path

    texts = [_words(100), _words(200), "a short one"]
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    engine = await StreamingEngine.open(str(minilm_chunked.folder), memory_budget_mb=2048)
    try:
        results = await engine.run_async("embed", [{"text": t, "details": True} for t in texts])
        strict = await engine.run_async("embed", [{"text": t, "truncate": False} for t in texts])
    finally:
        engine.close()
    lengths = [len(minilm_chunked.tokenizer(t)["input_ids"]) for t in texts]
    assert 256 < lengths[0] <= 512 < lengths[1]
    actual = torch.tensor([r["embedding"] for r in results])
    torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)
    assert [r["truncated"] for r in results] == [True, True, False]
    assert results[0]["pooling"] == "mean+normalize" and results[0]["tokens"] == 256
    assert isinstance(strict[1], ModelError) and "accepts at most 512" in str(strict[1])
    cosine = torch.nn.functional.cosine_similarity(torch.tensor(strict[0]), reference[0], dim=0)
    assert float(cosine) < 0.9999  # untruncated: not what sentence-transformers gives
