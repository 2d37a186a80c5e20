// lumen-audio web page: plain browser JavaScript, no build step, no third-party code.
// It calls the public API only: GET /models, POST /model/predict?timeline=true, POST /model/test-directory.
"use strict";

const NAMES = {
  cel: "cello", cla: "clarinet", flu: "flute", gac: "acoustic guitar", gel: "electric guitar",
  org: "organ", pia: "piano", sax: "saxophone", tru: "trumpet", vio: "violin", voi: "voice",
};
const METRICS = [
  ["n_files", "files"], ["f1_micro", "F1 micro"], ["f1_macro", "F1 macro"],
  ["precision_micro", "precision micro"], ["precision_macro", "precision macro"],
  ["recall_micro", "recall micro"], ["recall_macro", "recall macro"], ["accuracy", "accuracy"],
  ["exact_match", "exact match"], ["hamming_distance", "hamming distance"], ["lrap", "LRAP"], ["top1", "top-1"],
  ["map", "mAP"], ["roc_auc_macro", "ROC AUC macro"],
];

const $ = (id) => document.getElementById(id);
let models = [];
let chosenFiles = [];
let recorder = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const name = (code) => NAMES[code] || code;
const pct = (p) => `${(100 * p).toFixed(1)}%`;
const fmt = (v, integer = false) => (v === null || v === undefined ? "–" : integer ? String(v) : v.toFixed(3));

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    const detail = body && (body.detail || body.error);
    throw new Error(`HTTP ${response.status}: ${detail || text || response.statusText}`);
  }
  return body;
}

// ---- models ---------------------------------------------------------------------------------------------

function currentModel() {
  return models.find((m) => m.id === $("model").value);
}

function showModelInfo() {
  const model = currentModel();
  const info = $("model-info");
  if (!model) { info.textContent = "No model is available."; return; }
  if (!model.loaded && model.error) { info.textContent = `Not loaded: ${model.error}`; return; }
  if (!model.loaded) { info.textContent = "Loads on first use."; return; }
  info.textContent = `${model.architecture || "model"} · ${model.sample_rate} Hz · windows of ` +
    `${model.window_seconds} s every ${model.hop_seconds} s · ${model.aggregation} over windows · ` +
    `${model.labels.length} instruments`;
}

async function loadModels() {
  const select = $("model");
  try {
    models = await api("/models");
  } catch (error) {
    $("model-info").textContent = `Cannot list models: ${error.message}`;
    return;
  }
  select.replaceChildren();
  for (const model of models) {
    const option = el("option", { value: model.id, text: model.error ? `${model.id} (failed to load)` : model.id });
    if (model.error) option.disabled = true;
    select.append(option);
  }
  const usable = models.find((m) => !m.error);
  if (usable) select.value = usable.id;
  showModelInfo();
}

// ---- choosing, dropping and recording files -------------------------------------------------------------

function setFiles(files) {
  chosenFiles = Array.from(files);
  $("chosen").textContent = chosenFiles.length
    ? `${chosenFiles.length} file(s): ${chosenFiles.map((f) => f.name).join(", ")}`
    : "No file chosen.";
}

function setUpDropzone() {
  const zone = $("dropzone");
  $("files").addEventListener("change", (event) => setFiles(event.target.files));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) setFiles(event.dataTransfer.files);
  });
}

// 16-bit PCM WAV from Float32 chunks: every browser can capture raw samples, while MediaRecorder's
// formats (webm/opus) are not among what the server decodes.
function encodeWav(chunks, sampleRate) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const buffer = new ArrayBuffer(44 + 2 * length);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true); view.setUint32(28, 2 * sampleRate, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++, offset += 2) {
      const s = Math.max(-1, Math.min(1, chunk[i]));
      view.setInt16(offset, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
  }
  return new Blob([buffer], { type: "audio/wav" });
}

