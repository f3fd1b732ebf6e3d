// tessera serve: the page. No framework, no external URL: talks to this server only.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let limits = {};

function show(el, on) { el.hidden = !on; }

function setError(message) {
  $("error").textContent = message || "";
  show($("error"), Boolean(message));
}

function setWarnings(list) {
  const ul = $("warnings");
  ul.replaceChildren(...(list || []).map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  show(ul, Boolean(list && list.length));
}

function setBusy(busy, text, fraction) {
  $("go").disabled = busy;
  $("complete-go").disabled = busy;
  show($("status"), busy);
  if (text !== undefined) $("status-text").textContent = text;
  const bar = $("progress");
  if (fraction === undefined || fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
}

function currentModel() { return models.find((m) => m.name === $("model").value) || models[0]; }

// The generic fields a model takes (from /healthz: field -> its own setting and default),
// e.g. unCLIP: guidance -> decoder_guidance, steps -> decoder_steps. Only these are sent.
function settingsOf(m) { return (m && m.settings) || {}; }

function applyModel() {
  const m = currentModel();
  if (!m) return;
  const caps = new Set(m.capabilities);
  const settings = settingsOf(m);
  show($("candidates-field"), caps.has("rerank"));
  show($("complete-panel"), caps.has("image_prompt"));
  for (const field of ["guidance", "steps"]) {
    const s = settings[field];
    show($(`${field}-field`), Boolean(s));
    // each model's own default: scales and step counts do not carry over between models
    $(field).value = s ? s.default : "";
    $(field).title = s ? `sets ${s.setting} (default ${s.default})` : "";
  }
  if (settings.steps) $("steps").max = limits.max_steps || "";
  renderSettings(m);
  if (m.image_prompt_rows) {
    $("keep_rows").max = m.image_prompt_rows - 1;
    $("keep_rows").value = Math.floor(m.image_prompt_rows / 2);
  }
  $("caps").textContent = `${m.kind}, ${m.image_size}px: ${m.capabilities.join(", ")}`;
}

// One input per setting the model serves (/healthz setting_specs: name, type, choices,
// bounds, help and the model's own value as default), except those the generic Guidance and
// Steps inputs above already set. Derived from the settings dataclasses on the server.
function renderSettings(m) {
  const generic = new Set(Object.values(settingsOf(m)).map((s) => s.setting));
  const specs = (m.setting_specs || []).filter((s) => !generic.has(s.name));
  const inputs = specs.map((s) => {
    let input;
    if (s.type === "choice") {
      input = document.createElement("select");
      input.append(...s.choices.map((c) => new Option(c, c)));
      input.value = s.default;
    } else if (s.type === "bool") {
      input = Object.assign(document.createElement("input"), { type: "checkbox", checked: Boolean(s.default) });
    } else {
      input = Object.assign(document.createElement("input"), { type: "number", value: s.default });
      input.step = s.type === "int" ? "1" : "any";
      if (s.ge !== undefined) input.min = s.ge;
      if (s.le !== undefined) input.max = s.le;
      if (s.name.endsWith("steps") && limits.max_steps) input.max = limits.max_steps;
    }
    input.id = `setting-${s.name}`;
    input.dataset.setting = s.name;
    input.dataset.type = s.type;
    input.dataset.default = String(s.default);
    const label = document.createElement("label");
    label.title = s.help;
    label.append(s.name.replaceAll("_", " "), input);
    return label;
  });
  $("settings-fields").replaceChildren(...inputs);
  show($("settings-panel"), inputs.length > 0);
}

// The settings the user changed from the model's defaults: {name: value}.
function changedSettings() {
  const out = {};
  for (const input of $("settings-fields").querySelectorAll("[data-setting]")) {
    const type = input.dataset.type;
    const value = type === "bool" ? input.checked : type === "choice" ? input.value : input.value.trim();
    if (String(value) === input.dataset.default || value === "") continue;
    out[input.dataset.setting] = type === "int" || type === "float" ? Number(value) : value;
  }
  return out;
}

async function loadModels() {
  try {
    const r = await fetch("/healthz");
    const h = await r.json();
    models = h.models;
    limits = h.limits;
    $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
    $("n").max = limits.max_n;
    $("candidates").max = limits.max_candidates;
    $("prompt").maxLength = limits.max_prompt_chars * 4;
    applyModel();
  } catch (e) {
    setError(`cannot reach the server: ${e}`);
  }
}

function describeError(status, detail, headers) {
  if (status === 429) {
    const wait = headers && headers.get("Retry-After");
    return `Busy: ${detail}${wait ? ` (try again in ${wait} s)` : ""}`;
  }
  if (status === 413) return `Too large: ${detail}`;
  if (status === 400) return `Bad input: ${detail}`;
  if (status === 422) return `Not accepted: ${detail}`;
  if (status === 504) return `Too slow: ${detail}`;
  return `Error ${status}: ${detail}`;
}

// POST with Accept: text/event-stream; progress events update the bar, then a result.
async function run(url, init) {
  setError("");
  setWarnings([]);
  setBusy(true, "sending…", null);
  try {
    const r = await fetch(url, { ...init, headers: { ...(init.headers || {}), Accept: "text/event-stream" } });
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
      throw new Error(describeError(r.status, detail, r.headers));
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const event = (block.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "null");
        if (event === "progress") progress(data);
        else if (event === "error") throw new Error(describeError(data.status, data.detail));
        else if (event === "result") return data;
      }
    }
    throw new Error("the server closed the connection before answering");
  } finally {
    setBusy(false);
  }
}

