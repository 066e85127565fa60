"""``sw chunk`` and ``sw register`` refuse an unsupported architecture at once, naming the
supported ones, instead of leaving it to the first job to dead-letter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from sw_core.architectures import ARCHITECTURES, supported_list
from sw_core.chunks.chunker import chunk_model
from sw_core.cli import main
from sw_core.exceptions import ModelError
from tests.support.storage import make_chunk_set


def _unsupported_model() -> torch.nn.Module:
    config = transformers.GPTNeoXConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(config).eval()


def test_chunk_refuses_an_unsupported_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _unsupported_model().save_pretrained(tmp_path / "neox")
    out = tmp_path / "chunks"
    assert main(["chunk", str(tmp_path / "neox"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "architecture 'gpt_neox' is not supported" in err
    assert f"(supported: {supported_list()})" in err and "qwen2_moe, qwen3" in err
    assert not list(out.glob("*.safetensors")) and not (out / "manifest.json").exists()


def test_chunk_model_refuses_an_unsupported_model_object(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="'gpt_neox' is not supported"):
        chunk_model(_unsupported_model(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_register_refuses_an_unsupported_chunk_set(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "odd"
    make_chunk_set(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["architecture"] = "falcon"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    flags = ["--redis-url", redis_url]
    assert main(["register", "odd", str(folder), *flags]) == 2
    err = capsys.readouterr().err
    assert "chunk set 'tiny'" in err and "'falcon' is not supported" in err
    assert main(["models", *flags]) == 0
    assert "odd" not in capsys.readouterr().out
    # --no-check skips reading the manifest, and so the refusal too
    assert main(["register", "odd", str(folder), "--no-check", *flags]) == 0


def test_every_listed_architecture_has_a_family() -> None:
    assert {a.family for a in ARCHITECTURES.values()} == {"encoder", "decoder", "seq2seq"}
    assert {"qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "opt"} <= set(
        ARCHITECTURES
    )
