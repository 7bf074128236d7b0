// refengine chat page: the api_server's interactive protocol, spoken through the web UI server's proxy.
//
//   Send   POST api/interactive {prompt, session_id, interactive_mode: true, stream: true, ...sliders}
//          → one JSON object per line {text, tokens, input_tokens, history_tokens, finish_reason};
//            each line's text is appended to the reply bubble as it arrives.
//   Cancel POST {session_id, cancel: true}   → the running reply ends with finish_reason "abort".
//   Reset  POST {session_id, interactive_mode: false, request_output_len: 0} → the server frees the
//          session; the view is cleared. Closing the tab sends the same (navigator.sendBeacon).
//
// Each tab has its own random session id, so the server keeps one conversation per tab.
"use strict";

const API = "api/interactive";

const ui = {};
for (const id of ["messages", "composer", "prompt", "send", "cancel", "reset", "status", "model", "settings",
                  "max-tokens", "top-p", "temperature"]) {
  ui[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
}

const chat = {
  sessionId: newSessionId(),
  mode: "idle",        // "idle" | "streaming" | "resetting"
  controller: null,    // aborts the streaming fetch
  turn: null,          // the promise of the turn in flight
  held: 0,             // replies the server holds in this session
};

function newSessionId() {
  const word = new Uint32Array(1);
  crypto.getRandomValues(word);
  return (word[0] % 2147483646) + 1;     // a positive 31-bit integer
}

// ------------------------------------------------------------------ view

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function setMode(mode) {
  chat.mode = mode;
  ui.send.disabled = mode !== "idle";
  ui.cancel.disabled = mode !== "streaming";
  ui.reset.disabled = mode === "resetting";
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
}

function append(element) {
  const follow = nearBottom();
  ui.messages.append(element);
  if (follow) ui.messages.scrollTop = ui.messages.scrollHeight;
  return element;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;             // text, never HTML: the model's output cannot inject markup
  return append(div);
}

function addNote(text, before = null) {
  const div = document.createElement("div");
  div.className = "note";
  div.textContent = text;
  return before ? ui.messages.insertBefore(div, before) : append(div);
}

function appendText(bubble, text) {
  if (!text) return;
  const follow = nearBottom();
  bubble.textContent += text;
  if (follow) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ------------------------------------------------------------------ protocol

function turnRequest(prompt) {
  return {
    prompt, session_id: chat.sessionId, interactive_mode: true, stream: true,
    request_output_len: Number(ui.maxTokens.value),
    top_p: Number(ui.topP.value),
    temperature: Number(ui.temperature.value),
  };
}

const cancelRequest = () => ({prompt: "", session_id: chat.sessionId, cancel: true, stream: false});
const endRequest = () => ({prompt: "", session_id: chat.sessionId, interactive_mode: false, stream: false,
                           request_output_len: 0});

async function post(body, signal) {
  let resp;
  try {
    resp = await fetch(API, {method: "POST", headers: {"Content-Type": "application/json"},
                             body: JSON.stringify(body), signal});
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error("cannot reach the web UI server (is refengine-serve webui still running?)");
  }
  if (!resp.ok) throw new Error(await errorMessage(resp));
  return resp;
}

async function errorMessage(resp) {
  const text = await resp.text();
  let message = text.trim().slice(0, 300);
  try {
    message = JSON.parse(text).error.message || message;
  } catch (err) { /* not the api_server's JSON error body: show the text */ }
  if (resp.status === 401) message += " (start the web UI with the api_server's key: --api-key)";
  return `error ${resp.status}: ${message}`;
}

// The reply: JSON objects, one per line, possibly split across network chunks.
async function* readLines(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield JSON.parse(line);
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) yield JSON.parse(buffer);
}

// ------------------------------------------------------------------ actions

function sendMessage() {
  const text = ui.prompt.value;
  if (!text.trim() || chat.mode !== "idle") return;
  ui.prompt.value = "";
  chat.turn = runTurn(text);
}

async function runTurn(text) {
  addMessage("user", text);
  const bubble = addMessage("assistant streaming", "");
  setMode("streaming");
  setStatus("generating…");
  chat.controller = new AbortController();
  let last = null;
  try {
    const resp = await post(turnRequest(text), chat.controller.signal);
    for await (const piece of readLines(resp)) {
      if (last === null) noteNewConversation(piece, bubble);
      last = piece;
      appendText(bubble, piece.text);
    }
    finishTurn(last, bubble);
  } catch (err) {
    if (err.name === "AbortError") setStatus("cancelled");
    else setStatus(err.message, true);
    if (!bubble.textContent) bubble.remove();
  } finally {
    bubble.classList.remove("streaming");
    chat.controller = null;
    setMode("idle");
  }
}

// A server that lost the session (after a cancel, or a restart) starts afresh: say so in the view.
function noteNewConversation(piece, bubble) {
  if (chat.held > 0 && piece.history_tokens === 0) {
    addNote("— the server started a new conversation: it no longer remembers the messages above —",
            bubble.previousElementSibling);
    chat.held = 0;
  }
}

function finishTurn(last, bubble) {
  if (last === null || !last.finish_reason) {
    setStatus("the reply was cut off (the api_server stopped answering)", true);
    return;
  }
  const tokens = `${last.tokens} tokens`;
  if (last.finish_reason === "abort") {
    bubble.classList.add("cancelled");
    setStatus(`cancelled after ${tokens}`);
    return;
  }
  chat.held += 1;
  const inSession = (last.history_tokens || 0) + (last.input_tokens || 0) + (last.tokens || 0);
  const why = last.finish_reason === "length" ? "stopped at the length limit" : "done";
  setStatus(`${why} · ${tokens} · ${inSession} tokens in this conversation`);
}

async function cancelReply() {
  if (chat.mode !== "streaming") return;
  const controller = chat.controller;
  ui.cancel.disabled = true;
  setStatus("cancelling…");
  try {
    await post(cancelRequest());
  } catch (err) {
    setStatus(err.message, true);
    controller.abort();                 // closing the stream makes the server stop the reply too
    return;
  }
  // The stream ends by itself with finish_reason "abort"; a server that does not end it gets cut off.
  setTimeout(() => { if (chat.controller === controller) controller.abort(); }, 3000);
}

async function resetChat() {
  if (chat.mode === "streaming") {
    await cancelReply();
    await chat.turn;
  }
  setMode("resetting");
  setStatus("ending the conversation…");
  try {
    await post(endRequest());
    ui.messages.replaceChildren();
    chat.held = 0;
    setStatus(`new conversation · session ${chat.sessionId}`);
  } catch (err) {
    setStatus(`reset failed: ${err.message}`, true);
  } finally {
    setMode("idle");
    ui.prompt.focus();
  }
}

async function loadModel() {
  try {
    const resp = await fetch("api/models");
    if (!resp.ok) throw new Error(await errorMessage(resp));
    const names = ((await resp.json()).data || []).map((m) => m.id);
    ui.model.textContent = names.join(", ");
    setStatus(`ready · session ${chat.sessionId}`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

// ------------------------------------------------------------------ wiring

function showSlider(input) {
  const output = document.getElementById(`${input.id}-value`);
  const show = () => { output.textContent = input.value; };
  input.addEventListener("input", show);
  show();
}

ui.composer.addEventListener("submit", (e) => { e.preventDefault(); sendMessage(); });
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {    // Shift+Enter: a new line
    e.preventDefault();
    sendMessage();
  }
});
ui.cancel.addEventListener("click", cancelReply);
ui.reset.addEventListener("click", resetChat);
window.addEventListener("pagehide", () => {    // the tab goes away: free its session on the server
  navigator.sendBeacon(API, new Blob([JSON.stringify(endRequest())], {type: "application/json"}));
});
[ui.maxTokens, ui.topP, ui.temperature].forEach(showSlider);
if (window.matchMedia("(max-width: 640px)").matches) ui.settings.open = false;   // phones: room for the chat
setMode("idle");
loadModel();
ui.prompt.focus();
