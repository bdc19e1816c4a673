// lmlab playground: streams 1-4 models side by side through the server's OpenAI routes.
// Every string from the server goes into the page with textContent, never innerHTML.
"use strict";

const LN2 = Math.log(2);
const $ = (id) => document.getElementById(id);
const state = { models: [], controllers: [], columns: [], round: 0, reportUrls: [] };
const SETTINGS = ["temperature", "top-p", "top-k", "max-tokens", "seed", "stop"];

// ---- requests ---------------------------------------------------------------------------------

// The key lives only in the input field (page memory) and goes only to this page's own origin.
function headers() {
  return { "Content-Type": "application/json", ...authHeaders() };
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, init) {
  const url = new URL(path, window.location.origin);
  if (url.origin !== window.location.origin) throw new Error("refusing to send the key to " + url.origin);
  return fetch(url, init);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return `HTTP ${resp.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status} ${resp.statusText}`;
}

// Yield each parsed `data:` object of a Server-Sent Events response; stop at `[DONE]`.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// ---- models -----------------------------------------------------------------------------------

// The server's models (/v1/models), or a line saying why they could not be listed.
async function fetchModels() {
  let resp;
  try {
    resp = await api("/v1/models", { headers: authHeaders() });
  } catch (e) {
    return { error: "cannot reach the server: " + e.message };
  }
  if (!resp.ok) {
    return { error: resp.status === 401 ? "this server needs an API key: enter it above" : await errorText(resp) };
  }
  const body = await resp.json();
  return { models: body.data || [] };
}

async function loadModels() {
  setNotice("");
  const got = await fetchModels();
  if (got.error) { setNotice(got.error); return; }
  state.models = got.models;
  for (let i = 0; i < 4; i++) {
    const select = $("model-" + i);
    const before = select.value;
    select.replaceChildren();
    select.append(new Option(i === 0 ? "(choose a model)" : "(none)", ""));
    for (const m of state.models) select.append(new Option(String(m.id), String(m.id)));
    const ids = state.models.map((m) => String(m.id));
    if (ids.includes(before)) select.value = before;
    else if (i < ids.length && i < 2) select.value = ids[i];
  }
  if (!state.models.length) setNotice("the server lists no models");
}

// List the models again and rewrite every column's card (which models are in memory changes as the
// server loads and unloads them); the pickers stay as they are.
async function refreshCards() {
  const got = await fetchModels();
  if (got.error) return;
  state.models = got.models;
  for (const col of state.columns) showCard(col);
}

function showCard(col) {
  const info = card(col.model);
  col.card.textContent = info;
  col.card.hidden = !info;
}

// A number as 1.2k, 3.4M, 5.6B.
function compact(n) {
  if (typeof n !== "number") return String(n);
  for (const [size, unit] of [[1e9, "B"], [1e6, "M"], [1e3, "k"]]) {
    if (Math.abs(n) >= size) return (n / size).toPrecision(3) + unit;
  }
  return String(n);
}

function cardValue(key, value) {
  if (key === "tokenizer" && typeof value === "object") {
    const size = value.vocab_size !== undefined ? ` (${compact(value.vocab_size)} tokens)` : "";
    return `${value.kind ?? "?"} tokenizer${size}`;
  }
  if (typeof value === "object") return JSON.stringify(value);
  if (key === "val_bpb" && typeof value === "number") return value.toFixed(3);
  return compact(value);
}

// The "lmlab" object (model card and load state) /v1/models gives for the model ``id``, or null.
function cardOf(id) {
  const m = state.models.find((x) => String(x.id) === id);
  const c = m && m.lmlab;
  return c && typeof c === "object" ? c : null;
}

// The model card of /v1/models's "lmlab" object, one line.
function card(id) {
  const c = cardOf(id);
  if (!c) return "";
  const parts = [];
  const show = { family: "", parameters: " params", context: " context", tokenizer: "",
                 training_tokens: " training tokens", val_bpb: " val bpb" };
  for (const [k, suffix] of Object.entries(show)) {
    if (c[k] !== undefined && c[k] !== null) parts.push(cardValue(k, c[k]) + suffix);
  }
  if (c.loaded === false) {
    if (c.error) parts.push("not loaded: its last load failed");
    else if (c.evicted) parts.push("not loaded (unloaded to free memory): loads on first use");
    else parts.push("not loaded: loads on first use");
  }
  return parts.join(" · ");
}