async function toggleRecording() {
  const button = $("record");
  const status = $("record-status");
  if (recorder) {
    const { stream, context, processor, chunks } = recorder;
    recorder = null;
    processor.onaudioprocess = null;
    processor.disconnect();
    stream.getTracks().forEach((t) => t.stop());
    await context.close();
    const blob = encodeWav(chunks, context.sampleRate);
    setFiles([new File([blob], `recording-${new Date().toISOString().slice(11, 19).replace(/:/g, "")}.wav`,
      { type: "audio/wav" })]);
    button.textContent = "● Record from microphone";
    button.setAttribute("aria-pressed", "false");
    status.textContent = `Recorded ${(blob.size / 2 / context.sampleRate).toFixed(1)} s; press Classify.`;
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const context = new AudioContext();
    const source = context.createMediaStreamSource(stream);
    const processor = context.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    let captured = 0;
    processor.onaudioprocess = (event) => {
      const samples = event.inputBuffer.getChannelData(0);
      chunks.push(new Float32Array(samples));
      captured += samples.length;
      status.textContent = `Recording… ${(captured / context.sampleRate).toFixed(1)} s`;
    };
    source.connect(processor);
    processor.connect(context.destination);
    recorder = { stream, context, processor, chunks };
    button.textContent = "■ Stop recording";
    button.setAttribute("aria-pressed", "true");
    status.textContent = "Recording…";
  } catch (error) {
    status.textContent = `Microphone unavailable: ${error.message}`;
  }
}

function setUpRecorder() {
  const button = $("record");
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.AudioContext)) {
    button.disabled = true;
    $("record-status").textContent = "Recording needs a browser with microphone access over https or on localhost.";
    return;
  }
  button.addEventListener("click", toggleRecording);
}

// ---- prediction results ----------------------------------------------------------------------------------

function bars(labels, probabilities, thresholds, predicted) {
  const list = el("ul", { class: "bars" });
  labels.forEach((code, i) => {
    const p = probabilities[code];
    const t = thresholds[i];
    const on = predicted ? predicted[code] === 1 : p >= t;
    const track = el("span", { class: "track" },
      el("span", { class: "fill", style: { width: pct(p) } }),
      el("span", { class: "threshold", style: { left: pct(t) }, title: `threshold ${t.toFixed(2)}` }));
    list.append(el("li", {
      class: on ? "bar on" : "bar", "data-code": code,
      "aria-label": `${name(code)}: ${pct(p)}, threshold ${pct(t)}${on ? ", predicted" : ""}`,
    }, el("span", { class: "code", text: code }), el("span", { class: "name", text: name(code) }), track,
    el("span", { class: "value", text: pct(p) })));
  });
  return list;
}

function heatmap(labels, windows) {
  const table = el("table", { class: "heatmap" });
  table.append(el("caption", { text: "Timeline: probability per window (darker = more likely)" }));
  const head = el("tr", {}, el("th", { scope: "col", text: "instrument" }));
  for (const w of windows) head.append(el("th", { scope: "col", text: `${w.start.toFixed(1)}s` }));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const code of labels) {
    const row = el("tr", {}, el("th", { scope: "row", text: code, title: name(code) }));
    for (const w of windows) {
      const p = w.probabilities[code];
      row.append(el("td", {
        style: { background: `rgba(29, 53, 87, ${p.toFixed(3)})`, color: p > 0.5 ? "#fff" : "#1d3557" },
        title: `${name(code)} ${w.start}–${w.end} s: ${pct(p)}`, text: (100 * p).toFixed(0),
      }));
    }
    body.append(row);
  }
  table.append(body);
  return el("div", { class: "heatmap-wrap", tabindex: "0", role: "region", "aria-label": "timeline heat-map" }, table);
}

function renderPredictions(response, thresholds) {
  const results = $("results");
  results.replaceChildren();
  const model = currentModel();
  const labels = model.labels;
  results.append(el("p", { class: "muted legend" }, "Bars: probability per instrument;",
    el("span", { class: "mark", "aria-hidden": "true" }), "its threshold; green: predicted."));
  for (const [file, error] of Object.entries(response.errors || {})) {
    results.append(el("article", { class: "result error", "data-file": file, role: "alert" },
      el("h3", { text: file }), el("p", { class: "error-text", text: `Error: ${error}` })));
  }
  for (const [file, predicted] of Object.entries(response.predictions)) {
    const probs = response.probabilities[file];
    const found = labels.filter((code) => predicted[code] === 1);
    const chips = el("ul", { class: "labels", "aria-label": "predicted instruments" });
    for (const code of found) chips.append(el("li", { class: "chip", "data-code": code, text: `${name(code)} (${code})` }));
    if (!found.length) chips.append(el("li", { class: "chip none", text: "no instrument above its threshold" }));
    const card = el("article", { class: "result", "data-file": file },
      el("h3", { text: file }), chips, bars(labels, probs, thresholds, predicted));
    const windows = response.timeline && response.timeline[file];
    if (windows && windows.length > 1) card.append(heatmap(labels, windows));
    results.append(card);
  }
}

