// The genforge page. Plain JavaScript, no framework and no network beyond this server.
// Flow: GET v1/models -> one form per run built from its declared `options` -> POST v1/samples
// (text streams as server-sent events read with fetch + ReadableStream) -> show and offer a download.
// All URLs are relative, so the page also works behind a path prefix.
"use strict";

// Options with a dedicated field (or set by the page itself) are not repeated in the generic form.
const DEDICATED = new Set(["seed", "prompt", "class_label", "stream", "model", "init_image"]);  // init_image: media.js
const KEY_STORE = "genforge.apiKey";

const $ = (id) => document.getElementById(id);
const state = { models: [], model: null, lastRequest: null, lastSeed: null, downloadUrl: null, busy: false };

// ---- HTTP --------------------------------------------------------------------------------------

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The server's errors are {"error": {"message", "type", "param"}}; anything else (a proxy's HTML
// page, a dropped connection) still becomes one readable line.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return body.error.message;
    if (body && typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`.trim() + (text && text.length < 200 ? `: ${text}` : "");
}

async function getJSON(url) {
  const response = await fetch(url, { headers: headers(false) });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// ---- the form, built from a run's declared options ---------------------------------------------

function optionField(option) {
  const label = document.createElement("label");
  label.className = "option";
  label.title = option.help || "";
  const name = document.createElement("span");
  name.textContent = option.name;
  let input;
  if (Array.isArray(option.choices) && option.choices.length) {
    input = document.createElement("select");
    if (option.default === null || option.default === undefined) input.append(new Option("(default)", ""));
    for (const choice of option.choices) input.append(new Option(String(choice), String(choice)));
    if (option.default !== null && option.default !== undefined) input.value = String(option.default);
  } else if (option.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = option.default === true;
    label.classList.add("check");
  } else if (option.repeat || option.type === "array") {
    input = document.createElement("textarea");  // one value per line (e.g. stop strings)
    input.rows = 2;
    if (Array.isArray(option.default)) input.value = option.default.join("\n");
  } else {
    input = document.createElement("input");
    if (option.type === "integer" || option.type === "number") {
      input.type = "number";
      input.step = option.type === "integer" ? "1" : "any";
      if (option.minimum !== null && option.minimum !== undefined) input.min = option.minimum;
      if (option.maximum !== null && option.maximum !== undefined) input.max = option.maximum;
    } else {
      input.type = "text";
    }
    if (option.default !== null && option.default !== undefined) input.value = String(option.default);
    else input.placeholder = "default";
  }
  input.name = option.name;
  input.dataset.type = option.repeat ? "array" : option.type;
  label.append(name, input);
  if (option.help) {
    const help = document.createElement("small");
    help.textContent = option.help;
    label.append(help);
  }
  return label;
}

function showModel(model) {
  state.model = model;
  const sha = model.weights_sha256 ? model.weights_sha256.slice(0, 12) : "?";
  $("model-info").textContent =
    `${model.family} · ${model.modality} · ${model.dataset} · step ${model.step} · weights ${sha}`;
  $("prompt-row").hidden = !model.accepts_prompt;
  const classes = Array.isArray(model.classes) ? model.classes : [];
  $("class-row").hidden = classes.length === 0;
  const select = $("class-label");
  select.replaceChildren(new Option("(any)", ""));
  for (const c of classes) select.append(new Option(String(c), String(c)));
  showInitPicker(model);
  showCard(model);  // responsible.js
  const fieldset = $("options");
  fieldset.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Options" }));
  for (const option of model.options || []) {
    if (!DEDICATED.has(option.name)) fieldset.append(optionField(option));
  }
}

// One option's value from its field, or undefined to leave it to the server's default.
function fieldValue(input, option) {
  const type = input.dataset.type;
  if (input.type === "checkbox") {
    // Send a switch only when it differs from the default: an untouched form is the default request.
    return input.checked === (option.default === true) ? undefined : input.checked;
  }
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (type === "array") return raw.split("\n").filter((line) => line !== "");
  if (type === "integer") return Number.parseInt(raw, 10);
  if (type === "number") return Number.parseFloat(raw);
  const choice = (option.choices || []).find((c) => String(c) === raw);
  return choice !== undefined ? choice : raw;
}

function buildRequest() {
  const model = state.model;
  const body = { model: model.id };
  const byName = new Map((model.options || []).map((o) => [o.name, o]));
  for (const input of $("options").querySelectorAll("input, select, textarea")) {
    const value = fieldValue(input, byName.get(input.name) || {});
    if (value !== undefined) body[input.name] = value;
  }
  if (model.accepts_prompt && $("prompt").value !== "") body.prompt = $("prompt").value;
  if (!$("class-row").hidden && $("class-label").value !== "") body.class_label = $("class-label").value;
  if (!$("init-row").hidden && media.initImage) body.init_image = media.initImage;
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number.parseInt(seed, 10);
  if (model.modality === "text") body.stream = true;
  return body;
}

// ---- generating and showing results -------------------------------------------------------------

function setBusy(busy) {
  state.busy = busy;
  $("generate").disabled = busy;
  $("again").disabled = busy || state.lastRequest === null;
}

function setDownload(blob, filename) {
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
  state.downloadUrl = blob ? URL.createObjectURL(blob) : null;
  const link = $("download");
  link.hidden = !blob;
  if (blob) {
    link.href = state.downloadUrl;
    link.download = filename;
    link.textContent = `Download ${filename}`;
  }
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function describe(result) {
  const sha = result.identity && result.identity.weights_sha256 ? result.identity.weights_sha256.slice(0, 12) : "?";
  return `seed ${result.seed} · ${result.model} · weights ${sha}`;
}

// The options the server actually used (its defaults filled in), e.g. "num_samples=4 · temperature=0.8".
function resolvedOptions(options) {
  return Object.entries(options || {}).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? JSON.stringify(v) : v}`).join(" · ");
}

