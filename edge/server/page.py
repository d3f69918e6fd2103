"""The chat page served at `/`: one self-contained HTML file (inline CSS and JS, nothing from a
CDN, so it works on a home network without the internet). It streams the reply from
/v1/chat/completions and keeps the conversation in the page."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge chat</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:0 auto;padding:1rem;color:#222}
header{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap;margin-bottom:1rem}
h1{font-size:1.2rem;margin:0 auto 0 0}
#log{display:flex;flex-direction:column;gap:.6rem;margin-bottom:1rem}
.msg{padding:.5rem .75rem;border-radius:.6rem;white-space:pre-wrap;max-width:85%}
.user{background:#dbeafe;align-self:flex-end}.assistant{background:#f1f5f9}
.error{background:#fee2e2}
form{display:flex;gap:.5rem}textarea{flex:1;font:inherit;padding:.4rem;min-height:3rem}
button,select,input{font:inherit}
#stats{color:#666;font-size:.85rem;margin-top:.4rem}
</style></head>
<body>
<header><h1>edge chat</h1>
<select id="model" aria-label="model"></select>
<input id="key" type="password" placeholder="API key (if set)" size="14" aria-label="API key">
<button id="reset" type="button">New chat</button></header>
<div id="log"></div>
<form id="form"><textarea id="input" placeholder="Message" required></textarea>
<button id="send">Send</button></form>
<div id="stats"></div>
<script>
const $ = (id) => document.getElementById(id);
let messages = [];
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  return div;
}
async function loadModels() {
  const r = await fetch("/v1/models", {headers: headers()});
  if (!r.ok) { $("stats").textContent = "models: HTTP " + r.status; return; }
  $("model").innerHTML = "";
  for (const m of (await r.json()).data) $("model").add(new Option(m.id, m.id));
}
async function send(text) {
  messages.push({role: "user", content: text});
  bubble("user", text);
  const out = bubble("assistant", "");
  $("send").disabled = true;
  const started = performance.now();
  let first = 0, reply = "", usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
      body: JSON.stringify({model: $("model").value, messages, stream: true,
        stream_options: {include_usage: true}, temperature: 0.7})});
    if (!r.ok) throw new Error((await r.json()).error.message);
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, end); buffer = buffer.slice(end + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const data = JSON.parse(line.slice(6));
        if (data.error) throw new Error(data.error.message);
        if (data.usage) usage = data.usage;
        const piece = data.choices.length ? data.choices[0].delta.content : null;
        if (piece) {
          if (!first) first = performance.now();
          reply += piece; out.textContent = reply;
        }
      }
    }
    messages.push({role: "assistant", content: reply});
    if (usage) $("stats").textContent = usage.prompt_tokens + " prompt tokens, " +
      usage.completion_tokens + " generated, first token after " +
      Math.round((first || performance.now()) - started) + " ms";
  } catch (e) {
    out.className = "msg error"; out.textContent = String(e.message || e); messages.pop();
  }
  $("send").disabled = false;
}
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (text) { $("input").value = ""; send(text); }
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
$("reset").addEventListener("click", () => { messages = []; $("log").innerHTML = ""; });
$("key").addEventListener("change", loadModels);
loadModels();
</script></body></html>
"""