// ---- settings ---------------------------------------------------------------------------------

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function numberOf(id) {
  const raw = $(id).value.trim();
  return raw === "" ? null : Number(raw);
}

function stops(id) {
  const raw = $(id).value;
  if (!raw.trim()) return null;
  return raw.split(" | ").filter((s) => s.length)
    .map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"));
}

// The sampling settings of picker ``index``: its own ones when "own settings" is on, else the shared.
function sampling(index) {
  const own = index !== undefined && $("own-" + index).checked;
  const id = (name) => (own ? `${name}-${index}` : name);
  const s = {};
  const t = numberOf(id("temperature")), p = numberOf(id("top-p")), k = numberOf(id("top-k"));
  const n = numberOf(id("max-tokens")), seed = numberOf(id("seed")), stop = stops(id("stop"));
  if (t !== null) s.temperature = t;
  if (p !== null) s.top_p = p;
  if (k !== null && k > 0) s.top_k = k;
  if (n !== null) s.max_tokens = n;
  if (seed !== null) s.seed = seed;
  if (stop) s.stop = stop;
  return s;
}

// The chosen models with the index of their picker (whose settings they use).
function chosenModels() {
  const out = [];
  for (let i = 0; i < 4; i++) {
    const v = $("model-" + i).value;
    if (v) out.push({ model: v, picker: i });
  }
  return out;
}

// The four model pickers, made from one template (ids model-I, own-I, settings-I), each with its own
// settings: copies of the shared inputs (ids suffixed with -I), filled from the shared values when
// "own settings" is switched on.
function buildPickers() {
  const template = $("picker-template");
  for (let i = 0; i < 4; i++) {
    const picker = template.content.firstElementChild.cloneNode(true);
    const select = picker.querySelector("select");
    select.id = "model-" + i;
    select.setAttribute("aria-label", `model ${i + 1}`);
    picker.querySelector("input[type=checkbox]").id = "own-" + i;
    const box = picker.querySelector("fieldset");
    box.id = "settings-" + i;
    box.querySelector("legend").textContent = `model ${i + 1}'s sampling`;
    template.parentNode.append(picker);
    for (const name of SETTINGS) {
      const label = $(name).closest("label").cloneNode(true);
      const input = label.querySelector("input");
      input.id = `${name}-${i}`;
      box.append(label);
    }
    $("own-" + i).addEventListener("change", () => {
      if ($("own-" + i).checked) for (const name of SETTINGS) $(`${name}-${i}`).value = $(name).value;
      box.hidden = !$("own-" + i).checked;
    });
  }
}

function describe(settings) {
  return Object.entries(settings)
    .map(([k, v]) => `${k.replace("_", " ")} ${Array.isArray(v) ? JSON.stringify(v) : v}`).join(" · ");
}

// ---- columns ----------------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// Why a model not in memory is loading, from its /v1/models entry.
function loadReason(c) {
  if (c.evicted) return "unloaded to free memory";
  if (c.error) return "its last load failed";
  return "first use";
}

function makeColumn(model, index, own) {
  const root = el("article", "column");
  root.dataset.model = model;
  root.dataset.index = String(index);
  root.append(el("h2", null, model));
  const col = {
    root, model, card: el("p", "card"), stats: el("div", "stats"), status: el("div", "state", "waiting"),
    tokens: el("div", "tokens"), error: el("div", "error"), loading: null,
    count: 0, sumLogprob: 0, nLogprob: 0, sawLogprobs: false,
    t0: performance.now(), tFirst: null, tLast: null,
  };
  showCard(col);
  root.append(col.card);
  if (own) root.append(el("p", "settings", "own settings: " + describe(own)));
  const c = cardOf(model);
  if (c && c.loaded === false) {  // its first request waits for the load: say so until the answer starts
    col.loading = el("p", "loading", `loading ${model} (${loadReason(c)})…`);
    col.loading.setAttribute("role", "status");
    root.append(col.loading);
  }
  col.tokens.setAttribute("aria-live", "polite");
  root.append(col.status, col.stats, col.tokens, col.error);
  $("columns").append(root);
  state.columns.push(col);
  return col;
}

