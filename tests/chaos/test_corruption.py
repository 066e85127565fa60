"""Scenario 4: corruption and tampering, through the real loader path.

A real arq loader worker (in this process) loads chunks from moto's S3 with the backup
folder behind it into the Redis chunk cache; a :class:`RemoteChunkSource` asks for them the
way inference workers do, and the engine's parser (:func:`load_tensors`) turns bytes into
tensors. Every damaged or forged chunk must be refused or repaired, never loaded; the
pickle's canary file must never appear; the integrity and corruption counters must match
what was injected.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle
import re
import time
from pathlib import Path

import pytest
import redis

from sw_core.cache import ChunkCache
from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.chunks.safetensors_io import load_tensors, parse_header
from sw_core.chunks.verify import verify_chunk_set
from sw_core.counters import INTEGRITY_FAILURES
from sw_core.exceptions import SecurityError
from sw_core.pipeline.registry import ModelRegistry
from sw_core.settings import Settings
from sw_core.storage import S3Backend
from tests.chaos import forgery as forge
from tests.chaos.harness import PublishedModel, publish_model
from tests.chaos.report import Figures
from tests.support.observe import KEYS
from tests.support.pipeline import loader_worker
from tests.support.processes import REPO
from tests.support.servers import S3Server
from tests.support.settings import CHAOS, fast_settings
from tests.support.storage import tensor_chunk
from tests.support.waiting import wait_until
from workers.chunks.chunk_source import RemoteChunkSource
from workers.node import worker_options

pytestmark = [pytest.mark.chaos]


def s3_object(s3: S3Server, model: PublishedModel, file: str) -> bytes:
    response = s3.client().get_object(model.bucket, f"{model.name}/{file}")
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def put_s3_object(s3: S3Server, model: PublishedModel, file: str, data: bytes) -> None:
    s3.client().put_object(model.bucket, f"{model.name}/{file}", io.BytesIO(data), len(data))


async def forge_chunk_set(
    s3: S3Server, model: PublishedModel, forgeries: dict[int, bytes]
) -> Manifest:
    """Replace chunks everywhere (S3 and backup) AND their manifest entries: an attacker who
    controls the whole chunk set, so every sha256 matches the forged bytes."""
    manifest = model.manifest
    for index, data in forgeries.items():
        manifest = forge.replace_chunk(model.backup_folder, manifest, index, data)
        put_s3_object(s3, model, manifest.chunks[index].file, data)
    raw = (model.backup_folder / MANIFEST_FILE).read_bytes()
    put_s3_object(s3, model, MANIFEST_FILE, raw)
    return manifest


async def test_corruption_and_tampering_are_refused_or_repaired(
    s3: S3Server, redis_url: str, redis_client, tmp_path: Path, figures
) -> None:
    started = time.monotonic()
    canary = tmp_path / "canary-unpickled"
    honest = await publish_model(s3, tmp_path / "honest", name="honest", n_chunks=4)
    forged = await publish_model(s3, tmp_path / "forged", name="forged", n_chunks=6)
    settings = fast_settings(
        redis_url,
        CHAOS,
        **s3.settings_overrides(),
        backup_dir=str(honest.backup_dir),
        retry_initial_delay_s=0.02,
        retry_attempts=2,
    )
    forged_settings = settings.replace(backup_dir=str(forged.backup_dir))
    registry = ModelRegistry(redis_client, settings)
    await registry.register("honest", honest.location)
    await registry.register("forged", forged.location)
    good = {c.name: (honest.folder / c.file).read_bytes() for c in honest.manifest.chunks}
    c0, c1, c2, c3 = honest.manifest.chunks

    # the payload is armed: unpickling it elsewhere writes its canary (this is the proof
    # that the bytes below would run code if anything in the product unpickled them)
    armed = tmp_path / "armed-proof"
    pickle.loads(forge.pickle_bomb_bytes(armed))
    assert armed.exists()
    bomb = forge.pickle_bomb_bytes(canary)

    # damage in place, manifest honest: c0 flipped in S3 only (backup good), c1 flipped in
    # both, c2 replaced by the pickle in both
    put_s3_object(s3, honest, c0.file, forge.flip_byte(good[c0.name]))
    for chunk, data in ((c1, forge.flip_byte(good[c1.name])), (c2, bomb)):
        put_s3_object(s3, honest, chunk.file, data)
        (honest.backup_folder / chunk.file).write_bytes(data)

    # a consistent forgery: chunk files AND manifest replaced, every sha256 matches
    hostile = {
        0: bomb,
        1: forge.lying_size_bytes(),
        2: forge.overlapping_bytes(),
        3: forge.past_the_end_bytes(),
        4: forge.oversized_header_bytes(),
    }
    forged_manifest = await forge_chunk_set(s3, forged, hostile)

    outcomes: dict[str, str] = {}
    async with loader_worker(settings, start_timeout_s=15) as loader:
        source = RemoteChunkSource("honest", settings, timeout_s=20)
        try:
            # c0: the S3 copy fails its hash, the backup's copy is used and S3 repaired
            data = await source.fetch(c0)
            assert bytes(data) == good[c0.name]
            assert set(load_tensors(bytearray(data))) == {"weight", "bias"}
            await wait_until(
                lambda: s3_object(s3, honest, c0.file) == good[c0.name], 10, "S3 repaired"
            )
            outcomes["flipped byte in S3, good backup"] = "repaired from backup"
            # c1 and c2: only bad copies exist -> SecurityError, nothing cached
            for chunk, what in ((c1, "flipped byte in both copies"), (c2, "pickle as chunk")):
                with pytest.raises(SecurityError, match=re.escape(chunk.file)):
                    await source.fetch(chunk)
                outcomes[what] = "refused: SecurityError (sha256)"
            with ChunkCache.from_settings(settings) as cache:
                assert not cache.contains(c1.sha256) and not cache.contains(c2.sha256)
            assert loader.counters.get(INTEGRITY_FAILURES) == 1 + 2 + 2

            # a corrupted value in the Redis cache: dropped on read, counted, reloaded
            first = await source.fetch(c3)
            assert bytes(first) == good[c3.name]
            loads_before = loader.storage_loads
            part_key = KEYS.cache_part(c3.sha256, 0)
            sync = redis.Redis.from_url(redis_url)
            try:
                byte = sync.getrange(part_key, 100, 100)
                sync.setrange(part_key, 100, bytes([byte[0] ^ 0xFF]))
            finally:
                sync.close()
            again = await source.fetch(c3)
            assert bytes(again) == good[c3.name]
            assert loader.storage_loads == loads_before + 1
            with ChunkCache.from_settings(settings) as cache:
                assert cache.info().corruptions == 1
            outcomes["corrupted value in the Redis cache"] = "dropped, counted, reloaded"
        finally:
            await source.close()

    async with loader_worker(forged_settings, start_timeout_s=15) as forged_loader:
        source = RemoteChunkSource("forged", forged_settings, timeout_s=20)
        try:
            for index, what in (
                (0, "pickle with a forged manifest"),
                (1, "header lying about sizes"),
                (2, "overlapping tensors"),
                (3, "offsets past the end"),
                (4, "8 GiB header length"),
            ):
                chunk = forged_manifest.chunks[index]
                # the hash matches (the attacker wrote the manifest), so the bytes reach the
                # cache; the strict parser is the wall
                data = await source.fetch(chunk)
                with pytest.raises(SecurityError):
                    load_tensors(bytearray(data))
                outcomes[what] = "refused: SecurityError (parser)"
            assert forged_loader.counters.get(INTEGRITY_FAILURES) == 0
        finally:
            await source.close()

    # `sw verify`'s check refuses the same forgeries as invalid safetensors
    store = S3Backend.from_settings(forged_settings, "forged", bucket_name=forged.bucket)
    try:
        report = await verify_chunk_set(store)
    finally:
        await store.close()
    assert sorted((b.name, b.problem) for b in report.bad) == [
        (forged_manifest.chunks[i].name, "format") for i in sorted(hostile)
    ]
    assert not canary.exists(), "a chunk was unpickled: the canary file was written"

    figures(
        Figures(
            scenario="4 corruption and tampering",
            notes=(
                f"{len(outcomes)} attacks, 0 loaded; canary never written; "
                "integrity_failures=5 and cache corruptions=1 as injected"
            ),
            duration_s=time.monotonic() - started,
            extra=outcomes,
        )
    )


@pytest.mark.parametrize(
    "make",
    [
        forge.lying_size_bytes,
        forge.overlapping_bytes,
        forge.past_the_end_bytes,
        forge.oversized_header_bytes,
        lambda: forge.pickle_bomb_bytes(Path("/nonexistent/never")),
        lambda: b"\x80\x04" + b"\0" * 64,  # a pickle protocol header
        lambda: b"PK\x03\x04" + b"\0" * 64,  # a zip, as torch.save writes
    ],
)
def test_the_parser_refuses_forged_headers_before_touching_data(make) -> None:
    data = make()
    with pytest.raises(SecurityError):
        parse_header(data)
    with pytest.raises(SecurityError):
        load_tensors(bytearray(data))


def test_no_product_code_can_unpickle() -> None:
    """No pickle, torch.load or allow_pickle anywhere in the product; arq speaks msgpack."""
    banned = re.compile(
        r"^\s*(import pickle|from pickle|import cloudpickle|import dill)|"
        r"pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False",
        re.M,
    )
    offenders = []
    for folder in ("sw_core", "workers", "producer"):
        for path in (REPO / folder).rglob("*.py"):
            for match in banned.finditer(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO)}: {match.group(0).strip()}")
    assert offenders == []
    options = worker_options(Settings.from_env({}), inference=True)
    packed = options["job_serializer"]({"function": "load_chunk", "args": ["m", "c", "x"]})
    assert not packed.startswith(b"\x80")  # not a pickle stream
    assert options["job_deserializer"](packed)["args"] == ["m", "c", "x"]


def test_the_pickle_payload_hashes_differently_from_the_chunk(tmp_path: Path) -> None:
    """Sanity of the scenario: an honest manifest cannot match the pickle's bytes."""
    bomb = forge.pickle_bomb_bytes(tmp_path / "c")
    chunk = tensor_chunk(0)
    assert hashlib.sha256(bomb).hexdigest() != hashlib.sha256(chunk).hexdigest()