function showImages(result) {
  const out = $("output");
  const grid = document.createElement("img");
  grid.className = "grid";
  grid.alt = `samples from ${result.model}, seed ${result.seed}`;
  grid.src = "data:image/png;base64," + result.grid_png;
  out.replaceChildren(grid);
  setDownload(pngBlob(result.grid_png), `${result.model}-seed${result.seed}.png`);
}

function showMolecules(result) {
  const out = $("output");
  const list = document.createElement("div");
  list.className = "molecules";
  result.smiles.forEach((smiles, i) => {
    const card = document.createElement("figure");
    const svg = result.svg && result.svg[i];
    if (svg) {
      // As an <img>, an SVG from the server can never run script in this page.
      const img = document.createElement("img");
      img.alt = smiles;
      img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg);
      card.append(img);
    }
    const caption = document.createElement("figcaption");
    caption.textContent = smiles + (result.valid && result.valid[i] === false ? " (invalid)" : "");
    if (result.valid && result.valid[i] === false) card.classList.add("invalid");
    card.append(caption);
    list.append(card);
  });
  out.replaceChildren(list);
  const kept = result.smiles.filter((s) => typeof s === "string");  // blocked ones are {blocked, reason}
  setDownload(new Blob([kept.join("\n") + "\n"], { type: "text/plain" }),
    `${result.model}-seed${result.seed}.smi`);
}

function showTextDownload(boxes, result) {
  const text = boxes.map((b) => b.parentElement.textContent).join("\n\n") + "\n";
  setDownload(new Blob([text], { type: "text/plain" }), `${result.model}-seed${result.seed}.txt`);
}

// Reads `data: ...` server-sent events from a fetch body (EventSource cannot POST or send a
// bearer header). Events are separated by a blank line; tokens go to their sample's box as they
// arrive. Returns the final {"done": true, ...} event.
async function readStream(response, boxes, prompt) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let done = null;
  const box = (i) => {
    while (boxes.length <= i) boxes.push(...addTextBoxes(1, prompt));
    return boxes[i];
  };
  for (;;) {
    const { value, done: finished } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    if (finished) buffer += decoder.decode();
    buffer = buffer.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data === "" || data === "[DONE]") continue;
      const message = JSON.parse(data);
      if (message.error) throw new Error(message.error.message || "generation failed");
      if (message.done) done = message;
      else if (typeof message.token === "string") box(message.index || 0).textContent += message.token;
    }
    if (finished) break;
  }
  if (!done) throw new Error("the stream ended before the server said it was done");
  return done;
}