// The server answered (the model is in memory now, or failed to load), or the request ended before:
// drop the loading notice and list the models again so the cards say which are loaded.
function answered(col) {
  if (!col.loading) return;
  col.loading.remove();
  col.loading = null;
  refreshCards();
}

function genColour(p) {
  // red (unlikely) through yellow to green (likely)
  return `hsla(${Math.round(120 * p)}, 75%, 50%, 0.32)`;
}

function surprisalColour(bits) {
  return `rgba(220, 40, 40, ${Math.min(bits / 12, 1) * 0.6})`;
}

// Control characters show as their Unicode control pictures (U+2400...), so every token stays visible.
function visible(text) {
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g,
    (c) => String.fromCharCode(c === "\x7f" ? 0x2421 : 0x2400 + c.charCodeAt(0)));
}

function addToken(col, text, logprob, alternatives) {
  const span = el("span", "tok", visible(text));
  span._token = text;
  span.tabIndex = 0;
  if (logprob !== null && logprob !== undefined) {
    span.dataset.logprob = String(logprob);
    span.style.background = genColour(Math.exp(logprob));
  }
  span._alts = alternatives || [];
  col.tokens.append(span);
  return span;
}

function noteToken(col, logprob) {
  const now = performance.now();
  if (col.tFirst === null) {
    col.tFirst = now;
    col.root.dataset.ttft = (now - col.t0).toFixed(1);
  }
  col.tLast = now;
  col.count += 1;
  if (logprob !== null && logprob !== undefined) {
    col.sumLogprob += logprob;
    col.nLogprob += 1;
  }
}

function showStats(col) {
  const parts = [];
  if (col.tFirst !== null) parts.push(`TTFT ${Math.round(col.tFirst - col.t0)} ms`);
  if (col.count > 1 && col.tLast > col.tFirst) {
    parts.push(`${((col.count - 1) * 1000 / (col.tLast - col.tFirst)).toFixed(1)} tok/s`);
  }
  parts.push(`${col.count} tokens`);
  if (col.nLogprob) parts.push(`mean log-prob ${(col.sumLogprob / col.nLogprob).toFixed(3)}`);
  col.stats.textContent = parts.join(" · ");
  col.root.dataset.tokens = String(col.count);
}

// ---- generation -------------------------------------------------------------------------------

function chatTokens(col, choice) {
  const content = choice.logprobs && choice.logprobs.content;
  if (content && content.length) {
    col.sawLogprobs = true;
    for (const e of content) {
      const alts = (e.top_logprobs || []).map((a) => [a.token, a.logprob]);
      addToken(col, e.token, e.logprob, alts);
      noteToken(col, e.logprob);
    }
  } else if (choice.delta && choice.delta.content && !col.sawLogprobs) {
    addToken(col, choice.delta.content, null, []);
    noteToken(col, null);
  }
}

function completionTokens(col, choice) {
  const lp = choice.logprobs;
  if (lp && lp.tokens && lp.tokens.length) {
    col.sawLogprobs = true;
    lp.tokens.forEach((token, i) => {
      const value = lp.token_logprobs[i];
      const top = lp.top_logprobs && lp.top_logprobs[i];
      const alts = top ? Object.entries(top) : [];
      addToken(col, token, value, alts);
      noteToken(col, value);
    });
  } else if (choice.text && !col.sawLogprobs) {
    addToken(col, choice.text, null, []);
    noteToken(col, null);
  }
}

async function runColumn(col, path, body, onChoice, signal) {
  col.status.textContent = "running";
  col.root.dataset.state = "running";
  try {
    const resp = await api(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
    answered(col);
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const ev of sseEvents(resp)) {
      if (ev.error) throw new Error(ev.error.message || "the model failed");
      for (const choice of ev.choices || []) {
        onChoice(col, choice);
        if (choice.finish_reason) col.finish = choice.finish_reason;
      }
      showStats(col);
    }
    col.status.textContent = "done" + (col.finish ? ` (${col.finish})` : "");
    col.root.dataset.state = "done";
  } catch (e) {
    answered(col);  // stopped (or failed) before the answer: the notice goes too
    if (e.name === "AbortError") {
      col.status.textContent = "stopped";
      col.root.dataset.state = "stopped";
    } else {
      col.error.textContent = String(e.message || e);
      col.status.textContent = "failed";
      col.root.dataset.state = "error";
    }
  }
  showStats(col);
}

