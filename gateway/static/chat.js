// The chat playground: multi-turn history, sampling controls, a streamed answer and a stop
// button (it closes the request; the gateway cancels the job).
"use strict";

const chatHistory = [];   // {role, content} turns sent with every request
let chatAbort = null;

function showHistory() {
  const box = $("chat-history");
  box.innerHTML = "";
  for (const turn of chatHistory) {
    const p = document.createElement("p");
    p.className = "turn " + turn.role;
    const who = document.createElement("b");
    who.textContent = turn.role === "user" ? "you: " : "model: ";
    p.appendChild(who);
    p.appendChild(document.createTextNode(turn.content));
    box.appendChild(p);
  }
  box.dataset.turns = String(chatHistory.length);
}

function samplingFields() {
  const body = { max_tokens: Number($("chat-max-tokens").value) };
  const temperature = Number($("chat-temperature").value);
  const topP = Number($("chat-top-p").value);
  if (temperature > 0) body.temperature = temperature;
  if (topP > 0 && topP < 1) body.top_p = topP;
  return body;
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
  const text = $("chat-input").value.trim();
  if (!text) return;
  out.textContent = "";
  out.dataset.done = "false";
  out.dataset.deltas = "0";
  status.textContent = "waiting for a worker…";
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  chatAbort = new AbortController();
  const messages = [...chatHistory, { role: "user", content: text }];
  let answer = "", finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: chatAbort.signal,
      body: JSON.stringify({
        model: $("chat-model").value, messages, stream: true,
        stream_options: { include_usage: true }, ...samplingFields(),
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    let deltas = 0;
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.id) out.dataset.job = chunk.id.replace(/^chatcmpl-/, "");
      if (chunk.usage && !chunk.choices.length) {
        const u = chunk.usage;
        status.textContent = `done: ${finish}, ${u.prompt_tokens} prompt + ` +
          `${u.completion_tokens} completion tokens, ${deltas} deltas`;
        continue;
      }
      const choice = chunk.choices[0];
      if (choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        out.textContent = answer;
        deltas += 1;
        out.dataset.deltas = String(deltas);
        status.textContent = `streaming… ${deltas} deltas`;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    chatHistory.push({ role: "user", content: text }, { role: "assistant", content: answer });
    showHistory();
    $("chat-input").value = "";
    out.dataset.done = "true";
  } catch (e) {
    if (e.name === "AbortError") {
      status.textContent = `stopped after ${out.dataset.deltas} deltas (the job was cancelled)`;
      out.dataset.done = "stopped";
    } else {
      status.textContent = "error " + e.message;
      out.dataset.done = "error";
    }
  } finally {
    chatAbort = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

function stopChat() {
  if (chatAbort) chatAbort.abort();
}

function newChat() {
  stopChat();
  chatHistory.length = 0;
  showHistory();
  $("chat-output").textContent = "";
  $("chat-output").dataset.done = "idle";
  $("chat-status").textContent = "";
}
