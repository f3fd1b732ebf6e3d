// tessera serve: the page. No framework, no external URL: talks to this server only.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let limits = {};
// capability (/healthz) -> the page's panel for it
const PANELS = {
  variations: "variations-panel",
  interpolation: "interpolate-panel",
  text_diff: "textdiff-panel",
  inpainting: "inpaint-panel",
};

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
  for (const b of document.querySelectorAll("button[type=submit]")) b.disabled = busy;
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
  // unCLIP's manipulations: a panel per capability the model lists
  for (const [cap, panel] of Object.entries(PANELS)) show($(panel), caps.has(cap));
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
    for (const id of ["interpolate-frames", "textdiff-frames"]) $(id).max = limits.max_n;
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

// Every answer: `images` (each maybe with a `label`), and what the model was given first
// (`given` for a completion; `inputs` for the manipulations); `layout` "strip" for frames.
function render(result) {
  setWarnings(result.warnings);
  const grid = $("results");
  const kind = result.kind || "generate";
  const what = result.prompt || kind.replace("_", " ");
  const cards = [];
  if (result.given) {
    cards.push(card(`data:image/png;base64,${result.given}`, `given: top ${result.keep_rows} rows`, null, what, undefined, true));
  }
  for (const im of result.inputs || []) {
    cards.push(card(`data:image/png;base64,${im.png}`, im.label, null, what, undefined, true));
  }
  result.images.forEach((im, i) => {
    const score = im.score === null || im.score === undefined ? "" : `CLIP ${im.score.toFixed(3)}`;
    const title = `${im.label || `#${i + 1}`} ${score}`.trim();
    cards.push(card(`data:image/png;base64,${im.png}`, title, im.checker, what, result.checker_understands));
  });
  grid.replaceChildren(...cards);
  grid.classList.toggle("strip", result.layout === "strip");
  grid.dataset.kind = kind;
  grid.dataset.seed = result.seed;
  $("seed").placeholder = `random (last: ${result.seed})`;
}

function card(src, title, checker, prompt, understood, given) {
  const fig = document.createElement("figure");
  fig.className = given ? "card given" : "card";
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
  const name = caption.replace(/[^A-Za-z0-9=.]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  $("download").download = `tessera-${name || "image"}.png`;
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

// The uploads' files, checked against the body limit here (the server checks again).
function chosenFiles(ids) {
  const files = ids.map((id) => $(id).files[0]);
  if (files.some((f) => !f)) { setError(`Choose ${ids.length > 1 ? "both images" : "an image"} first.`); return null; }
  const size = files.reduce((sum, f) => sum + f.size, 0);
  if (limits.max_body_bytes && size > limits.max_body_bytes) {
    setError(`Too large: the ${ids.length > 1 ? "images have" : "image has"} ${size} bytes; the limit is ${limits.max_body_bytes}`);
    return null;
  }
  return files;
}

// The shared fields of the form above, those the route takes: model, seed and the generic
// steps / guidance the model has (only sent when set).
function sharedFields(form, { n = false, steps = false, guidance = false } = {}) {
  const settings = settingsOf(currentModel());
  form.append("model", $("model").value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  if (n) form.append("n", $("n").value || "1");
  if (steps && settings.steps && $("steps").value !== "") form.append("steps", $("steps").value);
  if (guidance && settings.guidance && $("guidance").value !== "") form.append("guidance", $("guidance").value);
  return form;
}

async function post(url, form) {
  try {
    render(await run(url, { method: "POST", body: form }));
  } catch (e) {
    setError(e.message);
  }
}

$("complete").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = chosenFiles(["image"]);
  if (!files) return;
  const form = new FormData();
  form.append("image", files[0]);
  form.append("prompt", $("prompt").value);
  form.append("keep_rows", $("keep_rows").value);
  await post("/api/complete", sharedFields(form, { n: true, guidance: true }));
});

$("variations").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = chosenFiles(["variations-image"]);
  if (!files) return;
  const form = new FormData();
  form.append("image", files[0]);
  await post("/api/variations", sharedFields(form, { n: true, steps: true, guidance: true }));
});

$("interpolate").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = chosenFiles(["interpolate-a", "interpolate-b"]);
  if (!files) return;
  const form = new FormData();
  form.append("image_a", files[0]);
  form.append("image_b", files[1]);
  form.append("frames", $("interpolate-frames").value);
  await post("/api/interpolate", sharedFields(form, { steps: true }));
});

$("textdiff").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = chosenFiles(["textdiff-image"]);
  if (!files) return;
  const form = new FormData();
  form.append("image", files[0]);
  form.append("from_caption", $("from-caption").value);
  form.append("to_caption", $("to-caption").value);
  form.append("frames", $("textdiff-frames").value);
  form.append("max_theta", $("max-theta").value);
  await post("/api/textdiff", sharedFields(form, { steps: true }));
});

// -- the inpainting mask ---------------------------------------------------------------------
// The mask lives in `mask.bits` (one byte per pixel of the image as displayed: 1 = repaint),
// painted by stamping whole pixels inside a round brush, so it is exactly binary (a canvas
// path would be anti-aliased). It is drawn over the image in red; what the server crops away
// (outside the centred square) is dimmed. Sent as a black/white PNG at the displayed size.
const MASK_ROOM = 384; // the largest side shown, in CSS pixels
const mask = { w: 0, h: 0, bits: null, last: null };