// ---- scoring ----------------------------------------------------------------------------------

function utf8Length(s) { return new TextEncoder().encode(s).length; }

// Bits per byte over the tokens the model predicted: the leading tokens without a log-prob (nothing
// predicts them) are left out of both the sum and the byte count.
function bitsPerByte(text, tokens, logprobs) {
  let rest = text, i = 0;
  while (i < tokens.length && logprobs[i] === null) {
    if (rest.startsWith(tokens[i])) rest = rest.slice(tokens[i].length);
    i += 1;
  }
  let nats = 0;
  for (; i < tokens.length; i++) if (logprobs[i] !== null) nats -= logprobs[i];
  const bytes = utf8Length(rest);
  return bytes ? nats / LN2 / bytes : null;
}

async function scoreColumn(col, text, signal) {
  col.status.textContent = "scoring";
  col.root.dataset.state = "running";
  try {
    const body = { model: col.model, prompt: text, echo: true, logprobs: 1, max_tokens: 0 };
    const resp = await api("/v1/completions", { method: "POST", headers: headers(),
                                                body: JSON.stringify(body), signal });
    answered(col);
    if (!resp.ok) throw new Error(await errorText(resp));
    const lp = (await resp.json()).choices[0].logprobs;
    lp.tokens.forEach((token, i) => {
      const value = lp.token_logprobs[i];
      const top = lp.top_logprobs && lp.top_logprobs[i];
      const span = addToken(col, token, value, top ? Object.entries(top) : []);
      if (value !== null) {
        span.style.background = surprisalColour(-value / LN2);
        span.dataset.surprisal = (-value / LN2).toFixed(2);
      }
      noteToken(col, value);
    });
    const bpb = bitsPerByte(text, lp.tokens, lp.token_logprobs);
    const parts = [`${lp.tokens.length} tokens`];
    if (col.nLogprob) parts.push(`mean log-prob ${(col.sumLogprob / col.nLogprob).toFixed(3)}`);
    if (bpb !== null) parts.push(`${bpb.toFixed(3)} bits/byte`);
    col.stats.textContent = parts.join(" · ");
    if (bpb !== null) col.root.dataset.bpb = bpb.toFixed(4);
    col.status.textContent = "scored";
    col.root.dataset.state = "done";
  } catch (e) {
    answered(col);
    const stopped = e.name === "AbortError";
    col.status.textContent = stopped ? "stopped" : "failed";
    col.root.dataset.state = stopped ? "stopped" : "error";
    if (!stopped) col.error.textContent = String(e.message || e);
  }
}

// ---- send / stop ------------------------------------------------------------------------------

function send() {
  const models = chosenModels();
  const text = $("prompt").value;
  if (!models.length) { setNotice("choose at least one model"); return; }
  if (!text.trim()) { setNotice("type a prompt first"); return; }
  setNotice("");
  stopAll();
  $("columns").replaceChildren();
  state.columns = [];
  const m = mode();
  const jobs = models.map(({ model, picker }, i) => {
    const settings = sampling(picker);
    const own = m !== "score" && $("own-" + picker).checked ? settings : null;
    const col = makeColumn(model, i, own);
    const controller = new AbortController();
    state.controllers.push(controller);
    if (m === "score") return scoreColumn(col, text, controller.signal);
    if (m === "chat") {
      const messages = [];
      const system = $("system").value;
      if (system.trim()) messages.push({ role: "system", content: system });
      messages.push({ role: "user", content: text });
      const body = { model, messages, stream: true, logprobs: true, top_logprobs: 5, ...settings };
      return runColumn(col, "/v1/chat/completions", body, chatTokens, controller.signal);
    }
    const body = { model, prompt: text, stream: true, logprobs: 5, ...settings };
    return runColumn(col, "/v1/completions", body, completionTokens, controller.signal);
  });
  const round = ++state.round;
  running(true);
  Promise.allSettled(jobs).then(() => {
    if (round !== state.round) return;  // a newer send owns the controllers now
    state.controllers = [];
    running(false);
  });
}

function stopAll() {
  for (const c of state.controllers) c.abort();
  state.controllers = [];
}

function running(on) {
  $("send").disabled = false;
  $("stop-button").disabled = !on;
  document.body.dataset.running = on ? "1" : "0";
}

