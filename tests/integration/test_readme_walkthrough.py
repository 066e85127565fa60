"""The README's "Using it" walkthrough runs top to bottom as one script.

Its bash block, then its Python snippet (as ``embed.py``, while the workers run), then the
block that stops the workers, as one ``bash`` script: real ``sw`` and ``arq`` processes, the
real Redis fixture, moto's S3 server, both bundled models (MiniLM and SmolLM2). Only the
addresses and credentials of the two ``export`` lines are swapped for the test's own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import redis_cli_binary
from tests.support.processes import REPO

README = REPO / "README.md"


def walkthrough_parts() -> tuple[list[str], str]:
    """The bash blocks and the Python snippet of the README's "Using it" section."""
    text = README.read_text()
    start = text.index("\n## Using it\n")
    section = text[start : text.index("\n## ", start + 1)]
    bash = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    python = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(bash) == 2 and len(python) == 1, "the walkthrough's blocks changed"
    return bash, python[0]


def _swap(line_start: str, replacement: str, script: str) -> str:
    pattern = re.compile(rf"^{re.escape(line_start)}.*$", re.M)
    assert len(pattern.findall(script)) == 1, line_start
    return pattern.sub(replacement, script)


@pytest.mark.slow
def test_readme_walkthrough_runs_as_a_script(redis_url: str, s3_server, tmp_path: Path) -> None:
    (setup, stop), snippet = walkthrough_parts()
    setup = _swap("export SW_REDIS_URL=", f"export SW_REDIS_URL={redis_url}", setup)
    setup = _swap(
        "export SW_S3_ENDPOINT=",
        f"export SW_S3_ENDPOINT={s3_server.endpoint} SW_S3_ACCESS_KEY={s3_server.access_key} "
        f"SW_S3_SECRET_KEY={s3_server.secret_key}",
        setup,
    )
    (tmp_path / "embed.py").write_text(snippet)
    script = f"{setup}\necho '--- embed.py'\npython3 embed.py\n{stop}"
    (tmp_path / "walkthrough.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
    bins = [str(Path(sys.executable).parent), str(Path(redis_cli_binary()).parent)]
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        ["bash", "walkthrough.sh"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    logs = "".join(
        f"\n--- {name}\n{(tmp_path / name).read_text()[-3000:]}"
        for name in ("inference.log", "loader.log")
        if (tmp_path / name).exists()
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:] + logs

    (tmp_path / "stdout.txt").write_text(done.stdout)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith(("[", "{"))]
    # `sw submit --wait` and `sw result --wait` print the result alone: 3 minilm embeddings
    embeddings = [r for r in results if isinstance(r, list) and isinstance(r[0], list)]
    assert len(embeddings) == 3 and all(len(e[0]) == 384 for e in embeddings), results
    # `--wait` and `--stream` each end with the generate result (after the streamed text)
    answers = [r for r in results if isinstance(r, list) and isinstance(r[0], dict)]
    assert len(answers) == 2 and all("Paris" in a[0]["text"] for a in answers), answers
    assert re.search(r"^.*Paris.*$\n^\[\{", done.stdout, re.M), "no streamed text before it"
    assert re.search(r"^384 done$", done.stdout, re.M), done.stdout[-2000:]
    assert "Connection pool is full" not in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

    log = (tmp_path / "inference.log").read_text()
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO workers\.node: worker \S+ "
        r"started: kind=inference .*models=minilm,smollm2",
        log,
        re.M,
    ), log[:2000]
    assert len(re.findall(r" INFO workers\.jobs\.outcomes: job \S+ done model=minilm", log)) == 4
    assert re.search(
        r" INFO workers\.jobs\.outcomes: job \S+ done model=smollm2 task=generate", log
    )
    assert re.search(r"chunk (minilm|smollm2)/\S+ loaded from storage", log + logs)
    assert not re.search(r"[0-9a-f]{64}", log), "chunk hashes in the worker log"
    # 4 embed jobs, 3 generate jobs (--wait, --stream, the snippet); the cancelled one is not done
    assert re.search(r"worker \S+ exits: 7 jobs done", log), log[-2000:]
