"""``sw submit / result / register / models`` against the real Redis fixture."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sw_core.cli import main
from sw_core.settings import Settings
from tests.support.handlers import EchoHandler
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.storage import make_chunk_set


@contextlib.contextmanager
def worker_thread(settings: Settings) -> Iterator[None]:
    """An in-process consumer on its own event loop (the CLI runs asyncio.run itself)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        stop.append(asyncio.Event())
        async with consumers(settings, [EchoHandler(settings)]):
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the worker thread did not start"
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(15)
        loop.close()


def test_register_and_list_models(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("SW_MODELS", "configured=s3://bucket/configured")
    flags = ["--redis-url", redis_url]
    folder = tmp_path / "tiny"
    manifest = make_chunk_set(folder)
    assert main(["register", "minilm", str(folder), *flags]) == 0
    out = capsys.readouterr().out
    assert f"minilm -> {folder} (chunk set 'tiny': {len(manifest.chunks)} chunks" in out
    assert main(["register", "smol", "s3://sw-chunks/smol/", "--no-check", *flags]) == 0
    assert main(["register", "bad", "s3://A_B/x", *flags]) == 2
    assert main(["register", "gone", str(tmp_path / "missing"), *flags]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["register", "empty", str(tmp_path), *flags]) == 2  # a folder, no chunk set
    assert "is not a chunk set: no manifest.json" in capsys.readouterr().err
    assert main(["register", "elsewhere", "/mnt/not/here", "--no-check", *flags]) == 0
    capsys.readouterr()
    assert main(["models", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["configured", "elsewhere", "minilm", "smol"]
    assert lines[3].split()[1] == "s3://sw-chunks/smol"


def test_register_pin(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    folder = tmp_path / "tiny"
    make_chunk_set(folder)
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    flags = ["--redis-url", redis_url]
    assert main(["register", "tiny", str(folder), "--pin", *flags]) == 0
    assert capsys.readouterr().out.startswith(f"tiny -> {folder}#sha256={digest} (chunk set")
    assert main(["models", *flags]) == 0
    assert f"{folder}#sha256={digest}" in capsys.readouterr().out
    # a location pinned to another manifest is refused at registration
    other = f"{folder}#sha256={'0' * 64}"
    assert main(["register", "tiny", other, *flags]) == 2
    assert "not to its pin" in capsys.readouterr().err
    assert main(["register", "tiny", str(folder), "--pin", "--no-check", *flags]) == 2
    assert "cannot go with --no-check" in capsys.readouterr().err


def test_register_reads_the_manifest_on_s3(
    redis_url: str, tmp_path: Path, s3_server, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_chunk_set(tmp_path / "tiny")
    s3 = [
        "--s3-endpoint",
        s3_server.endpoint,
        "--s3-access-key",
        s3_server.access_key,
        "--s3-secret-key",
        s3_server.secret_key,
        "--redis-url",
        redis_url,
    ]
    assert main(["publish", str(tmp_path / "tiny"), "--to", f"s3://{s3_bucket}/tiny", *s3[:6]]) == 0
    capsys.readouterr()
    assert main(["register", "tiny", f"s3://{s3_bucket}/tiny", *s3]) == 0
    assert f"(chunk set 'tiny': {len(manifest.chunks)} chunks, " in capsys.readouterr().out
    assert main(["register", "typo", f"s3://{s3_bucket}/tnyi", *s3]) == 2
    err = capsys.readouterr().err
    assert "is not a chunk set: no manifest.json" in err and "Traceback" not in err
    assert main(["models", "--redis-url", redis_url]) == 0
    assert "typo" not in capsys.readouterr().out


def test_submit_wait_prints_the_result(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("SW_MODELS", "m1=/srv/m1")  # sw submit checks the model
    settings = fast_settings(redis_url)
    flags = ["--redis-url", redis_url]
    with worker_thread(settings):
        code = main(
            [
                "submit",
                "m1",
                "--task",
                "generate",
                "--text",
                "hello",
                "--text",
                "world",
                "--param",
                "max_new_tokens=3",
                "--param",
                "do_sample=false",
                "--wait",
                *flags,
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0, out
        result = json.loads(out)  # stdout holds the result only: `sw submit --wait | jq`
        job_id = err.split("job ")[1].split()[0]
        assert result["inputs"] == ["hello", "world"]
        assert result["params"] == {"max_new_tokens": 3, "do_sample": False}
        assert main(["result", job_id, *flags]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["status"] == "done" and status["result"]["job_id"] == job_id
        assert (
            main(["submit", "m1", "--task", "forward", "--tokens", "1,2,3", "--wait", *flags]) == 0
        )
        assert json.loads(capsys.readouterr().out)["inputs"] == [[1, 2, 3]]


def test_submit_takes_stop_sequences_and_a_repetition_penalty(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("SW_MODELS", "m1=/srv/m1")  # sw submit checks the model
    settings = fast_settings(redis_url)
    flags = ["--redis-url", redis_url]
    with worker_thread(settings):  # the echo handler answers with the job's params
        code = main(
            [
                "submit",
                "m1",
                "--task",
                "generate",
                "--text",
                "hello",
                "--stop",
                "\n\n",
                "--stop",
                " END",
                "--param",
                "repetition_penalty=1.3",
                "--wait",
                *flags,
            ]
        )
        out, _ = capsys.readouterr()
        assert code == 0, out
        assert json.loads(out)["params"] == {"stop": ["\n\n", " END"], "repetition_penalty": 1.3}
        assert (
            main(
                [
                    "submit",
                    "m1",
                    "--task",
                    "generate",
                    "--text",
                    "hi",
                    "--param",
                    "stop= END",
                    "--wait",
                    *flags,
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["params"] == {"stop": [" END"]}
    assert main(["submit", "m1", "--text", "hi", "--stop", "x", *flags]) == 2
    assert "--stop is for generate jobs, not embed" in capsys.readouterr().err


def test_failed_and_unfinished_jobs_have_their_own_exit_codes(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("SW_MODELS", "m1=/srv/m1")  # sw submit checks the model
    settings = fast_settings(redis_url)
    flags = ["--redis-url", redis_url]
    with worker_thread(settings):
        assert main(["submit", "unknown-model", "--text", "x", "--wait", *flags]) == 2
        assert "ModelError" in capsys.readouterr().err
    assert main(["submit", "m1", "--text", "nobody runs me", *flags]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["result", job_id, "--wait", "--timeout", "0.2", *flags]) == 3
    assert "did not finish" in capsys.readouterr().err
    assert main(["result", job_id, *flags]) == 3
    assert json.loads(capsys.readouterr().out)["status"] == "queued"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--param", "max_new_tokens=lots"], "'max_new_tokens'='lots' is not an integer"),
        (["--param", "nonsense"], "is not KEY=VALUE"),
        (["--param", "beam=2"], "unknown param"),
        (["--stop", "a", "--stop", "b", "--stop", "c", "--stop", "d", "--stop", "e"], "holds 5"),
        (["--stop", ""], "'stop' holds an empty string"),
        (["--stop", "a", "--param", "stop=b"], "not both"),
        (["--param", "repetition_penalty=0"], "'repetition_penalty' must be a number > 0, got 0.0"),
        (["--param", "repetition_penalty=high"], "'repetition_penalty'='high' is not a number"),
    ],
)
def test_submit_refuses_bad_params(
    redis_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(
        ["submit", "m1", "--task", "generate", "--text", "x", *argv, "--redis-url", redis_url]
    )
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "minilm", "--text", "hi"],
        ["result", "some-job-id"],
        ["register", "m", "s3://sw-chunks/m", "--no-check"],
        ["models"],
        ["stats"],
        ["dlq", "list"],
    ],
)
def test_an_unreachable_redis_is_one_line_and_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from sw_core.local.redis_server import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    assert main([*argv, "--redis-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sw {argv[0]}: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "SW_REDIS_URL" in err and "hunter2" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_refused_password_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    from sw_core.local.redis_server import RedisServer

    with RedisServer(password="right-one") as server:
        wrong = server.url.replace("right-one", "wrong-one")
        missing = server.url.replace(":right-one@", "")
        for url in (wrong, missing):
            assert main(["models", "--redis-url", url]) == 2
            err = capsys.readouterr().err
            assert err.startswith("sw models: Redis at redis://") and "refused us" in err
            assert "password or ACL user" in err and "wrong-one" not in err
            assert len(err.strip().splitlines()) == 1
        assert main(["models", "--redis-url", server.url]) == 0