async def test_a_job_on_a_forged_chunk_set_dead_letters_with_security_error(
    redis_url: str, redis_client, tmp_path: Path
) -> None:
    """End to end through the real engine: a block of a real (tiny LLaMA) chunk set replaced
    by the pickle, manifest forged to match. The job must dead-letter at once (permanent
    SecurityError), and the pickle must never run."""
    from producer import Producer
    from sw_core.exceptions import SurfingError
    from tests.support.models import tiny_engine_model
    from workers.jobs.consumer import JobConsumer
    from workers.jobs.inference import InferenceHandler

    canary = tmp_path / "canary-engine"
    folder = tmp_path / "tinyllama"
    manifest = await asyncio.to_thread(tiny_engine_model, folder)
    block = next(i for i, c in enumerate(manifest.chunks) if c.role == "block")
    forge.replace_chunk(folder, manifest, block, forge.pickle_bomb_bytes(canary))
    settings = fast_settings(redis_url, CHAOS, retry_initial_delay_s=0.05, timeout_seconds=10)
    await ModelRegistry(redis_client, settings).register("forged-llama", str(folder))
    handler = InferenceHandler(settings)
    consumer = JobConsumer(redis_client, settings, handler, name="w-forged")
    async with loader_worker(settings, start_timeout_s=15):
        await consumer.start()
        try:
            async with Producer(settings=settings) as producer:
                job_id = await producer.submit("forged-llama", "forward", [[2, 3, 4, 5]])
                with pytest.raises(SurfingError) as caught:
                    await producer.result(job_id, timeout_s=60)
                status = await producer.status(job_id)
        finally:
            await consumer.stop(grace_s=5)
            await handler.close()
    assert isinstance(caught.value, SecurityError), caught.value
    assert status["status"] == "dead" and status["attempts"] == 1, status
    ((_, letter),) = await redis_client.xrange(KEYS.dlq)
    assert letter[b"error_type"] == b"SecurityError" and letter[b"reason"] == b"permanent"
    assert not canary.exists(), "the engine unpickled a chunk"
