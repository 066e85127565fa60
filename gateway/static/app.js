// The status page: numbers from /api/status every second, a streaming chat and an
// embeddings similarity table through the gateway's own OpenAI routes. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("sw-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("sw-api-key", keyInput.value));

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error ? body.error.message : JSON.stringify(body)}`;
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + " %");
const mib = (b) => (b / 1048576).toFixed(1) + " MiB";
function setText(id, value) { $(id).textContent = value == null ? "–" : String(value); }

let knownModels = "";
function showModels(models) {
  const joined = models.join(",");
  if (joined === knownModels) return;
  knownModels = joined;
  $("models").innerHTML = "";
  for (const name of models) {
    const li = document.createElement("li");
    li.textContent = name;
    li.className = "model";
    $("models").appendChild(li);
  }
  if (!models.length) $("models").innerHTML = '<li class="muted">none registered</li>';
  for (const id of ["chat-model", "embed-model"]) {
    const select = $(id);
    const previous = select.value;
    select.innerHTML = "";
    for (const name of models) select.add(new Option(name, name));
    if (models.includes(previous)) select.value = previous;
  }
}

function showCluster(c, gw) {
  setText("live-workers", c.live_workers);
  setText("queue-length", c.queue_length);
  setText("pending", c.pending);
  setText("scheduled-retries", c.scheduled_retries);
  setText("dead-letters", c.dead_letters);
  setText("total-requests", c.total_requests);
  setText("completed", c.completed);
  setText("throughput", c.throughput_jobs_s == null ? null : c.throughput_jobs_s.toFixed(1));
  setText("errors", c.errors);
  setText("error-rate", pct(c.error_rate));
  setText("cache-hit-rate", pct(c.cache_hit_rate));
  setText("cache-use", `${mib(c.cache_bytes)} / ${mib(c.cache_budget_bytes)}`);
  setText("gw-requests", gw.requests);
  setText("gw-errors", gw.errors);
  setText("gw-open", gw.open_requests);
  $("alert").hidden = !c.alert;
  $("alert").textContent = c.alert_reason || "";
  const rows = c.workers.map((w) =>
    `<tr><td>${esc(w.id)}</td><td>${esc(w.kind)}</td><td>${esc(w.current || "idle")}</td>` +
    `<td>${w.age_s.toFixed(1)} s ago</td></tr>`);
  $("workers").innerHTML = rows.join("") || '<tr><td colspan="4" class="muted">no live worker</td></tr>';
  const errs = Object.entries(c.errors_by_type || {});
  $("errors-by-type").innerHTML = errs.length
    ? errs.map(([t, n]) => `<tr><td>${esc(t)}</td><td>${n}</td></tr>`).join("")
    : '<tr><td class="muted">none</td></tr>';
}

function esc(text) {
  return String(text).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]);
}

let refreshes = 0;
async function refresh() {
  try {
    const response = await fetch("/api/status", { headers: headers() });
    if (response.status === 401) $("key-box").hidden = false;
    if (!response.ok) throw new Error(await errorText(response));
    const s = await response.json();
    $("key-box").hidden = !s.keys_required;
    showModels(s.models);
    showCluster(s.cluster, s.gateway);
    $("streaming-mode").textContent = s.streaming;
    $("conn").textContent = "live";
    $("conn").className = "badge ok";
    refreshes += 1;
    $("refreshed").textContent = `refreshed ${refreshes}× · ${new Date().toLocaleTimeString()}`;
    $("refreshed").dataset.count = String(refreshes);
  } catch (e) {
    $("conn").textContent = "unreachable: " + e.message;
    $("conn").className = "badge bad";
  }
}

// Server-Sent Events from a POST: read the body and split it on blank lines.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function sendChat() {
  const out = $("chat-output");
  const status = $("chat-status");
  out.textContent = "";
  out.dataset.done = "false";
  out.dataset.deltas = "0";
  status.textContent = "waiting for a worker…";
  $("chat-send").disabled = true;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        model: $("chat-model").value,
        messages: [{ role: "user", content: $("chat-input").value }],
        max_tokens: Number($("chat-max-tokens").value),
        stream: true,
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    let deltas = 0;
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice.delta && choice.delta.content) {
        out.textContent += choice.delta.content;
        deltas += 1;
        out.dataset.deltas = String(deltas);
        status.textContent = `streaming… ${deltas} deltas`;
      }
      if (choice.finish_reason) {
        const u = chunk.usage || {};
        status.textContent = `done: ${choice.finish_reason}, ${u.prompt_tokens} prompt + ` +
          `${u.completion_tokens} completion tokens, ${deltas} deltas`;
      }
    }
    out.dataset.done = "true";
  } catch (e) {
    status.textContent = "error " + e.message;
    out.dataset.done = "error";
  } finally {
    $("chat-send").disabled = false;
  }
}

async function sendEmbeddings() {
  const texts = $("embed-input").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const status = $("embed-status");
  const table = $("sim-table");
  table.innerHTML = "";
  status.textContent = "embedding…";
  try {
    const response = await fetch("/v1/embeddings", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: $("embed-model").value, input: texts }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    const vectors = body.data.map((d) => d.embedding);
    const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
    let html = "<tr><th></th>" + texts.map((_, j) => `<th>${j + 1}</th>`).join("") + "</tr>";
    texts.forEach((t, i) => {
      html += `<tr><th>${i + 1}. ${esc(t)}</th>` +
        vectors.map((v, j) => `<td>${cos(vectors[i], v).toFixed(3)}</td>`).join("") + "</tr>";
    });
    table.innerHTML = html;
    status.textContent = `${vectors.length} vectors of ${vectors[0].length} dims, ` +
      `${body.usage.prompt_tokens} tokens`;
  } catch (e) {
    status.textContent = "error " + e.message;
  }
}

$("chat-send").addEventListener("click", sendChat);
$("embed-send").addEventListener("click", sendEmbeddings);
refresh();
setInterval(refresh, 1000);