function progress(p) {
  if (p.state === "queued") {
    setBusy(true, p.position ? `queued: ${p.position} ahead (${p.elapsed_s} s)` : `starting… (${p.elapsed_s} s)`, null);
  } else {
    setBusy(true, `generating… ${p.elapsed_s} s`, p.fraction ?? null);
  }
}

function tag(name, value) {
  const span = document.createElement("span");
  span.className = `tag ${value ? "pass" : "fail"}`;
  span.textContent = `${value ? "✓" : "✗"} ${name.replace("_", " ")}`;
  return span;
}

function render(result) {
  setWarnings(result.warnings);
  const grid = $("results");
  const cards = [];
  if (result.given) {
    cards.push(card(`data:image/png;base64,${result.given}`, `given: top ${result.keep_rows} rows`, null, result.prompt));
  }
  result.images.forEach((im, i) => {
    const score = im.score === null ? "" : `CLIP ${im.score.toFixed(3)}`;
    cards.push(card(`data:image/png;base64,${im.png}`, `#${i + 1} ${score}`, im.checker, result.prompt, result.checker_understands));
  });
  grid.replaceChildren(...cards);
  grid.dataset.seed = result.seed;
  $("seed").placeholder = `random (last: ${result.seed})`;
}

function card(src, title, checker, prompt, understood) {
  const fig = document.createElement("figure");
  fig.className = "card";
  const img = new Image();
  img.src = src;
  img.alt = `${prompt}: ${title}`;
  img.addEventListener("click", () => enlarge(src, `${prompt} — ${title}`));
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  if (checker) {
    const v = document.createElement("div");
    v.className = "verdict";
    v.append(tag("checker", checker.passed));
    for (const k of ["count", "color_shape", "size", "position", "relation"]) {
      if (checker[k] !== null && checker[k] !== undefined) v.append(tag(k, checker[k]));
    }
    cap.append(v);
  } else if (understood === false) {
    cap.append(document.createElement("br"), "checker: prompt not in its grammar");
  }
  fig.append(img, cap);
  return fig;
}

function enlarge(src, caption) {
  $("viewer-img").src = src;
  $("viewer-caption").textContent = caption;
  $("download").href = src;
  $("viewer").showModal();
}

function intOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

$("gen").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const m = currentModel();
  const caps = new Set(m ? m.capabilities : []);
  const n = intOrNull("n") ?? 1;
  const settings = settingsOf(m);
  const body = {
    prompt: $("prompt").value,
    model: $("model").value || null,
    n,
    candidates: caps.has("rerank") ? Math.max(n, intOrNull("candidates") ?? n) : null,
    seed: intOrNull("seed"),
  };
  // only the fields this model takes (a field it has no use for would be a 422)
  for (const field of ["guidance", "steps"]) {
    if (settings[field]) body[field] = intOrNull(field);
  }
  Object.assign(body, changedSettings());
  try {
    render(await run("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
  } catch (e) {
    setError(e.message);
  }
});

$("complete").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("image").files[0];
  if (!file) { setError("Choose an image first."); return; }
  if (limits.max_body_bytes && file.size > limits.max_body_bytes) {
    setError(`Too large: the image has ${file.size} bytes; the limit is ${limits.max_body_bytes}`);
    return;
  }
  const form = new FormData();
  form.append("image", file);
  form.append("prompt", $("prompt").value);
  form.append("keep_rows", $("keep_rows").value);
  form.append("model", $("model").value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  const m = currentModel();
  if (settingsOf(m).guidance && $("guidance").value !== "") form.append("guidance", $("guidance").value);
  try {
    render(await run("/api/complete", { method: "POST", body: form }));
  } catch (e) {
    setError(e.message);
  }
});

$("model").addEventListener("change", applyModel);
$("close").addEventListener("click", () => $("viewer").close());
$("viewer").addEventListener("click", (ev) => { if (ev.target === $("viewer")) $("viewer").close(); });
loadModels();