function setNotice(text) { $("notice").textContent = text; }

function showMode() {
  const m = mode();
  $("system-label").hidden = m !== "chat";
  $("sampling").disabled = m === "score";
  for (let i = 0; i < 4; i++) {
    $("settings-" + i).disabled = m === "score";
    $("own-" + i).disabled = m === "score";
  }
  $("prompt-label").textContent = m === "score" ? "Text to score" : "Prompt";
}

// ---- tooltip ----------------------------------------------------------------------------------

function percent(logprob) {
  const p = Math.exp(logprob) * 100;
  return p >= 10 ? p.toFixed(1) + "%" : p.toPrecision(2) + "%";
}

function showTooltip(span) {
  const tip = $("tooltip");
  tip.replaceChildren();
  const value = span.dataset.logprob;
  const head = el("div", null, JSON.stringify(span._token));
  if (value !== undefined) {
    head.textContent += `  p=${percent(Number(value))}`;
    if (span.dataset.surprisal) head.textContent += `  ${span.dataset.surprisal} bits`;
  } else {
    head.textContent += "  (nothing predicts it)";
  }
  tip.append(head);
  if (span._alts.length) {
    const table = el("table");
    for (const [token, lp] of span._alts) {
      const row = el("tr", token === span._token ? "chosen" : null);
      row.append(el("td", null, JSON.stringify(token)), el("td", "p", percent(lp)));
      table.append(row);
    }
    tip.append(table);
  }
  const box = span.getBoundingClientRect();
  tip.style.left = `${window.scrollX + box.left}px`;
  tip.style.top = `${window.scrollY + box.bottom + 4}px`;
  tip.hidden = false;
}

function hideTooltip() { $("tooltip").hidden = true; }

// ---- reports ----------------------------------------------------------------------------------
// /reports and /reports/{path} are fetched with the key (when one is set) and shown in this page. The
// server's HTML is parsed inert (a template's content runs no script and loads nothing) and rebuilt
// element by element from a short list of tags, text as text: nothing from a report can run. Links to other
// reports open here; the plots are fetched with the key and shown from blob: URLs.

const REPORT_TAGS = new Set(["h1", "h2", "h3", "h4", "h5", "h6", "p", "ul", "ol", "li", "table", "thead",
  "tbody", "tr", "th", "td", "code", "pre", "em", "strong", "a", "img", "blockquote", "hr", "br", "del"]);
const DROPPED = new Set(["script", "style", "template", "iframe", "object", "embed", "noscript", "head",
  "title", "base", "meta", "link", "svg", "math", "form", "button", "input", "textarea", "select"]);

// The same-origin /reports path ``url`` names, or null.
function reportPath(url) {
  if (url.origin !== window.location.origin) return null;
  return url.pathname === "/reports" || url.pathname.startsWith("/reports/") ? url.pathname : null;
}

function rebuild(node, base) {
  if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.data);
  if (node.nodeType !== Node.ELEMENT_NODE) return null;
  const tag = node.localName;
  if (DROPPED.has(tag)) return null;
  const out = REPORT_TAGS.has(tag) ? document.createElement(tag) : document.createDocumentFragment();
  if (tag === "a" && node.hasAttribute("href")) {
    let url = null;
    try { url = new URL(node.getAttribute("href"), base); } catch (_) { /* not a URL: text only */ }
    const path = url && reportPath(url);
    if (path) {
      out.href = path;
      out.dataset.report = path;
    } else if (url && (url.protocol === "https:" || url.protocol === "http:")) {
      out.href = url.href;
      out.rel = "noopener noreferrer";
      out.target = "_blank";
    }
  } else if (tag === "img") {
    out.alt = node.getAttribute("alt") || "";
    let url = null;
    try { url = new URL(node.getAttribute("src") || "", base); } catch (_) { /* no source */ }
    const path = url && reportPath(url);
    if (path) out.dataset.src = path;
  } else if ((tag === "th" || tag === "td") && /^text-align:\s*(left|right|center)$/.test(node.getAttribute("style") || "")) {
    out.style.textAlign = node.getAttribute("style").split(":")[1].trim();
  } else if (tag === "ol" && /^\d+$/.test(node.getAttribute("start") || "")) {
    out.start = Number(node.getAttribute("start"));
  }
  for (const child of node.childNodes) {
    const copy = rebuild(child, base);
    if (copy) out.append(copy);
  }
  return out;
}

