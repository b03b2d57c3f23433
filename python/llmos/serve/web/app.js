// The app page: a form built from the app's inputs (a chat view for chat apps), the reply
// streamed as it is generated (fetch + ReadableStream over server-sent events), citations, and
// an explain view. Plain JS, no build step, nothing fetched but this server's own API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const appName = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
  const listUrl = new URL("../v1/apps", location.href).href;
  const callUrl = new URL("../v1/apps/" + encodeURIComponent(appName), location.href).href;
  const KEY = "llmos-api-key";

  let app = null;
  let history = [];       // chat turns so far: [{role, content}], sent with each message
  let controller = null;  // the running request's AbortController (Stop)

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "className") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function status(text, isError = false) {
    const s = $("status");
    s.textContent = text || "";
    s.className = isError ? "error" : "muted";
    s.setAttribute("role", isError ? "alert" : "status");
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error;
    } catch (_) { /* not JSON */ }
    return { message: `HTTP ${response.status}`, param: null };
  }

  // ---- the app's inputs -> form fields ---------------------------------------------------

  // The inputs as /v1/apps lists them, or (older servers) derived from the JSON schema.
  function inputsOf(a) {
    if (Array.isArray(a.inputs)) return a.inputs;
    const schema = a.input_schema || {};
    const required = new Set(schema.required || []);
    return Object.entries(schema.properties || {}).map(([name, p]) => ({
      name,
      type: p.enum ? "choice" : p.type === "boolean" ? "boolean" : p.type === "integer" ? "integer"
        : p.type === "number" ? "number" : (p.format === "textarea" || p["x-llmos-type"] === "text") ? "text" : "string",
      choices: p.enum, default: p.default, description: p.description, required: required.has(name),
      min: p.minimum ?? null, max: p.maximum ?? p.maxLength ?? null,
    }));
  }

  function field(spec) {
    const id = "in-" + spec.name;
    const hintId = spec.description ? id + "-hint" : null;
    const common = { id, name: spec.name, "aria-describedby": hintId, required: spec.required && spec.type !== "boolean" };
    let input;
    if (spec.type === "choice") {
      input = el("select", common);
      for (const c of spec.choices || []) {
        input.append(el("option", { value: String(c), text: String(c), selected: spec.default === c }));
      }
    } else if (spec.type === "boolean") {
      input = el("input", { ...common, type: "checkbox", checked: !!spec.default });
      const box = el("div", { className: "field" },
        el("label", { className: "check", for: id }, input, document.createTextNode(" " + label(spec.name))));
      if (hintId) box.append(el("span", { className: "hint", id: hintId, text: spec.description }));
      return box;
    } else if (spec.type === "integer" || spec.type === "number") {
      input = el("input", { ...common, type: "number", inputmode: spec.type === "integer" ? "numeric" : "decimal",
        step: spec.type === "integer" ? 1 : "any", min: spec.min, max: spec.max, value: spec.default });
    } else if (spec.type === "text") {
      input = el("textarea", { ...common, rows: 5, maxlength: spec.max });
      if (spec.default != null) input.value = spec.default;
    } else {
      input = el("input", { ...common, type: "text", maxlength: spec.max, value: spec.default });
    }
    input.dataset.kind = spec.type;
    const box = el("div", { className: "field" }, el("label", { for: id, text: label(spec.name) + (spec.required ? " *" : "") }));
    if (hintId) box.append(el("span", { className: "hint", id: hintId, text: spec.description }));
    box.append(input);
    return box;
  }

  function label(name) {
    const words = name.replace(/[_-]+/g, " ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  function readInputs() {
    const inputs = {};
    for (const node of document.querySelectorAll("#app-form [data-kind]")) {
      node.removeAttribute("aria-invalid");
      const kind = node.dataset.kind;
      if (kind === "boolean") inputs[node.name] = node.checked;
      else if (node.value === "") continue;  // the app's default applies
      else if (kind === "integer") inputs[node.name] = parseInt(node.value, 10);
      else if (kind === "number") inputs[node.name] = parseFloat(node.value);
      else inputs[node.name] = node.value;
    }
    return inputs;
  }

  function markInvalid(param) {
    const name = (param || "").replace(/^inputs\./, "");
    const node = name && document.getElementById(name === "message" ? "message" : "in-" + name);
    if (node) {
      node.setAttribute("aria-invalid", "true");
      node.focus();
    }
  }

  // ---- server-sent events ------------------------------------------------------------------

  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }

  // ---- showing a reply -----------------------------------------------------------------------

  function showCitations(citations) {
    const list = $("citations");
    list.replaceChildren();
    for (const c of citations || []) {
      const where = c.lines ? ` lines ${c.lines[0]}–${c.lines[1]}` : "";
      // The excerpt's paragraphs, each rewrapped to the page's width.
      const quote = el("blockquote");
      for (const para of (c.text || "").split(/\n\s*\n/)) {
        if (para.trim()) quote.append(el("p", { text: para.replace(/\s*\n\s*/g, " ").trim() }));
      }
      list.append(el("li", {}, el("span", { className: "src", text: `[${c.id}] ${c.source}${where}` }), quote));
    }
    $("sources").hidden = !list.children.length;
  }

  function fmt(x, digits = 3) {
    return typeof x === "number" ? x.toFixed(digits).replace(/\.?0+$/, "") : "–";
  }

  function showTimings(result) {
    const t = result.timings || {};
    const u = result.usage || {};
    $("timings").textContent = `${u.completion_tokens ?? "?"} tokens · first token ${fmt(t.ttft_s)} s · ` +
      `${fmt(t.tokens_per_s, 1)} tokens/s · ${result.finish_reason || ""}`;
  }

  function showExplain(result) {
    const ex = result.explain;
    $("explain-view").hidden = !ex;
    if (!ex) return;
    $("prompt").textContent = ex.prompt || "";
    $("prompt-tokens").textContent = ex.prompt_tokens != null ? `(${ex.prompt_tokens} tokens)` : "";
    const box = $("tokens");
    box.replaceChildren();
    for (const t of ex.tokens || []) {
      const alts = (t.top || []).map((a) => `${JSON.stringify(a.text)} ${fmt(a.logprob, 2)}`).join("\n");
      const tok = el("span", { className: "tok" + (t.logprob < -2 ? " low" : ""), tabindex: 0, title: alts,
        "aria-label": `${t.text} log-probability ${fmt(t.logprob, 2)}. Alternatives: ${alts}` },
        document.createTextNode(t.text), el("small", { text: fmt(t.logprob, 2) }));
      box.append(tok);
    }
    const dl = $("explain-timings");
    dl.replaceChildren();
    const timings = { ...(result.timings || {}), ...(ex.timings || {}) };
    const names = { ttft_s: "First token (s)", total_s: "Total (s)", tokens_per_s: "Tokens per second" };
    for (const [k, v] of Object.entries(timings)) dl.append(el("dt", { text: names[k] || k }), el("dd", { text: fmt(v, 3) }));
  }

  function finalOutput(target, result) {
    const kind = app.output || "text";
    if (kind.startsWith("json")) {
      target.replaceChildren(el("pre", { text: JSON.stringify(result.output, null, 2) }));
    } else if (kind.startsWith("code")) {
      target.replaceChildren(el("pre", {}, el("code", { text: result.output ?? result.text })));
    }
    const err = $("output-error");
    err.hidden = !result.output_error;
    err.textContent = result.output_error || "";
  }

  // Sends one request; streams its text into `target`; returns the result (or null).
  async function send(body, target) {
    controller = new AbortController();
    busy(true);
    status("Generating…");
    $("tools").replaceChildren();
    $("tools").hidden = true;
    target.setAttribute("aria-busy", "true");
    let result = null;
    try {
      const response = await fetch(callUrl, { method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ ...body, stream: true, explain: $("explain").checked }) });
      if (!response.ok) {
        const e = await errorOf(response);
        if (response.status === 401) askKey();
        markInvalid(e.param);
        status(e.message, true);
        return null;
      }
      for await (const ev of events(response)) {
        if (ev.error) { status(ev.error.message, true); return null; }
        if (ev.type === "meta") showCitations((ev.data || {}).citations);
        else if (ev.type === "text") {
          // A reply's leading blank lines are the model's habit, not content worth a gap.
          const piece = target.textContent ? ev.text : ev.text.replace(/^\s+/, "");
          if (piece) target.append(document.createTextNode(piece));
        }
        else if (ev.type === "tool") {
          const d = ev.data || {};
          $("tools").hidden = false;
          $("tools").append(el("li", { text: `tool ${d.name}(${JSON.stringify(d.arguments || {})}) → ` +
            (d.error ? "error: " + d.error : JSON.stringify(d.result)) }));
        } else if (ev.type === "done") result = ev.data;
      }
      if (result) {
        showCitations(result.citations);
        showTimings(result);
        showExplain(result);
        status("");
      }
      return result;
    } catch (e) {
      status(e.name === "AbortError" ? "Stopped." : "The request failed: " + e.message, e.name !== "AbortError");
      return null;
    } finally {
      target.setAttribute("aria-busy", "false");
      busy(false);
      controller = null;
    }
  }

  function busy(on) {
    $("send").disabled = on;
    $("stop").hidden = !on;
    $("reset").disabled = on;
  }

  // ---- the two views -------------------------------------------------------------------------

  async function runForm(event) {
    event.preventDefault();
    const out = $("output");
    out.replaceChildren();
    $("output-error").hidden = true;
    $("timings").textContent = "";
    $("result").hidden = false;
    const result = await send({ inputs: readInputs() }, out);
    if (result) finalOutput(out, result);
  }

  function bubble(role, text) {
    const body = el("span", { className: "body", text });
    const item = el("li", { className: "msg " + role },
      el("span", { className: "who", text: role === "user" ? "You" : app.name }), body);
    $("messages").append(item);
    item.scrollIntoView({ block: "end" });
    return body;
  }

  async function runChat(event) {
    event.preventDefault();
    const box = $("message");
    const message = box.value.trim();
    box.removeAttribute("aria-invalid");
    if (!message) { markInvalid("message"); status("Write a message first.", true); return; }
    bubble("user", message);
    box.value = "";
    const reply = bubble("assistant", "");
    const result = await send({ inputs: readInputs(), message, history }, reply);
    if (result) {
      history.push({ role: "user", content: message }, { role: "assistant", content: result.text });
    } else {
      reply.parentElement.classList.add("failed");
      box.value = message;  // nothing was kept: the message can be sent again
    }
    box.focus();
  }

  function render() {
    document.title = `${app.name} · llmos`;
    $("title").textContent = app.name;
    $("description").textContent = app.description || `A ${app.kind} app on ${app.model}.`;
    const form = $("app-form");
    const chat = app.kind === "chat";
    const specs = inputsOf(app).filter((s) => !(chat && s.name === "message"));
    const target = chat ? $("settings-fields") : $("fields");
    for (const s of specs) target.append(field(s));
    if (chat) {
      $("chat").hidden = false;
      $("settings").hidden = !specs.length;
      $("fields").append(el("div", { className: "field" },
        el("label", { for: "message", text: "Message" }),
        el("textarea", { id: "message", name: "message", rows: 3, required: true })));
      $("message").addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
      });
      $("send").textContent = "Send";
      $("reset").hidden = false;
      $("reset").addEventListener("click", () => { history = []; $("messages").replaceChildren(); status(""); });
      form.addEventListener("submit", runChat);
    } else {
      form.addEventListener("submit", runForm);
    }
    $("stop").addEventListener("click", () => controller && controller.abort());
    form.hidden = false;
    document.body.dataset.ready = "true";
  }

  function askKey() {
    $("key-form").hidden = false;
    $("api-key").focus();
  }

  async function start() {
    let response;
    try {
      response = await fetch(listUrl, { headers: headers() });
    } catch (e) {
      status("Cannot reach the server: " + e.message, true);
      return;
    }
    if (response.status === 401) {
      status("This server needs an API key.", true);
      askKey();
      return;
    }
    if (!response.ok) { status((await errorOf(response)).message, true); return; }
    app = ((await response.json()).data || []).find((a) => a.name === appName);
    if (!app) {
      $("title").textContent = "No such app";
      status(`No app named “${appName}” is served here.`, true);
      return;
    }
    $("key-form").hidden = true;
    status("");
    render();
  }

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    if (!app) start();
    else { $("key-form").hidden = true; status("Key saved; send again."); }
  });

  start();
})();
