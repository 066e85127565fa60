"""The status page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium): models, live counters, a streamed chat and an embeddings similarity
table, against a real gateway, Redis and worker. Saves a screenshot (to
``$GATEWAY_SCREENSHOT`` too when set).

CI installs Chromium (``.ci/run``); outside CI (``CI`` unset) the test skips when no
Chromium is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import Producer
from tests.support.gateway import Cluster, cluster_fixture, tinychat_chunked  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
PROMPT = "Tell me about the sea."


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium: apt-get install -y chromium chromium-driver")
        pytest.skip("no Chromium here (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


#: One inference worker and one keyless gateway for the whole module.
cluster = cluster_fixture("tinychat", "page")


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def api_deltas(cluster: Cluster, body: dict[str, Any]) -> tuple[str, int]:
    """The streamed answer and its number of text deltas, read with httpx."""
    url = cluster.gateways[0].url + "/v1/chat/completions"
    text, deltas = "", 0
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                text, deltas = text + delta, deltas + 1
    return text, deltas


async def test_the_page_shows_the_cluster_and_streams_a_chat(
    browser: Any, cluster: Cluster, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def text(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    browser.get(cluster.gateways[0].url + "/")
    models = wait_until(
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#models li.model")],
        "the models",
    )
    assert models == ["minilm", "tinychat"]
    wait_until(lambda: text("live-workers") == "1", "one live worker")
    assert text("conn") == "live"

    # live counters: a job submitted elsewhere shows up on the page by itself
    before = int(
        wait_until(
            lambda: text("total-requests").isdigit() and text("total-requests"),
            "the request counter",
        )
    )
    async with Producer(settings=cluster.settings) as producer:
        await producer.result(await producer.submit("minilm", "embed", ["counted"]), 120)
    wait_until(lambda: int(text("total-requests")) == before + 1, "the counter to move")
    wait_until(lambda: text("completed") != "0", "completed jobs")
    refreshes = int(browser.find_element(By.ID, "refreshed").get_attribute("data-count"))
    wait_until(
        lambda: (
            int(browser.find_element(By.ID, "refreshed").get_attribute("data-count")) > refreshes
        ),
        "another refresh",
    )

    # a chat, streamed into the page
    Select(browser.find_element(By.ID, "chat-model")).select_by_visible_text("tinychat")
    browser.find_element(By.ID, "chat-input").clear()
    browser.find_element(By.ID, "chat-input").send_keys(PROMPT)
    limit = browser.find_element(By.ID, "chat-max-tokens")
    limit.clear()
    limit.send_keys("24")
    output = browser.find_element(By.ID, "chat-output")
    browser.find_element(By.ID, "chat-send").click()
    seen: list[str] = []  # the answer as it grows on the page
    deadline = time.monotonic() + 120
    while output.get_attribute("data-done") not in ("true", "error"):
        current = output.text
        if current and (not seen or seen[-1] != current):
            seen.append(current)
        assert time.monotonic() < deadline, "the chat never ended"
        time.sleep(0.01)
    assert output.get_attribute("data-done") == "true", text("chat-status")
    answer = output.text
    assert answer and all(answer.startswith(s.strip()) for s in seen)
    assert text("chat-status").startswith("done: ")
    want_text, want_deltas = api_deltas(
        cluster,
        {"model": "tinychat", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24},
    )
    assert answer == want_text.strip()  # the browser renders what the API streams...
    assert int(output.get_attribute("data-deltas")) == want_deltas  # ... delta by delta
    assert want_deltas > 1 and len(seen) > 1, (want_deltas, seen)  # and it grew as it came

    # embeddings and their similarity table
    Select(browser.find_element(By.ID, "embed-model")).select_by_visible_text("minilm")
    browser.find_element(By.ID, "embed-send").click()
    rows = wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#sim-table tr"), "the similarity table"
    )
    assert len(rows) == 4
    cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows[1:]]
    assert [cells[i][i] for i in range(3)] == ["1.000"] * 3
    assert float(cells[0][1]) > float(cells[0][2])  # guitar ~ instrument, not the stock market
    wait_until(lambda: "384 dims" in text("embed-status"), "the embeddings status")

    shot = tmp_path / "gateway-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("GATEWAY_SCREENSHOT"):
        shutil.copy(shot, os.environ["GATEWAY_SCREENSHOT"])
