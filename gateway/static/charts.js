// Plain-canvas time charts and chunk strips (no library, no network: the page works offline).
"use strict";

// A line chart of one series over time on a <canvas>: gaps where a value is null. Sets
// data-points (values drawn) and data-last (the newest value) on the canvas.
function drawChart(canvas, times, values, opts) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4, labelW = 34;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#f4f5f7";
  ctx.fillRect(0, 0, w, h);
  const points = [];
  for (let i = 0; i < values.length; i++) {
    if (values[i] != null && isFinite(values[i])) points.push([times[i], values[i]]);
  }
  canvas.dataset.points = String(points.length);
  canvas.dataset.max = String(points.reduce((m, p) => Math.max(m, p[1]), 0));
  canvas.dataset.last = values.length && values[values.length - 1] != null ? String(values[values.length - 1]) : "";
  if (!times.length) return;
  const t1 = times[times.length - 1], t0 = Math.min(times[0], t1 - (opts.spanS || 300));
  let top = opts.max != null ? opts.max : Math.max(opts.minTop || 1, ...points.map((p) => p[1]));
  top = top > 0 ? top * (opts.max != null ? 1 : 1.1) : 1;
  const x = (t) => labelW + (w - labelW - pad) * (t - t0) / Math.max(1e-9, t1 - t0);
  const y = (v) => h - pad - (h - 2 * pad) * Math.min(v, top) / top;
  ctx.strokeStyle = "#d1d5db";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(labelW, y(0) + 0.5);
  ctx.lineTo(w - pad, y(0) + 0.5);
  ctx.stroke();
  ctx.fillStyle = "#6b7280";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(opts.format ? opts.format(top) : top.toPrecision(2), 2, 11);
  ctx.fillText("0", 2, h - pad);
  ctx.strokeStyle = opts.color || "#2563eb";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !isFinite(v)) { drawing = false; continue; }
    if (drawing) ctx.lineTo(x(times[i]), y(v)); else ctx.moveTo(x(times[i]), y(v));
    drawing = true;
  }
  ctx.stroke();
  ctx.fillStyle = opts.color || "#2563eb";
  for (const [t, v] of points) ctx.fillRect(x(t) - 1, y(v) - 1, 2, 2);
}

// The charts of /api/status' history: {series: [names], samples: [[t, ...], ...]}.
function drawHistory(history) {
  const names = history.series, rows = history.samples || [];
  const column = (name) => rows.map((r) => r[names.indexOf(name)]);
  const times = column("t");
  const last = (values, fmt) => {
    const v = values.length ? values[values.length - 1] : null;
    return v == null ? "–" : fmt(v);
  };
  const tokens = column("tokens_per_s"), ttft = column("ttft_s");
  const queue = column("queue_depth"), hits = column("cache_hit_rate");
  drawChart($("chart-tokens"), times, tokens, { color: "#2563eb" });
  drawChart($("chart-ttft"), times, ttft, { color: "#9333ea", minTop: 0.1 });
  drawChart($("chart-queue"), times, queue, { color: "#ea580c" });
  drawChart($("chart-hits"), times, hits, { color: "#15803d", max: 1, format: () => "100%" });
  $("last-tokens").textContent = last(tokens, (v) => v.toFixed(1));
  $("last-ttft").textContent = last(ttft, (v) => v.toFixed(2));
  $("last-queue").textContent = last(queue, (v) => String(v));
  $("last-hits").textContent = last(hits, (v) => (100 * v).toFixed(0) + " %");
}

// One strip per model: a cell per chunk, in execution order, width by size, coloured by
// where the chunk is now (resident / cache / storage).
let knownStrips = "";
function drawChunkMap(map) {
  const key = JSON.stringify(map);
  if (key === knownStrips) return;
  knownStrips = key;
  const box = $("chunk-map");
  box.innerHTML = "";
  const models = Object.keys(map);
  if (!models.length) box.innerHTML = '<p class="muted">no model</p>';
  for (const model of models) {
    const chunks = map[model].chunks;
    const total = chunks.reduce((s, c) => s + c[1], 0) || 1;
    const row = document.createElement("div");
    row.className = "strip-row";
    const label = document.createElement("span");
    label.className = "strip-label";
    const counts = { resident: 0, cache: 0, storage: 0 };
    for (const c of chunks) counts[c[2]] = (counts[c[2]] || 0) + 1;
    label.textContent = `${model} (${chunks.length}${map[model].more ? "+" + map[model].more : ""} chunks: ` +
      `${counts.resident} resident, ${counts.cache} cached, ${counts.storage} in storage)`;
    const strip = document.createElement("div");
    strip.className = "strip";
    strip.dataset.model = model;
    for (const [name, size, state] of chunks) {
      const cell = document.createElement("span");
      cell.className = "chunk " + state;
      cell.dataset.state = state;
      cell.style.flexGrow = String(Math.max(size / total, 0.004));
      cell.title = `${name}: ${(size / 1048576).toFixed(1)} MiB, ${state}`;
      strip.appendChild(cell);
    }
    row.appendChild(label);
    row.appendChild(strip);
    box.appendChild(row);
  }
}
