"""The chunker: chunk sets that verify, and models rebuilt from chunks alone that match exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sw_core.chunks.assemble import assemble_model, read_state_dict
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest
from sw_core.cli import main as sw_main
from sw_core.local.bundled import minilm_path, smollm2_gguf_path
from sw_core.utils import calculate_chunk_hash
from tests.support.models import sample_inputs, tiny_model


def _outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5"])
def test_random_models_round_trip_exactly(kind: str, tmp_path: Path) -> None:
    model = tiny_model(kind)
    manifest = chunk_model(model, tmp_path, name=f"tiny-{kind}", max_chunk_mb=0.05)

    n_layers = model.config.num_hidden_layers if kind != "t5" else 4
    assert len(manifest.blocks()) == n_layers
    assert all(c.sha256 == calculate_chunk_hash(tmp_path / c.file) for c in manifest.chunks)
    assert any(c.rows for c in manifest.chunks), "the 512x64 embedding should be row-sharded"
    stored = [t for c in manifest.chunks for t in c.tensors if c.rows is None]
    assert len(stored) == len(set(stored)), "a tensor was stored twice"
    assert not set(manifest.tied) & set(stored), "tied weights must be stored once"

    rebuilt = assemble_model(tmp_path)
    inputs = sample_inputs(kind)
    assert torch.equal(_outputs(model, inputs), _outputs(rebuilt, inputs))


def test_gpt2_and_t5_ties_are_recorded(tmp_path: Path) -> None:
    gpt2 = chunk_model(tiny_model("gpt2"), tmp_path / "gpt2")
    assert gpt2.tied == {"lm_head.weight": "transformer.wte.weight"}
    t5 = chunk_model(tiny_model("t5"), tmp_path / "t5")
    assert t5.tied["lm_head.weight"] == "shared.weight"
    assert t5.stacks() == ["encoder.block", "decoder.block"]
    roles = [c.role for c in t5.chunks]
    assert roles[0] == "embeddings" and roles[-1] == "head"


def test_minilm_folder_chunks_verify_and_match(tmp_path: Path) -> None:
    from transformers import AutoModel

    out = tmp_path / "minilm"
    assert sw_main(["chunk", str(minilm_path()), "--out", str(out), "--name", "minilm"]) == 0
    manifest = Manifest.load(out)
    assert manifest.name == "minilm" and manifest.model_class == "BertModel"
    assert [c.name for c in manifest.blocks()] == [f"encoder.layer.{i}" for i in range(6)]
    assert {"tokenizer.json", "config.json", "1_Pooling/config.json"} <= {
        f.file for f in manifest.files
    }
    assert sw_main(["verify", str(out)]) == 0

    reference = AutoModel.from_pretrained(minilm_path()).eval()
    rebuilt = assemble_model(out)
    inputs = {
        "input_ids": torch.tensor([[101, 7592, 2088, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
    }
    assert torch.equal(_outputs(reference, inputs), _outputs(rebuilt, inputs))


def test_flipped_byte_is_named_by_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = chunk_model(tiny_model("bert"), tmp_path)
    victim = manifest.blocks()[1]
    path = tmp_path / victim.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert sw_main(["verify", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert victim.name in text
    others = [c.name for c in manifest.chunks if c.name != victim.name and c.name in text.split()]
    assert not others, f"only the bad chunk may be named, got {others}"


@pytest.mark.slow
def test_smollm2_gguf_chunks_and_rebuilds(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    out = tmp_path / "smollm2"
    assert sw_main(["chunk", str(gguf), "--out", str(out), "--name", "smollm2"]) == 0
    assert sw_main(["verify", str(out)]) == 0
    manifest = Manifest.load(out)
    assert manifest.model_class == "LlamaForCausalLM" and len(manifest.blocks()) == 30
    assert manifest.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert max(c.param_bytes for c in manifest.chunks) <= 16 << 20

    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    state = read_state_dict(out, manifest)
    for name, tensor in reference.state_dict().items():
        if name in state:
            assert torch.equal(state[name], tensor), name
    rebuilt = assemble_model(out)
    ids = torch.tensor([[1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47]])
    assert torch.equal(
        _outputs(reference, {"input_ids": ids}), _outputs(rebuilt, {"input_ids": ids})
    )


def test_folder_chunking_streams_tensor_by_tensor(tmp_path: Path) -> None:
    """Chunking a ~200 MB safetensors folder raises peak RSS by far less than the model size."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=8192, n_embd=512, n_layer=16, n_head=8, n_positions=256
    )
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "src")
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    del model
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        import torch, transformers, safetensors
        from sw_core.chunks.chunker import chunk_model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        chunk_model({str(tmp_path / "src")!r}, {str(tmp_path / "out")!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_bytes": (after - before) * 1024}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    grew = json.loads(result.stdout.strip().splitlines()[-1])["grew_bytes"]
    assert model_bytes > 150 << 20
    assert grew < model_bytes * 0.5, (
        f"RSS grew {grew >> 20} MiB for a {model_bytes >> 20} MiB model"
    )


def test_narrow_chunks_say_how_they_will_be_computed(tmp_path: Path, capsys) -> None:
    out = tmp_path / "minilm-bf16"
    args = ["chunk", str(minilm_path()), "--out", str(out), "--name", "m", "--dtype", "bfloat16"]
    assert sw_main(args) == 0
    captured = capsys.readouterr()
    assert Manifest.load(out).dtype == "bfloat16"
    assert "SW_COMPUTE_DTYPE=bfloat16" in captured.err and "widened" in captured.err
    assert captured.out.startswith("m: BertModel")  # stdout keeps the summary only
    assert sw_main(["chunk", str(minilm_path()), "--out", str(tmp_path / "f32")]) == 0
    assert "SW_COMPUTE_DTYPE" not in capsys.readouterr().err
