"""A checkpoint whose config names a head class the weights lack (all-MiniLM-L6-v2 with
``architectures: ["BertForMaskedLM"]``, as many published embedding models ship) is chunked
as the base model, as ``AutoModel`` loads it, and says so on stderr; a checkpoint that lacks
more than a head is still refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sw_core.chunks.manifest import Manifest
from sw_core.cli import main as sw_main
from sw_core.engine import StreamingEngine
from sw_core.local.bundled import minilm_path
from tests.support.models import ChunkedModel

pytestmark = pytest.mark.slow

SENTENCES = ["A man plays a guitar.", "The weather is lovely today."]


def _copy_with_architecture(folder: Path, architecture: str) -> Path:
    shutil.copytree(minilm_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


async def _embed(folder: Path) -> list[list[float]]:
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=2048)
    try:
        return await engine.run_async("embed", [{"text": s} for s in SENTENCES])
    finally:
        await engine.aclose()


async def test_headless_masked_lm_config_chunks_the_base_model(
    tmp_path: Path, minilm_chunked: ChunkedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _copy_with_architecture(tmp_path / "minilm", "BertForMaskedLM")
    code = sw_main(["chunk", str(source), "--out", str(tmp_path / "out")])
    assert code == 0
    err = capsys.readouterr().err
    assert "BertForMaskedLM" in err and "lacks its head" in err and "BertModel" in err
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.model_class == "BertModel"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [
        "BertModel"
    ]
    assert await _embed(tmp_path / "out") == await _embed(minilm_chunked.folder)


def test_a_checkpoint_lacking_more_than_a_head_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    source = _copy_with_architecture(tmp_path / "minilm", "BertForMaskedLM")
    weights = load_file(str(source / "model.safetensors"))
    weights.pop("encoder.layer.3.output.dense.weight")
    save_file(weights, str(source / "model.safetensors"))
    code = sw_main(["chunk", str(source), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "lacks" in capsys.readouterr().err
