"""``sw synth`` end to end: chunk sets of random weights that the engine runs like the real
thing, written to a folder or to S3, seeded, refused when they cannot fit, and marked
synthetic wherever a model is listed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai
import pytest
import torch
import transformers
from safetensors.torch import load_file

from sw_core.chunks.chunk_set import ChunkSet
from sw_core.chunks.manifest import PACKED_FORMAT_VERSION, Manifest
from sw_core.chunks.safetensors_io import beyond
from sw_core.chunks.verify import verify_chunk_set
from sw_core.engine import StreamingEngine
from sw_core.exceptions import PermanentStorageError
from sw_core.hashing import file_digests
from sw_core.settings import Settings
from sw_core.synth import synth_chunk_set
from tests.support.cli import run_sw_here
from tests.support.gateway import start_gateway
from tests.support.settings import fast_settings

PROMPT = [1, 17, 300, 42, 9]


def reference_model(folder: Path, manifest: Manifest) -> torch.nn.Module:
    """The transformers model of the chunk set's config holding its weights (widened to
    float32, as the engine computes by default on a CPU)."""
    config = transformers.AutoConfig.from_pretrained(folder)
    model = getattr(transformers, manifest.model_class)(config).eval()
    state: dict[str, torch.Tensor] = {}
    for chunk in manifest.chunks:
        for name, tensor in load_file(folder / chunk.file).items():
            if chunk.rows is None:
                state[name] = tensor
            else:  # a row shard (or an expert) of a bigger tensor
                state.setdefault(name, torch.empty_like(model.state_dict()[name]))
                state[name][chunk.rows[0] : chunk.rows[1]] = tensor
    model.load_state_dict(state, strict=True)
    return model


async def engine_logits(folder: Path, budget_mb: int) -> torch.Tensor:
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=budget_mb)
    try:
        [logits] = await engine.run_async(
            "forward", [{"input_ids": PROMPT, "output": "logits"}], tensors=True
        )
        return logits
    finally:
        await engine.aclose()


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-mixtral"])
def test_the_engine_runs_a_synthetic_set_as_transformers_runs_its_weights(
    tmp_path: Path, shape: str
) -> None:
    manifest = synth_chunk_set(shape, str(tmp_path), seed=5, max_chunk_mb=0.25)
    assert manifest.synthetic == {"shape": shape, "seed": 5, "generator": "plausible-bf16-v1"}
    assert (
        manifest.describe_synthetic() == f"synthetic: random weights of the {shape} shape (seed 5)"
    )
    assert json.loads((tmp_path / "manifest.json").read_text())["synthetic"]["shape"] == shape
    roles = {c.role for c in manifest.chunks}
    assert "block" in roles and any(c.rows for c in manifest.chunks)  # row shards too
    if shape == "tiny-mixtral":
        assert sum(c.role == "expert" for c in manifest.chunks) == 2 * 4
    model = reference_model(tmp_path, manifest)
    with torch.inference_mode():
        want = model(torch.tensor([PROMPT])).logits[0]
    got = asyncio.run(engine_logits(tmp_path, budget_mb=2))  # streamed: a small budget
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.isfinite(got).all()


async def test_a_set_verifies_and_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    first = synth_chunk_set("tiny-llama", str(tmp_path / "a"), seed=1)
    again = synth_chunk_set("tiny-llama", str(tmp_path / "b"), seed=1)
    other = synth_chunk_set("tiny-llama", str(tmp_path / "c"), seed=2, layers=2, name="two")
    assert [c.sha256 for c in first.chunks] == [c.sha256 for c in again.chunks]
    assert {c.sha256 for c in first.chunks}.isdisjoint(c.sha256 for c in other.chunks)
    assert len(other.blocks()) == 2 and other.name == "two"
    assert other.synthetic is not None and other.synthetic["layers"] == 2
    async with await ChunkSet.open(str(tmp_path / "a"), Settings()) as chunk_set:
        report = await verify_chunk_set(chunk_set.backend, chunk_set.manifest)
    assert report.ok, report.bad


async def test_a_set_goes_straight_to_s3(s3_server, s3_bucket: str) -> None:
    settings = fast_settings("redis://127.0.0.1:1/0", **s3_server.settings_overrides())
    location = f"s3://{s3_bucket}/synth/tiny"
    manifest = synth_chunk_set("tiny-llama", location, settings=settings, seed=3)
    async with await ChunkSet.open(location, settings, with_backup=False) as chunk_set:
        assert chunk_set.manifest == manifest
        report = await verify_chunk_set(chunk_set.backend, chunk_set.manifest)
    assert report.ok, report.bad
    names = {o.object_name for o in s3_server.client().list_objects(s3_bucket, recursive=True)}
    assert "synth/tiny/manifest.json" in names and "synth/tiny/config.json" in names


def test_a_set_that_does_not_fit_on_disk_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import sw_core.synth.build as build

    free = shutil.disk_usage(tmp_path)._replace(free=10 << 20)
    monkeypatch.setattr(build.shutil, "disk_usage", lambda _path: free)
    with pytest.raises(PermanentStorageError, match=r"not enough disk.*--layers"):
        synth_chunk_set("llama-3-8b", str(tmp_path / "big"))
    assert not (tmp_path / "big").exists()


def test_the_command_writes_lists_and_refuses_clearly(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    settings = fast_settings(redis_url)
    rc, out, err = run_sw_here(
        ["synth", "tiny-llama", "--out", str(tmp_path / "t"), "--json"],
        settings,
        monkeypatch,
        capsys,
    )
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["synthetic"]["shape"] == "tiny-llama" and summary["blocks"] == 4
    assert "random weights of the tiny-llama shape" in err and "nonsense" in err
    rc, out, _ = run_sw_here(["synth", "--list"], settings, monkeypatch, capsys)
    assert rc == 0 and "llama-3-70b" in out and "141.11 GB" in out
    for args, message in (
        (["synth", "llama-9"], "unknown shape 'llama-9'"),
        (["synth", "tiny-llama"], "give a SHAPE and --out"),
        (["synth", "tiny-llama", "--out", str(tmp_path / "x"), "--layers", "9"], "--layers"),
    ):
        rc, _, err = run_sw_here(args, settings, monkeypatch, capsys)
        assert rc == 2 and message in err, (args, err)


def test_register_and_the_gateway_say_the_weights_are_random(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    synth_chunk_set("tiny-llama", str(tmp_path / "synth"), seed=0)
    real = tmp_path / "real"
    synth_chunk_set("tiny-llama", str(real))
    manifest = json.loads((real / "manifest.json").read_text())  # a set without the mark
    del manifest["synthetic"]
    (real / "manifest.json").write_text(json.dumps(manifest))
    settings = fast_settings(redis_url, models="")
    rc, out, err = run_sw_here(
        ["register", "fake", str(tmp_path / "synth")], settings, monkeypatch, capsys
    )
    assert rc == 0 and "SYNTHETIC, random weights of the tiny-llama shape (seed 0)" in out
    assert "warning: fake is synthetic" in err
    rc, out, err = run_sw_here(["register", "plain", str(real)], settings, monkeypatch, capsys)
    assert rc == 0 and "SYNTHETIC" not in out and not err.strip()

    gateway = start_gateway(settings, tmp_path / "gateway.log")
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {"fake", "plain"}
        assert cards["fake"].model_extra["synthetic"].startswith("synthetic: random weights")
        assert "synthetic" in cards["fake"].owned_by
        assert "synthetic" not in (cards["plain"].model_extra or {})
        one = client.models.retrieve("fake")
        assert one.model_extra["synthetic"] == cards["fake"].model_extra["synthetic"]
        client.close()
    finally:
        gateway.stop()


async def test_an_int4_set_packs_the_blocks_linear_layers_and_runs_streamed(
    tmp_path: Path,
) -> None:
    manifest = synth_chunk_set(
        "tiny-llama", str(tmp_path), dtype="int4", group_size=32, max_chunk_mb=0.25
    )
    assert (
        manifest.format_version == PACKED_FORMAT_VERSION and manifest.synthetic["dtype"] == "int4"
    )
    kinds = {name: fmt.kind for name, fmt in manifest.formats.items()}
    assert kinds["model.layers.0.mlp.up_proj.weight"] == "int4"
    assert kinds["lm_head.weight"] == "int8"  # as sw chunk --quantize int4 packs a head
    assert "model.embed_tokens.weight" not in kinds
    block = manifest.blocks()[0]
    names = set(load_file(tmp_path / block.file))
    assert names == set(manifest.stored_tensors(block))
    # the exact scales last, after the kernel prefix the bfloat16 engine reads
    assert block.kernel_bytes is not None and block.kernel_bytes < block.size_bytes
    assert (block.kernel_sha256, block.kernel_blake3) == file_digests(
        tmp_path / block.file, length=block.kernel_bytes
    )
    head = (tmp_path / block.file).read_bytes()[: block.kernel_bytes]
    assert beyond(head) == sorted(n for n in names if n.endswith(":scales"))
    async with await ChunkSet.open(str(tmp_path), Settings()) as chunk_set:
        assert (await verify_chunk_set(chunk_set.backend, chunk_set.manifest)).ok
    resident = await engine_logits(tmp_path, budget_mb=64)
    streamed = await engine_logits(tmp_path, budget_mb=1)  # blocks and shards streamed
    assert torch.isfinite(resident).all()
    torch.testing.assert_close(streamed, resident, rtol=0, atol=0)