async function classify(event) {
  event.preventDefault();
  const status = $("predict-status");
  const model = currentModel();
  if (!model) { status.textContent = "Pick a model first."; return; }
  if (!chosenFiles.length) { status.textContent = "Choose, drop or record at least one audio file."; $("files").focus(); return; }
  const params = new URLSearchParams({ model: model.id, timeline: "true" });
  const override = $("threshold").value.trim();
  if (override !== "") params.set("threshold", override);
  const form = new FormData();
  for (const file of chosenFiles) form.append("files", file, file.name);
  status.textContent = `Classifying ${chosenFiles.length} file(s)…`;
  $("classify").disabled = true;
  try {
    const response = await api(`/model/predict?${params}`, { method: "POST", body: form });
    if (!model.loaded) await loadModels();  // a lazy model has its labels and thresholds now
    const current = currentModel();
    const thresholds = override !== "" ? current.labels.map(() => Number(override)) : current.thresholds;
    renderPredictions(response, thresholds);
    const nErrors = Object.keys(response.errors || {}).length;
    status.textContent = `Done: ${Object.keys(response.predictions).length} file(s) classified` +
      (nErrors ? `, ${nErrors} with errors.` : ".");
  } catch (error) {
    $("results").replaceChildren(el("p", { class: "result error", role: "alert", text: error.message }));
    status.textContent = "Request failed.";
  } finally {
    $("classify").disabled = false;
  }
}

// ---- dataset scoring ---------------------------------------------------------------------------------------

function renderScore(response) {
  const out = $("score-results");
  out.replaceChildren();
  const metrics = response.metrics;
  if (!metrics) {
    out.append(el("p", { class: "result error", role: "alert", text: "No file could be scored." }));
  } else {
    const table = el("table", { class: "metrics", id: "metrics-table" }, el("caption", { text: "File-level metrics" }));
    const body = el("tbody");
    for (const [key, label] of METRICS) {
      body.append(el("tr", { "data-metric": key }, el("th", { scope: "row", text: label }), el("td", { text: fmt(metrics[key], key === "n_files") })));
    }
    table.append(body);
    out.append(table);
  }
  const perInstrument = response.instrument_metrics;
  if (perInstrument) {
    const table = el("table", { class: "instruments" }, el("caption", { text: "Per instrument (bar: F1)" }));
    table.append(el("thead", {}, el("tr", {}, ...["instrument", "F1", "precision", "recall", "support"]
      .map((h) => el("th", { scope: "col", text: h })))));
    const body = el("tbody");
    for (const [code, m] of Object.entries(perInstrument)) {
      const f1 = m.f1 || 0;
      body.append(el("tr", { "data-code": code },
        el("th", { scope: "row", text: `${name(code)} (${code})` }),
        el("td", {}, el("span", { class: "track small" }, el("span", { class: "fill", style: { width: pct(f1) } })),
          el("span", { class: "value", text: fmt(m.f1) })),
        el("td", { text: fmt(m.precision) }), el("td", { text: fmt(m.recall) }), el("td", { text: fmt(m.support, true) })));
    }
    table.append(body);
    out.append(table);
  }
  const errors = Object.entries(response.errors || {});
  if (errors.length) {
    const list = el("ul", { class: "errors", role: "alert" });
    for (const [file, error] of errors) list.append(el("li", { text: `${file}: ${error}` }));
    out.append(el("h3", { text: `${errors.length} file(s) could not be scored` }), list);
  }
}

async function score(event) {
  event.preventDefault();
  const status = $("score-status");
  const model = currentModel();
  if (!model) { status.textContent = "Pick a model first."; return; }
  const body = {
    model: model.id,
    datasets: [{ dataset_type: $("dataset-type").value, dataset_path: $("dataset-path").value.trim() }],
    add_instrument_metrics: true,
  };
  status.textContent = "Scoring…";
  $("score").disabled = true;
  try {
    const response = await api("/model/test-directory", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    renderScore(response);
    status.textContent = `Done: ${response.metrics ? response.metrics.n_files : 0} file(s) scored.`;
  } catch (error) {
    $("score-results").replaceChildren(el("p", { class: "result error", role: "alert", text: error.message }));
    status.textContent = "Request failed.";
  } finally {
    $("score").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", showModelInfo);
  $("predict-form").addEventListener("submit", classify);
  $("score-form").addEventListener("submit", score);
  setUpDropzone();
  setUpRecorder();
  loadModels();
});
