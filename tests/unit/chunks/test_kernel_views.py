"""Kernel views of chunks in the manifest: what a view reads, and what a manifest writes."""

from __future__ import annotations

import json

import pytest

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.exceptions import ModelError

CHUNK = ChunkInfo(
    name="model.layers.0",
    file="model.layers.0.safetensors",
    size_bytes=1000,
    sha256="a" * 64,
    tensors=["w"],
    role="block",
    param_bytes=900,
    blake3="b" * 64,
)


def _manifest(chunk: ChunkInfo) -> Manifest:
    return Manifest(
        name="m", architecture="llama", model_class="X", dtype="float32", chunks=[chunk]
    )


def test_a_view_reads_the_prefix_under_its_own_digests() -> None:
    assert CHUNK.kernel_view() is None and not CHUNK.is_prefix
    chunk = ChunkInfo(
        **{
            **CHUNK.__dict__,
            "kernel_bytes": 800,
            "kernel_sha256": "c" * 64,
            "kernel_blake3": "d" * 64,
        }
    )
    view = chunk.kernel_view()
    assert view is not None and view.is_prefix
    assert (view.size_bytes, view.sha256, view.blake3) == (800, "c" * 64, "d" * 64)
    assert view.file_bytes == 1000 and view.param_bytes == 700 and view.file == chunk.file


def test_manifests_without_views_are_written_as_before() -> None:
    entry = json.loads(_manifest(CHUNK).to_json())["chunks"][0]
    assert not {"kernel_bytes", "kernel_sha256", "kernel_blake3", "file_bytes"} & set(entry)
    assert Manifest.from_json(_manifest(CHUNK).to_json()).chunks == [CHUNK]


def test_a_manifest_cannot_claim_a_chunk_is_a_view() -> None:
    raw = json.loads(_manifest(CHUNK).to_json())
    raw["chunks"][0]["file_bytes"] = 2000
    with pytest.raises(ModelError, match="file_bytes"):
        Manifest.from_json(json.dumps(raw))


@pytest.mark.parametrize(
    "fields",
    [
        {"kernel_bytes": 2000, "kernel_sha256": "c" * 64},  # past the file's end
        {"kernel_bytes": 0, "kernel_sha256": "c" * 64},
        {"kernel_bytes": 800},  # no digest
        {"kernel_blake3": "d" * 64},
    ],
)
def test_a_kernel_prefix_that_cannot_describe_the_file_is_refused(fields: dict) -> None:
    raw = json.loads(_manifest(CHUNK).to_json())
    raw["chunks"][0].update(fields)
    with pytest.raises(ModelError, match="kernel prefix"):
        Manifest.from_json(json.dumps(raw))
