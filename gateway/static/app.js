// The status page: numbers from /api/status every second (cluster, charts, chunk strips), the
// chat playground (chat.js) and an embeddings similarity table, through the gateway's own
// OpenAI routes. No build step, no network beyond this gateway.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("sw-api-key") || "";

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

function esc(text) {
  return String(text).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]);
}

// Models: the list, and the two pickers (chat: generate-capable models first and by
// default; embeddings: encoders first).
let knownModels = "";
function showModels(models, tasks) {
  const joined = JSON.stringify([models, tasks]);
  if (joined === knownModels) return;
  knownModels = joined;
  $("models").innerHTML = "";
  for (const name of models) {
    const li = document.createElement("li");
    li.textContent = name;
    li.className = "model";
    const can = tasks[name] || [];
    if (can.length) li.title = "tasks: " + can.join(", ");
    $("models").appendChild(li);
  }
  if (!models.length) $("models").innerHTML = '<li class="muted">none registered</li>';
  const generates = (name) => (tasks[name] || []).includes("generate");
  const chat = [...models.filter(generates), ...models.filter((m) => !generates(m))];
  const embed = [...models.filter((m) => !generates(m)), ...models.filter(generates)];
  fillSelect($("chat-model"), chat);
  fillSelect($("embed-model"), embed);
}

function fillSelect(select, names) {
  const previous = select.dataset.chosen;
  select.innerHTML = "";
  for (const name of names) select.add(new Option(name, name));
  if (previous && names.includes(previous)) select.value = previous;
}

function showCluster(c, gw) {
  for (const [id, field] of [["live-workers", "live_workers"], ["queue-length", "queue_length"],
    ["pending", "pending"], ["scheduled-retries", "scheduled_retries"], ["dead-letters", "dead_letters"],
    ["total-requests", "total_requests"], ["completed", "completed"], ["dead-lettered", "dead_lettered"],
    ["cancelled", "cancelled"], ["expired", "expired"], ["errors", "errors"]]) setText(id, c[field]);
  setText("throughput", c.throughput_jobs_s == null ? null : c.throughput_jobs_s.toFixed(1));
  setText("error-rate", pct(c.error_rate));
  const lookups = (c.cache_hits || 0) + (c.cache_misses || 0);
  setText("cache-hit-rate", lookups ? pct(c.cache_hit_rate) : "no lookups");
  $("cache-lookups").textContent = `cache hit rate (${c.cache_hits} hits / ${lookups} lookups)`;
  setText("cache-use", `${mib(c.cache_bytes)} / ${mib(c.cache_budget_bytes)}`);
  setText("gw-requests", gw.requests);
  setText("gw-errors", gw.errors);
  setText("gw-open", gw.open_requests);
  const inFlight = c.queue_length + c.pending + c.scheduled_retries;
  $("job-sum").textContent = `${c.total_requests} submitted = ${c.completed} done + ` +
    `${c.dead_lettered} dead-lettered + ${c.cancelled} cancelled + ${c.expired} expired + ` +
    `${inFlight} queued, running or waiting to retry`;
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

function askForKey(message) {
  $("key-box").hidden = false;
  $("key-hint").textContent = message;
  $("conn").textContent = "API key needed";
  $("conn").className = "badge warn";
}

let refreshes = 0;
async function refresh() {
  try {
    const response = await fetch("/api/status", { headers: headers() });
    if (response.status === 401) {
      askForKey(keyInput.value ? "that key was refused: enter another" :
        "this gateway needs an API key (one of SW_API_KEYS)");
      return;
    }
    if (!response.ok) throw new Error(await errorText(response));
    const s = await response.json();
    $("key-box").hidden = !s.keys_required;
    $("key-hint").textContent = "";
    showModels(s.models, s.model_tasks || {});
    showCluster(s.cluster, s.gateway);
    drawHistory(s.history);
    drawChunkMap(s.chunk_map || {});
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

$("key-box").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("sw-api-key", keyInput.value);
  refresh();
});
for (const id of ["chat-model", "embed-model"]) {
  $(id).addEventListener("change", () => { $(id).dataset.chosen = $(id).value; });
}
$("chat-send").addEventListener("click", sendChat);
$("chat-stop").addEventListener("click", stopChat);
$("chat-new").addEventListener("click", newChat);
$("embed-send").addEventListener("click", sendEmbeddings);
refresh();
setInterval(refresh, 1000);
