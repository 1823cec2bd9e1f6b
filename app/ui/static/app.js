/* ICH expansion page: choose or drop a study, upload it to /v1/predictions, follow the analysis, then show the
   result (result.js) and the slices (viewer.js). No dependencies, no build step; talks to its own origin only. */
"use strict";

import { apiFetch, apiKey, poll, post, readJson, setApiKey } from "./api.js";
import { showProblem, showResult } from "./result.js";
import { initViewer, loadViewer, resetViewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const state = { files: [], result: null, overviewUrl: null, timer: null };

async function checkServer() {
  const out = $("server-state");
  try {
    const ready = await fetch("/health/ready", { cache: "no-store" });
    const body = await readJson(ready);
    if (!ready.ok) {
      out.textContent = "The service is not ready: " + ((body && (body.detail || body.status)) || ready.status);
      return;
    }
    const model = await apiFetch("/v1/model", { cache: "no-store" });
    if (model.status === 401) {
      out.textContent = "The service is ready and needs an API key: enter it below.";
      return;
    }
    const info = await readJson(model);
    const name = info && (info.name || (info.manifest && info.manifest.name));
    const version = info && (info.version || (info.manifest && info.manifest.version));
    out.textContent = "The service is ready" + (name ? " (model " + name + (version ? " " + version : "") + ")." : ".");
  } catch (_) {
    out.textContent = "The service cannot be reached.";
  }
}

// --- choosing files ------------------------------------------------------------------------------------
function humanBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}
function setFiles(files) {
  state.files = files.filter((f) => f && f.size > 0);
  const total = state.files.reduce((sum, f) => sum + f.size, 0);
  $("selection").textContent = state.files.length
    ? state.files.length + (state.files.length === 1 ? " file" : " files") + " chosen (" + humanBytes(total) + ")."
    : "No files chosen.";
  $("analyse").disabled = state.files.length === 0;
}
function fileFromEntry(entry) { return new Promise((resolve, reject) => entry.file(resolve, reject)); }
function readBatch(reader) { return new Promise((resolve, reject) => reader.readEntries(resolve, reject)); }
async function walkEntry(entry, out) {
  if (entry.isFile) {
    out.push(await fileFromEntry(entry));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await readBatch(reader);  // readEntries answers in batches until an empty one
      if (!batch.length) break;
      for (const child of batch) await walkEntry(child, out);
    }
  }
}
async function droppedFiles(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .filter((item) => item.kind === "file" && item.webkitGetAsEntry)
    .map((item) => item.webkitGetAsEntry())  // must be taken before the first await
    .filter(Boolean);
  if (!entries.length) return Array.from(dataTransfer.files || []);
  const out = [];
  for (const entry of entries) await walkEntry(entry, out);
  return out;
}

// --- progress and messages -----------------------------------------------------------------------------
function setProgress(label, percent) {
  $("progress-box").hidden = false;
  $("progress-label").textContent = label;
  const bar = $("progress");
  if (percent === null) {
    bar.removeAttribute("value");  // indeterminate
  } else {
    bar.value = Math.max(0, Math.min(100, percent));
  }
}
function setStatus(text) { $("status").textContent = text; }
function startTimer(prefix) {
  stopTimer();
  const t0 = Date.now();
  const tick = () => setStatus(prefix() + " " + Math.round((Date.now() - t0) / 1000) + " s");
  tick();
  state.timer = setInterval(tick, 1000);
}
function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function analyse(event) {
  event.preventDefault();
  if (!state.files.length) return;
  resetResults();
  $("analyse").disabled = true;
  try {
    setStatus("Uploading " + state.files.length + (state.files.length === 1 ? " file…" : " files…"));
    let answer = await post(state.files, $("onset").value.trim(), {
      upload: (pct) => setProgress("Uploading " + Math.round(pct) + " %", pct),
      uploaded: () => {
        setProgress("Analysing", null);
        startTimer(() => "Analysing the study…");
      },
    });
    if (answer.status === 202 && answer.location) {  // an asynchronous job: follow it
      startTimer(() => "Analysing the study (queued)…");
      answer = await poll(answer.location, answer.retryAfter,
        (phase) => startTimer(() => "Analysing the study (" + phase + ")…"));
    }
    stopTimer();
    $("progress-box").hidden = true;
    if (answer.status === 200 && answer.body && answer.body.expansion) {
      setStatus("Analysis finished.");
      await display(answer.body);
    } else {
      setStatus("The upload was refused.");
      showProblem(answer.body, answer.status);
    }
  } finally {
    stopTimer();
    $("analyse").disabled = state.files.length === 0;
  }
}

/* Show a result document: the numbers, then the slices. */
async function display(doc) {
  state.result = doc;
  showResult(doc);
  await loadViewer(doc);
}

async function loadOverview() {
  if (!state.result || state.overviewUrl || !$("overview-image").closest("details").open) return;
  const response = await apiFetch(state.result.links.overlay_png);
  if (!response.ok) return;
  state.overviewUrl = URL.createObjectURL(await response.blob());
  $("overview-image").src = state.overviewUrl;
}

function resetResults() {
  $("problem").hidden = true;
  $("results").hidden = true;
  resetViewer();
  if (state.overviewUrl) URL.revokeObjectURL(state.overviewUrl);
  state.overviewUrl = null;
  $("overview-image").removeAttribute("src");
  state.result = null;
}

// --- wiring --------------------------------------------------------------------------------------------
function init() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    checkServer();
  });
  $("key-forget").addEventListener("click", () => {
    setApiKey("");
    $("api-key").value = "";
    checkServer();
  });
  $("file-input").addEventListener("change", (event) => setFiles(Array.from(event.target.files)));
  $("folder-input").addEventListener("change", (event) => setFiles(Array.from(event.target.files)));
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragover"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("dragover");
    setFiles(await droppedFiles(event.dataTransfer));
  });
  zone.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target === zone) {
      event.preventDefault();
      $("file-input").click();
    }
  });
  // a file dropped outside the zone must not replace the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("upload-form").addEventListener("submit", analyse);

  initViewer();
  $("overview-image").closest("details").addEventListener("toggle", loadOverview);
  checkServer();
}

// for the browser tests and the console: render a result document that is already at hand
window.ichPage = Object.freeze({ showResult: display });

init();  // a module runs after the document is parsed