// n more sample boxes under the output: each shows the prompt it continues (dimmed), then the
// generated text, to which streamed tokens are appended.
function addTextBoxes(n, prompt) {
  const out = $("output");
  const made = [];
  for (let i = 0; i < n; i++) {
    const pre = document.createElement("pre");
    pre.className = "sample";
    pre.dataset.index = String(out.children.length);
    const head = document.createElement("span");
    head.className = "prompt";
    head.textContent = prompt || "";
    const body = document.createElement("span");
    body.className = "generated";
    pre.append(head, body);
    out.append(pre);
    made.push(body);
  }
  return made;
}

async function generate(body) {
  if (state.busy) return;
  showError("");
  setBusy(true);
  setDownload(null);
  $("status").textContent = "generating…";
  $("resolved").textContent = "";
  showResponsible(null);
  try {
    const response = await fetch("v1/samples", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorMessage(response));
    let result;
    if (body.stream) {
      // Each sample's box starts with its prompt, so the text reads as the model continued it.
      $("output").replaceChildren();
      const boxes = addTextBoxes(Math.max(1, body.num_samples || 1), body.prompt);
      const done = await readStream(response, boxes, body.prompt);
      result = { model: body.model, ...done };
      showTextDownload(boxes, result);
    } else {
      result = await response.json();
      if (result.grid_png) showImages(result);
      else if (result.smiles) showMolecules(result);
      else if (result.midi) showMusic(result);
      else if (result.text) {
        $("output").replaceChildren();
        const boxes = result.text.map((t, i) => {
          const [box] = addTextBoxes(1, (result.prompts && result.prompts[i]) || "");
          box.textContent = t;
          return box;
        });
        showTextDownload(boxes, result);
      }
    }
    state.lastRequest = body;
    state.lastSeed = result.seed;
    $("status").textContent = describe(result);
    $("resolved").textContent = resolvedOptions(result.options);
    showResponsible(result);  // watermark, blocked samples, provenance (responsible.js)
  } catch (err) {
    $("status").textContent = "";
    showError(err.message || String(err));
  } finally {
    setBusy(false);
  }
}

function selectTab(name) {
  for (const tab of ["generate", "report"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`panel-${tab}`).hidden = tab !== name;
  }
  if (name === "report") showReport($("report"), state.models, headers(false));
}

// ---- start --------------------------------------------------------------------------------------

async function loadModels() {
  showError("");
  try {
    const list = await getJSON("v1/models");
    state.models = list.data || [];
  } catch (err) {
    showError(`Could not list the models: ${err.message}`);
    return;
  }
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.map((m) => new Option(`${m.id} (${m.family}, ${m.modality})`, m.id)));
  if (state.models.some((m) => m.id === previous)) select.value = previous;
  const chosen = state.models.find((m) => m.id === select.value) || state.models[0];
  // Reloading the list keeps what the user typed into the form when their model is unchanged.
  if (chosen && JSON.stringify(chosen) !== JSON.stringify(state.model)) showModel(chosen);
}

function start() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    const value = key.value.trim();
    if (value === (sessionStorage.getItem(KEY_STORE) || "")) return;  // a blur with no new key
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();  // a key entered after a 401 lists the models now
  });
  $("model").addEventListener("change", () => {
    showModel(state.models.find((m) => m.id === $("model").value));
  });
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.model) return;
    if (!$("form").reportValidity()) return;
    media.ready.then(() => generate(buildRequest()));  // a file just picked is read first
  });
  $("again").addEventListener("click", () => {
    if (state.lastRequest) generate({ ...state.lastRequest, seed: state.lastSeed });
  });
  $("tab-generate").addEventListener("click", () => selectTab("generate"));
  $("tab-report").addEventListener("click", () => selectTab("report"));
  loadModels();
}

start();
