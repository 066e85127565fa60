"""The README's ``curl -N`` example and openai-client snippet, run as written against a real
gateway (only its port changed). ``smollm2`` is registered as the tiny chat model here, so
the snippets run in seconds; ``minilm`` is the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from tests.support.gateway import Cluster, cluster_fixture, tinychat_chunked  # noqa: F401
from tests.support.processes import REPO

README = REPO / "README.md"
DOC_URL = "127.0.0.1:8000"


def fenced(language: str, must_contain: str) -> str:
    """The one ```language block of the README that contains ``must_contain``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if must_contain in b]
    assert len(found) == 1, f"expected one {language} block with {must_contain!r}"
    return found[0]


#: One inference worker and one keyless gateway for the whole module.
cluster = cluster_fixture("smollm2", "readme")


def test_the_curl_example_streams_server_sent_events(cluster: Cluster) -> None:
    assert shutil.which("curl"), "curl is needed to run the README's example"
    command = fenced("bash", "curl -N")
    assert DOC_URL in command
    command = command.replace(DOC_URL, f"127.0.0.1:{cluster.gateways[0].port}")
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    events = [line for line in out.splitlines() if line and not line.startswith(":")]
    assert events[-1] == "data: [DONE]", out
    chunks = [json.loads(line[6:]) for line in events[:-1]]
    assert all(c.get("object") == "chat.completion.chunk" for c in chunks), out
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_openai_snippet_runs(cluster: Cluster) -> None:
    snippet = fenced("python", "from openai import OpenAI")
    assert DOC_URL in snippet
    snippet = snippet.replace(DOC_URL, f"127.0.0.1:{cluster.gateways[0].port}")
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    first, _, answer = result.stdout.partition("\n")
    assert first == "384"
    assert answer.strip()
