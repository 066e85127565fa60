"""The status page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium), against a real gateway, Redis and worker processes: models and live
counters; the playground from its default selection to a streamed answer, a second turn
that carries the first, and a stop that cancels the job; the time charts and chunk strips
drawn from live data; a keyed gateway's page asking for the key; the cache hit rate as the
cache counts it. Saves a screenshot (to ``$GATEWAY_SCREENSHOT`` too when set).

CI installs Chromium (``.ci/run``); outside CI (``CI`` unset) the test skips when no
Chromium is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

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
        "--window-size=1280,2200",
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


#: Records each non-empty text assigned to ``#chat-output`` in ``window.outputSeen``.
RECORD_OUTPUT = """
const out = document.getElementById("chat-output");
const text = Object.getOwnPropertyDescriptor(Node.prototype, "textContent");
window.outputSeen = [];
Object.defineProperty(out, "textContent", {
  configurable: true,
  get() { return text.get.call(this); },
  set(value) { if (value) window.outputSeen.push(value); text.set.call(this, value); },
});
"""


def api_answer(
    cluster: Cluster, messages: list[dict[str, str]], max_tokens: int
) -> tuple[str, int]:
    """The streamed answer and its number of text deltas, read with httpx."""
    url = cluster.gateways[0].url + "/v1/chat/completions"
    body = {"model": "tinychat", "messages": messages, "max_tokens": max_tokens, "stream": True}
    text, deltas = "", 0
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                text, deltas = text + delta, deltas + 1
    return text, deltas


class Page:
    """The page in the browser, by element id."""

    def __init__(self, browser: Any) -> None:
        from selenium.webdriver.common.by import By

        self.browser, self.by = browser, By

    def el(self, element_id: str) -> Any:
        return self.browser.find_element(self.by.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.el(element_id).text

    def data(self, element_id: str, name: str) -> str:
        return self.el(element_id).get_attribute(f"data-{name}") or ""

    def fill(self, element_id: str, value: str) -> None:
        field = self.el(element_id)
        field.clear()
        field.send_keys(value)

    def chat(self, prompt: str, max_tokens: int) -> tuple[str, list[str]]:
        """Send ``prompt``; the answer and each text the answer had while it grew."""
        self.fill("chat-input", prompt)
        self.fill("chat-max-tokens", str(max_tokens))
        # every text the page puts in the output, recorded as it is set: polling from here
        # misses them when the whole answer streams in faster than a WebDriver round trip
        self.browser.execute_script(RECORD_OUTPUT)
        self.el("chat-send").click()
        deadline = time.monotonic() + 120
        while self.data("chat-output", "done") not in ("true", "error", "stopped"):
            assert time.monotonic() < deadline, "the chat never ended"
            time.sleep(0.01)
        assert self.data("chat-output", "done") == "true", self.text("chat-status")
        seen: list[str] = self.browser.execute_script("return window.outputSeen")
        return self.text("chat-output"), seen


async def test_the_playground_streams_keeps_history_and_stops(
    browser: Any, cluster: Cluster, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    page = Page(browser)
    browser.get(cluster.gateways[0].url + "/")
    models = wait_until(
        lambda: [e.text for e in browser.find_elements(page.by.CSS_SELECTOR, "#models li.model")],
        "the models",
    )
    assert models == ["minilm", "tinychat"]
    wait_until(lambda: page.text("live-workers") == "1", "one live worker")
    assert page.text("conn") == "live"
    # the default selection is the model that can generate, not the first (an encoder)
    assert Select(page.el("chat-model")).first_selected_option.text == "tinychat"
    assert Select(page.el("embed-model")).first_selected_option.text == "minilm"

    # live counters: a job submitted elsewhere shows up on the page by itself
    before = int(
        wait_until(
            lambda: page.text("total-requests").isdigit() and page.text("total-requests"),
            "the request counter",
        )
    )
    async with Producer(settings=cluster.settings) as producer:
        await producer.result(await producer.submit("minilm", "embed", ["counted"]), 120)
    wait_until(lambda: int(page.text("total-requests")) == before + 1, "the counter to move")

    # sampling controls reach the request
    page.fill("chat-temperature", "0.7")
    page.fill("chat-top-p", "0.9")
    page.fill("chat-max-tokens", "24")
    sent = browser.execute_script("return samplingFields()")
    assert sent == {"max_tokens": 24, "temperature": 0.7, "top_p": 0.9}
    page.fill("chat-temperature", "0")
    page.fill("chat-top-p", "1")
    assert browser.execute_script("return samplingFields()") == {"max_tokens": 24}

    # a streamed answer, delta by delta, equal to what the API streams
    answer, seen = page.chat(PROMPT, 24)
    first_turn = [{"role": "user", "content": PROMPT}]
    want_text, want_deltas = api_answer(cluster, first_turn, 24)
    assert answer == want_text.strip()
    assert int(page.data("chat-output", "deltas")) == want_deltas > 1
    assert len(seen) > 1 and all(answer.startswith(s.strip()) for s in seen)
    assert page.text("chat-status").startswith("done: ")
    assert "completion tokens" in page.text("chat-status")  # the usage chunk was read

    # a second turn carries the first: it is the answer to the whole conversation
    second, _ = page.chat("And what lives in it?", 16)
    conversation = [
        *first_turn,
        {"role": "assistant", "content": want_text},
        {"role": "user", "content": "And what lives in it?"},
    ]
    assert second == api_answer(cluster, conversation, 16)[0].strip()
    assert page.data("chat-history", "turns") == "4"

    # stop: the stream closes and the gateway cancels the job
    page.fill("chat-input", "Tell me a very long story.")
    page.fill("chat-max-tokens", "400")
    page.el("chat-send").click()
    wait_until(lambda: int(page.data("chat-output", "deltas") or 0) >= 1, "the first delta", 120)
    page.el("chat-stop").click()
    wait_until(lambda: page.data("chat-output", "done") == "stopped", "the stop")
    job_id = page.data("chat-output", "job")
    async with Producer(settings=cluster.settings) as producer:
        for _ in range(200):
            if (await producer.status(job_id))["status"] == "cancelled":
                break
            time.sleep(0.05)
        assert (await producer.status(job_id))["status"] == "cancelled"
        assert await producer.redis.xlen(producer.keys.job_tokens(job_id)) < 400
    assert page.data("chat-history", "turns") == "4"  # a stopped answer is not a turn
    page.el("chat-new").click()
    assert page.data("chat-history", "turns") == "0"

    # embeddings and their similarity table
    page.el("embed-send").click()
    rows = wait_until(
        lambda: browser.find_elements(page.by.CSS_SELECTOR, "#sim-table tr"), "the similarity table"
    )
    cells = [[c.text for c in r.find_elements(page.by.TAG_NAME, "td")] for r in rows[1:]]
    assert [cells[i][i] for i in range(3)] == ["1.000"] * 3
    assert float(cells[0][1]) > float(cells[0][2])  # guitar ~ instrument, not the stock market

    shot = tmp_path / "gateway-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("GATEWAY_SCREENSHOT"):
        shutil.copy(shot, os.environ["GATEWAY_SCREENSHOT"])


def test_the_charts_and_chunk_strips_draw_from_live_data(browser: Any, cluster: Cluster) -> None:
    page = Page(browser)
    browser.get(cluster.gateways[0].url + "/")
    wait_until(lambda: page.text("conn") == "live", "the page")
    api_answer(cluster, [{"role": "user", "content": PROMPT}], 12)  # tokens and a first token
    wait_until(lambda: float(page.data("chart-tokens", "max") or 0) > 0, "tokens/s above 0", 20)
    wait_until(lambda: int(page.data("chart-ttft", "points") or 0) >= 1, "a time to first token")
    ttft = float(page.data("chart-ttft", "max"))
    assert 0 < ttft < 120
    assert int(page.data("chart-queue", "points")) >= 2
    for chart in ("chart-tokens", "chart-ttft", "chart-queue", "chart-hits"):
        inked = browser.execute_script(
            "const c = document.getElementById(arguments[0]);"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4)"
            "  if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) n++;"
            "return n;",
            chart,
        )
        assert inked > 20, chart  # axes and labels at least; the line on top of them
    # the chunk strips: every chunk of the tiny chat model is in the worker's memory now (the
    # worker publishes what it holds with its heartbeat: the page may show it a beat later)
    seen: list[list[str]] = []

    def tinychat_strip() -> list[str] | None:
        from selenium.common.exceptions import StaleElementReferenceException

        try:  # the page redraws the strips with every heartbeat: read them again if so
            states = [
                str(c.get_attribute("data-state"))
                for c in browser.find_elements(
                    page.by.CSS_SELECTOR, '.strip[data-model="tinychat"] .chunk'
                )
            ]
        except StaleElementReferenceException:
            return None
        seen.append(states)
        return states if len(states) == 4 and set(states) == {"resident"} else None

    try:
        wait_until(tinychat_strip, "the tinychat strip, all resident")
    except AssertionError:
        raise AssertionError(f"the tinychat strip's last states: {seen[-1:]}") from None
    minilm = browser.find_elements(page.by.CSS_SELECTOR, '.strip[data-model="minilm"] .chunk')
    assert len(minilm) == 11


def test_a_keyed_page_asks_for_the_key(browser: Any, cluster: Cluster) -> None:
    gateway = cluster.start_gateway("gateway-page-keys", SW_API_KEYS="page-key-123")
    page = Page(browser)
    browser.get(gateway.url + "/")
    wait_until(lambda: page.text("conn") == "API key needed", "the key request")
    assert page.el("key-box").is_displayed() and "unreachable" not in page.text("conn")
    page.fill("api-key", "wrong-key")
    page.el("key-save").click()
    wait_until(lambda: "refused" in page.text("key-hint"), "the refusal")
    page.fill("api-key", "page-key-123")
    page.el("key-save").click()
    wait_until(lambda: page.text("conn") == "live", "the page with the key")
    wait_until(lambda: page.text("live-workers") == "1", "the cluster numbers")


async def test_the_cache_hit_rate_is_hits_over_lookups(browser: Any, cluster: Cluster) -> None:
    """One worker that keeps every chunk in memory looks each one up once (a miss, then a
    load): 0 % with the cache full is right, and the page says over how many lookups. A
    second worker opening the same model reads every chunk from the cache: hits."""
    page = Page(browser)
    browser.get(cluster.gateways[0].url + "/")
    client = redis.Redis.from_url(cluster.settings.redis_url)
    try:

        def meta() -> tuple[int, int]:
            [key] = list(client.scan_iter("*:cache:*meta*"))
            values = client.hmget(key, "hits", "misses")
            return int(values[0] or 0), int(values[1] or 0)

        async with Producer(settings=cluster.settings) as producer:  # the model opened once
            job = await producer.submit("tinychat", "generate", ["hi"], max_new_tokens=2)
            await producer.result(job, 120)
        hits, misses = meta()
        assert misses > 0 and hits == 0
        wait_until(lambda: page.text("cache-hit-rate") == "0.0 %", "0.0 %")
        assert f"0 hits / {misses} lookups" in page.text("cache-lookups")
        first = cluster.workers[0]
        second = cluster.start_worker("inference-hits")
        wait_until(lambda: page.text("live-workers") == "2", "the second worker", 60)
        os.killpg(first.pid, signal.SIGSTOP)  # the second worker takes the next job
        try:
            async with Producer(settings=cluster.settings) as producer:
                job = await producer.submit("tinychat", "generate", ["hi"], max_new_tokens=2)
                await producer.result(job, 120)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        hits, misses = meta()
        assert hits >= 4, (hits, misses)  # tinychat's 4 chunks, from the cache
        want = f"{100 * hits / (hits + misses):.1f} %"
        wait_until(lambda: page.text("cache-hit-rate") == want, f"the hit rate {want}")
        assert f"{hits} hits / {hits + misses} lookups" in page.text("cache-lookups")
        wait_until(lambda: float(page.data("chart-hits", "max") or 0) > 0, "the hit-rate chart")
        cluster.workers.remove(second)
        assert second.stop() == 0
    finally:
        client.close()
