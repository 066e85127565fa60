"""``sw verify`` and ``sw publish`` on real folders and moto's S3, in process and as a process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from sw_core.chunks.manifest import Manifest
from sw_core.cli import main
from tests.support.storage import flip_data_byte, make_chunk_set


def s3_flags(server) -> list[str]:
    return [
        "--s3-endpoint",
        server.endpoint,
        "--s3-access-key",
        server.access_key,
        "--s3-secret-key",
        server.secret_key,
    ]


def upload_folder(server, bucket: str, prefix: str, folder: Path) -> None:
    """Copy a folder to S3 with the plain SDK (independent of ``sw publish``)."""
    client = server.client()
    for path in folder.iterdir():
        data = path.read_bytes()
        client.put_object(bucket, f"{prefix}/{path.name}", io.BytesIO(data), len(data))


def sw_command() -> list[str]:
    script = Path(sys.executable).with_name("sw")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sw_core.cli import main; sys.exit(main())"]


def run_sw(args: list[str], server) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
    env.update(
        SW_S3_ENDPOINT=server.endpoint,
        SW_S3_ACCESS_KEY=server.access_key,
        SW_S3_SECRET_KEY=server.secret_key,
    )
    return subprocess.run(
        [*sw_command(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def bad_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("BAD ")]


def test_verify_folder_names_the_flipped_chunk(tmp_path: Path, capsys) -> None:
    make_chunk_set(tmp_path)
    assert main(["verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {tmp_path}: tiny, 6 entries")

    flip_data_byte(tmp_path / "block_001.safetensors")
    assert main(["verify", str(tmp_path)]) == 1

    out = capsys.readouterr().out
    bad = bad_lines(out)
    assert len(bad) == 1
    assert bad[0].startswith("BAD block_001 (block_001.safetensors): sha256 mismatch: ")
    assert f"FAILED {tmp_path}: 1 of 6 entries bad" in out


def test_verify_s3_names_the_flipped_chunk(tmp_path: Path, s3_server, s3_bucket, capsys) -> None:
    make_chunk_set(tmp_path)
    flip_data_byte(tmp_path / "head.safetensors")
    upload_folder(s3_server, s3_bucket, "models/tiny", tmp_path)

    code = main(["verify", f"s3://{s3_bucket}/models/tiny", *s3_flags(s3_server)])

    out = capsys.readouterr().out
    assert code == 1
    assert len(bad_lines(out)) == 1
    assert bad_lines(out)[0].startswith("BAD head (head.safetensors): sha256 mismatch")


def test_verify_as_a_process_for_a_folder_and_for_s3(tmp_path: Path, s3_server, s3_bucket) -> None:
    make_chunk_set(tmp_path)
    flip_data_byte(tmp_path / "block_002.safetensors")
    upload_folder(s3_server, s3_bucket, "m", tmp_path)

    for location in (str(tmp_path), f"s3://{s3_bucket}/m"):
        result = run_sw(["verify", location], s3_server)
        assert result.returncode == 1, result.stderr
        assert [line.split(":")[0] for line in bad_lines(result.stdout)] == [
            "BAD block_002 (block_002.safetensors)"
        ]
        assert "1 of 6 entries bad" in result.stdout


def test_publish_then_verify_s3(tmp_path: Path, s3_server, s3_bucket, capsys) -> None:
    manifest = make_chunk_set(tmp_path / "local")
    target = f"s3://{s3_bucket}/models/tiny"

    assert main(["publish", str(tmp_path / "local"), "--to", target, *s3_flags(s3_server)]) == 0
    assert "OK s3://" in capsys.readouterr().out

    assert main(["verify", target, *s3_flags(s3_server)]) == 0
    assert "6 entries" in capsys.readouterr().out
    names = {o.object_name for o in s3_server.client().list_objects(s3_bucket, recursive=True)}
    assert names == {f"models/tiny/{f}" for f in [c.file for c in manifest.chunks]} | {
        "models/tiny/config.json",
        "models/tiny/manifest.json",
    }
    result = run_sw(["verify", target], s3_server)
    assert result.returncode == 0 and result.stdout.startswith("OK "), result.stderr


def test_publish_of_a_damaged_folder_fails_with_exit_1(
    tmp_path: Path, s3_server, s3_bucket, capsys
) -> None:
    make_chunk_set(tmp_path)
    flip_data_byte(tmp_path / "embeddings.safetensors")
    target = f"s3://{s3_bucket}/x"

    assert main(["publish", str(tmp_path), "--to", target, *s3_flags(s3_server)]) == 1

    assert "embeddings.safetensors" in capsys.readouterr().err
    names = [o.object_name for o in s3_server.client().list_objects(s3_bucket, recursive=True)]
    assert "x/manifest.json" not in names


def test_publish_to_a_folder(tmp_path: Path) -> None:
    make_chunk_set(tmp_path / "a")
    assert main(["publish", str(tmp_path / "a"), "--to", str(tmp_path / "b")]) == 0
    assert Manifest.load(tmp_path / "b") == Manifest.load(tmp_path / "a")


def test_verify_of_something_that_is_not_a_chunk_set_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "not a chunk set" in capsys.readouterr().err


def test_verify_s3_without_endpoint_is_a_clear_error(capsys, monkeypatch) -> None:
    monkeypatch.delenv("SW_S3_ENDPOINT", raising=False)
    assert main(["verify", "s3://bucket/x"]) == 2
    assert "SW_S3_ENDPOINT" in capsys.readouterr().err


def test_secrets_never_reach_the_output(s3_server, s3_bucket, capsys) -> None:
    secret = "sup3r-s3cret-value"
    code = main(
        [
            "verify",
            f"s3://{s3_bucket}/none",
            "--s3-endpoint",
            s3_server.endpoint,
            "--s3-access-key",
            "testing",
            "--s3-secret-key",
            secret,
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert secret not in captured.out + captured.err


def test_verify_checks_a_manifest_pin(tmp_path: Path, capsys) -> None:
    from sw_core.storage.location import pin_location

    make_chunk_set(tmp_path)
    pinned = pin_location(str(tmp_path), (tmp_path / "manifest.json").read_bytes())
    assert main(["verify", pinned]) == 0
    capsys.readouterr()
    (tmp_path / "manifest.json").write_bytes((tmp_path / "manifest.json").read_bytes() + b" ")
    assert main(["verify", pinned]) == 2
    assert "SecurityError" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 0  # unpinned: the set itself is intact