function forgetReportUrls() {
  for (const u of state.reportUrls) URL.revokeObjectURL(u);
  state.reportUrls = [];
}

async function blobUrl(resp) {
  const u = URL.createObjectURL(await resp.blob());
  state.reportUrls.push(u);
  return u;
}

// Fetch every image of the shown report with the key; each gets a blob: URL (or says it failed).
async function loadReportImages(box) {
  await Promise.all([...box.querySelectorAll("img[data-src]")].map(async (img) => {
    try {
      const resp = await api(img.dataset.src, { headers: authHeaders() });
      if (!resp.ok || !(resp.headers.get("content-type") || "").startsWith("image/")) {
        throw new Error(`HTTP ${resp.status}`);
      }
      img.src = await blobUrl(resp);
      await img.decode().catch(() => {});
    } catch (e) {
      img.replaceWith(el("span", "error", `[${img.alt || img.dataset.src}: ${e.message}]`));
    }
  }));
}

async function openReport(path) {
  const view = $("reports-view"), box = $("report");
  view.hidden = false;
  forgetReportUrls();
  $("report-path").textContent = path;
  box.dataset.state = "loading";
  box.replaceChildren(el("p", "state", "loading " + path + "…"));
  try {
    const resp = await api(path, { headers: authHeaders() });
    if (!resp.ok) {
      throw new Error(resp.status === 401 ? "the reports need the API key: enter it above"
                                          : await errorText(resp));
    }
    const type = resp.headers.get("content-type") || "";
    if (type.startsWith("text/html")) {
      // parsed into an inert template (no script runs, nothing loads, and unlike DOMParser the
      // page's CSP sees none of the report's inline styles); only its rebuilt copy enters the page
      const inert = document.createElement("template");
      inert.innerHTML = await resp.text();
      const doc = inert.content;
      const base = new URL(doc.querySelector("base")?.getAttribute("href") || path, window.location.origin);
      box.replaceChildren(...[...doc.childNodes].map((n) => rebuild(n, base)).filter(Boolean));
      await loadReportImages(box);
    } else if (type.startsWith("image/")) {
      const img = el("img");
      img.alt = path;
      img.src = await blobUrl(resp);
      box.replaceChildren(img);
    } else if (type.startsWith("text/")) {
      box.replaceChildren(el("pre", null, await resp.text()));
    } else {
      const a = el("a", null, "download " + path.split("/").pop());
      a.href = await blobUrl(resp);
      a.download = decodeURIComponent(path.split("/").pop());
      box.replaceChildren(a);
    }
    box.dataset.state = "done";
  } catch (e) {
    box.replaceChildren(el("p", "error", String(e.message || e)));
    box.dataset.state = "error";
  }
}

function closeReports() {
  $("reports-view").hidden = true;
  $("report").replaceChildren();
  forgetReportUrls();
}

// ---- wiring -----------------------------------------------------------------------------------

function init() {
  buildPickers();
  $("send").addEventListener("click", send);
  $("stop-button").addEventListener("click", stopAll);
  $("load-models").addEventListener("click", loadModels);
  $("api-key").addEventListener("change", loadModels);
  $("open-reports").addEventListener("click", () => openReport("/reports"));
  $("reports-home").addEventListener("click", () => openReport("/reports"));
  $("reports-close").addEventListener("click", closeReports);
  $("report").addEventListener("click", (e) => {
    const a = e.target instanceof Element ? e.target.closest("a[data-report]") : null;
    if (!a) return;
    e.preventDefault();
    openReport(a.dataset.report);
  });
  for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", showMode);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      stopAll();
      hideTooltip();
    }
  });
  const cols = $("columns");
  const tokenOf = (e) => (e.target instanceof Element ? e.target.closest(".tok") : null);
  cols.addEventListener("mouseover", (e) => { const t = tokenOf(e); if (t) showTooltip(t); });
  cols.addEventListener("mouseout", (e) => { if (tokenOf(e)) hideTooltip(); });
  cols.addEventListener("focusin", (e) => { const t = tokenOf(e); if (t) showTooltip(t); });
  cols.addEventListener("focusout", hideTooltip);
  window.addEventListener("pagehide", stopAll);
  showMode();
  running(false);
  loadModels();
}

init();