function maskReset() {
  mask.bits = null;
  mask.w = mask.h = 0;
  show($("mask-box"), false);
}

function maskLoad(file) {
  maskReset();
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    URL.revokeObjectURL(url);
    const room = Math.min($("inpaint").clientWidth || MASK_ROOM, MASK_ROOM);
    const scale = Math.min(room / img.naturalWidth, MASK_ROOM / img.naturalHeight);
    mask.w = Math.max(1, Math.round(img.naturalWidth * scale));
    mask.h = Math.max(1, Math.round(img.naturalHeight * scale));
    mask.bits = new Uint8Array(mask.w * mask.h);
    for (const id of ["mask-image", "mask-paint"]) {
      $(id).width = mask.w;
      $(id).height = mask.h;
    }
    $("mask-box").style.width = `${mask.w}px`;
    $("mask-box").style.aspectRatio = `${mask.w} / ${mask.h}`;
    const ctx = $("mask-image").getContext("2d");
    ctx.imageSmoothingEnabled = scale < 1;
    ctx.drawImage(img, 0, 0, mask.w, mask.h);
    show($("mask-box"), true);
    maskDraw();
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    setError("Bad input: this file is not an image the page can show; choose a PNG, JPEG, WebP, GIF or BMP.");
  };
  img.src = url;
}

function maskDraw() {
  const { w, h, bits } = mask;
  const side = Math.min(w, h);
  const left = Math.floor((w - side) / 2), top = Math.floor((h - side) / 2);
  const data = new ImageData(w, h);
  const px = data.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, o = 4 * i;
      if (bits[i]) { px[o] = 255; px[o + 1] = 30; px[o + 2] = 90; px[o + 3] = 160; }
      else if (x < left || x >= left + side || y < top || y >= top + side) { px[o + 3] = 130; }
    }
  }
  $("mask-paint").getContext("2d").putImageData(data, 0, 0);
  $("mask-paint").dataset.painted = String(bits.reduce((a, b) => a + b, 0));
}

// Every pixel whose centre lies within the brush's radius of (cx, cy) is set to `value`.
function stamp(cx, cy, value) {
  const r = Number($("brush-size").value) / 2;
  const { w, h, bits } = mask;
  for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(h - 1, Math.ceil(cy + r)); y++) {
    for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(w - 1, Math.ceil(cx + r)); x++) {
      const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      if (dx * dx + dy * dy <= r * r) bits[y * w + x] = value;
    }
  }
}

function maskPoint(ev) {
  const rect = $("mask-paint").getBoundingClientRect();
  return [(ev.clientX - rect.left) * (mask.w / rect.width), (ev.clientY - rect.top) * (mask.h / rect.height)];
}

function maskStroke(ev) {
  const value = $("tool-eraser").checked ? 0 : 1;
  const [x, y] = maskPoint(ev);
  const [x0, y0] = mask.last || [x, y];
  const step = Math.max(1, Number($("brush-size").value) / 4);
  const n = Math.max(1, Math.ceil(Math.hypot(x - x0, y - y0) / step));
  for (let i = 1; i <= n; i++) stamp(x0 + ((x - x0) * i) / n, y0 + ((y - y0) * i) / n, value);
  mask.last = [x, y];
  maskDraw();
}

function maskPng() {
  const canvas = document.createElement("canvas");
  canvas.width = mask.w;
  canvas.height = mask.h;
  const data = new ImageData(mask.w, mask.h);
  mask.bits.forEach((b, i) => {
    const v = b ? 255 : 0;
    data.data.set([v, v, v, 255], 4 * i);
  });
  canvas.getContext("2d").putImageData(data, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

$("inpaint-image").addEventListener("change", () => { setError(""); maskLoad($("inpaint-image").files[0]); });
$("mask-paint").addEventListener("pointerdown", (ev) => {
  if (!mask.bits) return;
  ev.preventDefault();
  $("mask-paint").setPointerCapture(ev.pointerId);
  mask.last = null;
  maskStroke(ev);
});
$("mask-paint").addEventListener("pointermove", (ev) => { if (mask.last && mask.bits) maskStroke(ev); });
for (const type of ["pointerup", "pointercancel"]) {
  $("mask-paint").addEventListener(type, () => { mask.last = null; });
}
$("mask-clear").addEventListener("click", () => { if (mask.bits) { mask.bits.fill(0); maskDraw(); } });

$("inpaint").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = chosenFiles(["inpaint-image"]);
  if (!files) return;
  if (!mask.bits) { setError("Bad input: the image could not be shown, so no mask can be painted."); return; }
  const form = new FormData();
  form.append("image", files[0]);
  form.append("mask", await maskPng(), "mask.png");
  form.append("prompt", $("prompt").value);
  await post("/api/inpaint", sharedFields(form, { n: true, steps: true, guidance: true }));
});

$("model").addEventListener("change", applyModel);
$("close").addEventListener("click", () => $("viewer").close());
$("viewer").addEventListener("click", (ev) => { if (ev.target === $("viewer")) $("viewer").close(); });
loadModels();
