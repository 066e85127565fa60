"""An unregistered model or a task the model cannot run is refused at
submit (Producer: ModelError; ``sw submit``: exit 2), nothing is queued; hand-added entries
still get their dead letters."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer import Producer
from sw_core.cli import main
from sw_core.exceptions import ModelError
from sw_core.pipeline.registry import ModelRegistry, tasks_of
from tests.support.observe import KEYS
from tests.support.settings import fast_settings
from tests.support.storage import make_chunk_set


async def test_producer_refuses_unknown_model_and_unsupported_task(redis_url, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with Producer(settings=settings) as p:
        await ModelRegistry(p.redis, settings).register(
            "enc", "/srv/enc", tasks=("embed", "forward")
        )
        with pytest.raises(ModelError, match="not registered"):
            await p.submit("nosuchmodel", "embed", ["a"])
        with pytest.raises(ModelError, match="cannot run 'generate'"):
            await p.submit("enc", "generate", ["a"])
        await p.submit("enc", "embed", ["a"])  # what it can do still goes through
        await p.submit("m1", "generate", ["a"])  # nothing recorded (SW_MODELS): not refused
    assert await redis_client.xlen(KEYS.jobs) == 2
    assert int(await redis_client.hget(KEYS.stats, "total_requests")) == 2


def test_sw_submit_exits_2_and_register_records_tasks(
    redis_url: str, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "tiny"
    manifest = make_chunk_set(folder)
    flags = ["--redis-url", redis_url]
    assert main(["register", "tiny", str(folder), *flags]) == 0
    capsys.readouterr()
    unsupported = [t for t in ("embed", "generate", "forward") if t not in tasks_of(manifest)]
    assert unsupported == ["generate"], manifest.model_class
    assert main(["submit", "tiny", "--task", "generate", "--text", "hi", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "ModelError" in err and "cannot run 'generate'" in err
    assert main(["submit", "ghost", "--text", "hi", *flags]) == 2
    assert "not registered" in capsys.readouterr().err


def test_tasks_of_generating_classes() -> None:
    class M:
        model_class = "LlamaForCausalLM"

    assert "generate" in tasks_of(M())
    M.model_class = "BertModel"
    assert "generate" not in tasks_of(M())
