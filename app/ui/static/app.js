/* ICH expansion page: upload a study to /v1/predictions, show the result document and an axial slice viewer.
   No dependencies, no build step; talks to its own origin only. The API key lives in sessionStorage. */
"use strict";

(function () {
  const KEY_STORAGE = "ich-api-key";
  const SLICE_CACHE_MAX = 96;
  const $ = (id) => document.getElementById(id);

  const LINK_NAMES = {
    mask_nifti: "Haematoma mask (NIfTI)",
    seg_dicom: "DICOM SEG (segmentation)",
    sr_dicom: "DICOM SR (measurement report)",
    sr: "DICOM SR (measurement report)",
    summary_dicom: "Summary series (DICOM)",
    summary: "Summary series (DICOM)",
    overlay_png: "Overview image (PNG)",
  };
  const DIRECTION_NAMES = { R: "right", L: "left", A: "anterior", P: "posterior", S: "superior", I: "inferior" };
  const WINDOW_NAMES = { brain: "brain", blood: "blood", bone: "bone" };
  // What a person can do about each refusal (the service's own sentence is shown above it).
  const HINTS = {
    not_dicom: "None of the files is a DICOM image or a NIfTI volume. Upload the CT series itself (DICOM files, a folder or a ZIP of them).",
    no_image_series: "The DICOM files hold no image series that can be analysed (for example only reports or dose sheets).",
    not_ct: "The images are not CT. Only a non-contrast head CT can be analysed; MR and other modalities are refused.",
    ambiguous_series: "The upload holds several CT series. Upload one series only.",
    series_not_found: "The series named in the request is not in the upload.",
    too_few_slices: "The series has too few slices for a head CT volume.",
    missing_slices: "Slices are missing from the series (a gap in the slice positions). Upload the complete series.",
    conflicting_duplicates: "Some slices appear twice with different pixels. Upload one consistent series.",
    unsupported_transfer_syntax: "The images are compressed in a way the service cannot decode.",
    corrupt_pixel_data: "The pixel data of some images is damaged.",
    not_axial: "The series is not axial. Upload the axial reconstruction.",
    inconsistent_geometry: "The image geometry (position, orientation or spacing) is missing or contradictory.",
    archive_invalid: "The ZIP archive cannot be read.",
    archive_limit_exceeded: "The archive is too large or too compressed for the service's limits.",
    empty_input: "Nothing was uploaded.",
    brain_not_found: "No brain was found inside a skull: is this a head CT with the whole skull in the field of view?",
    unsupported_sop_class: "Only classic single-frame CT images are supported (enhanced multi-frame CT is not).",
    invalid_dicom: "A DICOM file is damaged or malformed.",
    invalid_nifti: "The NIfTI file is damaged or truncated.",
    unsupported_volume: "The NIfTI file is not one 3-D scalar volume.",
    not_hounsfield_units: "The intensities are not CT Hounsfield units (an MR image, or a normalised volume).",
    multiple_volumes: "Upload one volume at a time (one NIfTI file, or one DICOM series).",
    unauthorized: "Enter a valid API key above and try again.",
    body_too_large: "The upload is larger than the service accepts.",
    too_many_files: "The upload has more files than the service accepts in one request.",
    unsupported_media_type: "The upload's format is not accepted.",
    overloaded: "The service is busy. Try again in a few seconds.",
    not_ready: "The model is still loading. Try again in a moment.",
    processing_timeout: "The analysis took longer than the service's time limit.",
    request_timeout: "The upload did not finish in time.",
    out_of_memory: "The service ran out of memory for this study. Try again later.",
    validation_error: "A value in the request is not valid (check the onset time).",
    network_error: "The service could not be reached.",
  };

  const state = {
    files: [],
    result: null,
    index: null,
    slice: 0,
    window: "brain",
    wanted: null,
    busy: false,
    cache: new Map(),
    inflight: new Map(),
    overviewUrl: null,
    timer: null,
  };

  // --- key and fetch -------------------------------------------------------------------------------------
  function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }
  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function apiFetch(url, options) {
    const opts = options || {};
    return fetch(url, Object.assign({}, opts, { headers: Object.assign({}, opts.headers || {}, authHeaders()) }));
  }
  async function readJson(response) {
    try { return await response.json(); } catch (_) { return null; }
  }
  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

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

  function showProblem(body, status) {
    const code = (body && body.code) || (status ? "http_" + status : "network_error");
    const detail = (body && (body.detail || body.title)) || (status ? "The service answered HTTP " + status + "." : "The service could not be reached.");
    $("problem-text").textContent = detail;
    $("problem-hint").textContent = HINTS[code] || (body && body.title) || "";
    $("problem-code").textContent = code;
    $("problem-status").textContent = status ? String(status) : "none";
    $("problem").hidden = false;
    $("problem").setAttribute("tabindex", "-1");
    $("problem").focus();
  }

  // --- upload and analysis -------------------------------------------------------------------------------
  function post(files, onset) {
    return new Promise((resolve) => {
      const form = new FormData();
      if (onset !== "") form.append("onset_to_ct_hours", onset);
      for (const file of files) form.append("files", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/predictions");
      const headers = authHeaders();
      for (const name of Object.keys(headers)) xhr.setRequestHeader(name, headers[name]);
      xhr.setRequestHeader("Prefer", "respond-async");  // a server with asynchronous jobs answers 202
      xhr.setRequestHeader("Accept", "application/json, application/problem+json");
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) {
          const pct = (100 * event.loaded) / event.total;
          setProgress("Uploading " + Math.round(pct) + " %", pct);
        }
      };
      xhr.upload.onload = () => {
        setProgress("Analysing", null);
        startTimer(() => "Analysing the study…");
      };
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
        resolve({ status: xhr.status, body: body, location: xhr.getResponseHeader("Location"),
                  retryAfter: Number(xhr.getResponseHeader("Retry-After")) || 1 });
      };
      xhr.onerror = () => resolve({ status: 0, body: null, location: null, retryAfter: 1 });
      setProgress("Uploading 0 %", 0);
      setStatus("Uploading " + files.length + (files.length === 1 ? " file…" : " files…"));
      xhr.send(form);
    });
  }

  async function poll(location, retryAfter) {
    let wait = retryAfter;
    for (;;) {
      await sleep(1000 * Math.max(0.5, Math.min(wait, 5)));
      const response = await apiFetch(location, { headers: { Accept: "application/json, application/problem+json" }, cache: "no-store" });
      const body = await readJson(response);
      if (response.status === 202) {
        const phase = (body && body.status) || "queued";
        startTimer(() => "Analysing the study (" + phase + ")…");
        wait = Number(response.headers.get("Retry-After")) || 1;
        continue;
      }
      return { status: response.status, body: body };
    }
  }

  async function analyse(event) {
    event.preventDefault();
    if (!state.files.length) return;
    resetResults();
    $("analyse").disabled = true;
    try {
      let answer = await post(state.files, $("onset").value.trim());
      if (answer.status === 202 && answer.location) {
        startTimer(() => "Analysing the study (queued)…");
        answer = await poll(answer.location, answer.retryAfter);
      }
      stopTimer();
      $("progress-box").hidden = true;
      if (answer.status === 200 && answer.body && answer.body.expansion) {
        setStatus("Analysis finished.");
        await showResult(answer.body);
      } else {
        setStatus("The upload was refused.");
        showProblem(answer.body, answer.status);
      }
    } finally {
      stopTimer();
      $("analyse").disabled = state.files.length === 0;
    }
  }

  // --- the result ----------------------------------------------------------------------------------------
  function fmt(value, digits) { return Number(value).toFixed(digits); }
  function yesNo(value) { return value ? "Yes" : "No"; }
  function setFact(id, text, value, cls) {
    const el = $(id);
    el.textContent = text;
    if (value === undefined || value === null) el.removeAttribute("data-value");
    else el.dataset.value = String(value);
    el.className = cls || "";
  }
  function label(name) { return name.replace(/_/g, " "); }
  function formatValue(value) {
    if (value === null || value === undefined) return "not available";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
    if (Array.isArray(value)) return value.map(formatValue).join(", ");
    if (typeof value === "object") return Object.keys(value).map((k) => label(k) + ": " + formatValue(value[k])).join("; ");
    return String(value);
  }
  function formatInterval(interval) {
    if (!interval) return null;
    let lo, hi, level;
    if (Array.isArray(interval)) { lo = interval[0]; hi = interval[1]; }
    else { lo = interval.low ?? interval.lower ?? interval.lo; hi = interval.high ?? interval.upper ?? interval.hi; level = interval.level ?? interval.confidence; }
    if (lo === undefined || hi === undefined) return formatValue(interval);
    const pct = level === undefined ? "" : (level <= 1 ? Math.round(level * 100) : level) + " % interval ";
    return pct + fmt(lo, 2) + " to " + fmt(hi, 2);
  }
  function definitionList(object) {
    const dl = document.createElement("dl");
    dl.className = "facts";
    for (const key of Object.keys(object)) {
      const dt = document.createElement("dt");
      dt.textContent = label(key);
      const dd = document.createElement("dd");
      dd.textContent = formatValue(object[key]);
      dl.append(dt, dd);
    }
    return dl;
  }

  async function showResult(doc) {
    state.result = doc;
    const h = doc.haematoma;
    const e = doc.expansion;
    setFact("r-detected", h.detected ? "Yes" : "No haematoma detected", h.detected);
    setFact("r-volume", fmt(h.volume_ml, 1) + " mL", h.volume_ml);
    setFact("r-abc2", fmt(h.abc2_volume_ml, 1) + " mL", h.abc2_volume_ml);
    setFact("r-infratentorial", h.infratentorial ? "Yes: probably below the tentorium (outside the population the model was made for)" : "No",
            h.infratentorial, h.infratentorial ? "yes-bad" : "");
    setFact("r-edge", yesNo(h.touches_fov_edge), h.touches_fov_edge, h.touches_fov_edge ? "yes-bad" : "");
    if (e.probability === null || e.probability === undefined) {
      setFact("r-probability", "Not assessed", null);
      setFact("r-decision", e.reason === "no_haematoma_detected" ? "Not assessed: no haematoma was detected" : "Not assessed" + (e.reason ? " (" + label(e.reason) + ")" : ""), null);
    } else {
      setFact("r-probability", fmt(e.probability, 2) + " (" + Math.round(e.probability * 100) + " %)", e.probability);
      setFact("r-decision", e.predicted
        ? "Expansion predicted (probability at or above the threshold " + fmt(e.threshold, 2) + ")"
        : "No expansion predicted (probability below the threshold " + fmt(e.threshold, 2) + ")",
      e.predicted, e.predicted ? "yes-bad" : "no-good");
    }
    const interval = formatInterval(e.interval);
    setFact("r-interval", interval || "Not reported by this model", interval ? JSON.stringify(e.interval) : null);
    setFact("r-raw", fmt(e.raw_probability, 3), e.raw_probability);
    $("r-definition").textContent = e.definition ? "Expansion: " + e.definition + "." : "";

    const markers = doc.ncct_markers;
    $("markers-box").hidden = !markers;
    const tbody = $("markers").querySelector("tbody");
    tbody.textContent = "";
    if (markers) {
      for (const name of Object.keys(markers)) {
        const marker = markers[name] || {};
        const row = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = label(name);
        const present = document.createElement("td");
        present.textContent = typeof marker === "object" ? formatValue(marker.present) : formatValue(marker);
        const rest = document.createElement("td");
        if (typeof marker === "object") {
          const others = Object.assign({}, marker);
          delete others.present;
          rest.textContent = formatValue(others);
        }
        row.append(th, present, rest);
        tbody.append(row);
      }
    }
    $("bat-box").hidden = !doc.bat;
    $("bat").textContent = "";
    if (doc.bat) $("bat").append(typeof doc.bat === "object" ? definitionList(doc.bat) : document.createTextNode(formatValue(doc.bat)));

    const warnings = $("warnings");
    warnings.textContent = "";
    const items = (doc.input && doc.input.warnings) || [];
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "No quality warnings: the series passed every check.";
      warnings.append(li);
    }
    for (const w of items) {
      const li = document.createElement("li");
      li.append(document.createTextNode(w.message + " "));
      const code = document.createElement("code");
      code.textContent = w.code;
      li.append("(", code, ")");
      warnings.append(li);
    }
    showDownloads(doc);
    $("r-series").textContent = doc.input.slice_count + " slices, " + doc.input.source_kind + ", spacing " +
      doc.input.spacing_mm.map((v) => fmt(v, 2)).join(" × ") + " mm";
    $("r-model").textContent = doc.model.name + " " + doc.model.version;
    $("r-timing").textContent = doc.timings_ms && doc.timings_ms.total !== undefined
      ? "analysed in " + fmt(doc.timings_ms.total / 1000, 1) + " s" : "";
    $("results").hidden = false;
    $("results").focus();
    await loadViewer(doc);
  }

  function basename(url) { return url.split("?")[0].split("/").pop(); }
  function showDownloads(doc) {
    const list = $("downloads");
    list.textContent = "";
    const links = Object.assign({}, doc.links || {});
    const entries = Object.keys(links).filter((k) => k !== "self" && typeof links[k] === "string" && links[k]);
    entries.push("self");
    for (const name of entries) {
      const url = links[name];
      if (!url) continue;
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = url;
      a.textContent = name === "self" ? "Result document (JSON)" : (LINK_NAMES[name] || label(name));
      a.download = name === "self" ? "prediction-" + doc.id + ".json" : basename(url);
      a.addEventListener("click", (event) => download(event, url, a.download));
      li.append(a);
      list.append(li);
    }
  }
  async function download(event, url, filename) {
    if (!apiKey()) return;  // no key configured: the browser follows the link itself
    event.preventDefault();
    const response = await apiFetch(url);
    if (!response.ok) {
      showProblem(await readJson(response), response.status);
      return;
    }
    const blobUrl = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = blobUrl;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
  }

  // --- the slice viewer ----------------------------------------------------------------------------------
  async function loadViewer(doc) {
    const response = await apiFetch(doc.links.self + "/slices");
    const body = await readJson(response);
    if (!response.ok || !body) {
      $("viewer").hidden = true;
      $("viewer-unavailable").hidden = false;
      $("viewer-unavailable").textContent = "Slices cannot be shown: " + ((body && body.detail) || "HTTP " + response.status);
      return;
    }
    state.index = body;
    const o = body.orientation;
    $("o-top").textContent = o.top;
    $("o-bottom").textContent = o.bottom;
    $("o-left").textContent = o.left;
    $("o-right").textContent = o.right;
    $("o-text").textContent = DIRECTION_NAMES[o.left] + ", image top is " + DIRECTION_NAMES[o.top];
    const img = $("slice-image");
    img.width = body.columns;
    img.height = body.rows;
    const slider = $("slice-slider");
    slider.max = String(body.count);
    $("slice-peak").disabled = !body.mask_pixels.some((n) => n > 0);
    $("viewer").hidden = false;
    $("viewer-unavailable").hidden = true;
    showSlice(startSlice(body));
  }
  function peakSlice(index) {
    let best = -1, bestArea = 0;
    index.mask_pixels.forEach((n, k) => { if (n > bestArea) { best = k; bestArea = n; } });
    return best;
  }
  function startSlice(index) {
    const peak = peakSlice(index);
    if (peak >= 0) return peak;
    if (index.key_slices && index.key_slices.length) return index.key_slices[Math.floor(index.key_slices.length / 2)];
    return Math.floor(index.count / 2);
  }
  function sliceUrl(k, win) {
    return state.index.url_template.replace("{k}", String(k)).replace("{window}", win);
  }
  function describe(k) {
    const index = state.index;
    const z = index.positions_mm[k];
    let text = "Slice " + (k + 1) + " of " + index.count + ", z = " + fmt(z, 1) + " mm, " + windowLabel() + " window";
    if (index.mask_pixels[k] > 0) text += ", haematoma outlined in red";
    return text;
  }
  function windowLabel() { return WINDOW_NAMES[state.window] || state.window; }
  function showSlice(k) {
    const index = state.index;
    if (!index) return;
    const slice = Math.max(0, Math.min(index.count - 1, k));
    state.slice = slice;
    $("slice-slider").value = String(slice + 1);
    $("slice-slider").setAttribute("aria-valuetext", describe(slice));
    $("slice-caption").textContent = describe(slice);
    state.wanted = slice + ":" + state.window;
    pump();
  }
  function loadSlice(key) {
    if (state.cache.has(key)) return Promise.resolve(state.cache.get(key));
    if (state.inflight.has(key)) return state.inflight.get(key);
    const [k, win] = key.split(":");
    const promise = apiFetch(sliceUrl(Number(k), win)).then(async (response) => {
      if (!response.ok) {
        const body = await readJson(response);
        throw new Error((body && body.detail) || "HTTP " + response.status);
      }
      const url = URL.createObjectURL(await response.blob());
      state.cache.set(key, url);
      while (state.cache.size > SLICE_CACHE_MAX) {
        const oldest = state.cache.keys().next().value;
        if (oldest === state.wanted) break;
        URL.revokeObjectURL(state.cache.get(oldest));
        state.cache.delete(oldest);
      }
      return url;
    }).finally(() => state.inflight.delete(key));
    state.inflight.set(key, promise);
    return promise;
  }
  async function pump() {
    if (state.busy) return;  // the running loop picks up the newest wanted slice
    state.busy = true;
    try {
      for (;;) {
        const want = state.wanted;
        let url;
        try {
          url = await loadSlice(want);
        } catch (err) {
          if (want === state.wanted) $("slice-caption").textContent = "This slice could not be loaded: " + err.message;
          break;
        }
        if (want === state.wanted) {
          const img = $("slice-image");
          img.src = url;
          img.alt = "Axial CT: " + describe(state.slice);
          img.dataset.slice = String(state.slice);
          img.dataset.window = state.window;
          break;
        }
      }
    } finally {
      state.busy = false;
    }
    const index = state.index;
    for (const d of [1, -1, 2, -2]) {  // neighbours, for smooth scrolling
      const k = state.slice + d;
      if (index && k >= 0 && k < index.count) loadSlice(k + ":" + state.window).catch(() => {});
    }
  }

  function onViewerKey(event) {
    const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5 };
    if (event.key in steps) {
      showSlice(state.slice + steps[event.key]);
    } else if (event.key === "Home") {
      showSlice(0);
    } else if (event.key === "End") {
      showSlice(state.index ? state.index.count - 1 : 0);
    } else {
      return;
    }
    event.preventDefault();
  }
  let wheelAccumulator = 0;
  function onWheel(event) {
    if (!state.index) return;
    event.preventDefault();
    wheelAccumulator += event.deltaMode === 1 ? event.deltaY * 40 : event.deltaY;
    if (Math.abs(wheelAccumulator) >= 40) {
      showSlice(state.slice + (wheelAccumulator > 0 ? 1 : -1));
      wheelAccumulator = 0;
    }
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
    $("viewer").hidden = true;
    for (const url of state.cache.values()) URL.revokeObjectURL(url);
    state.cache.clear();
    if (state.overviewUrl) URL.revokeObjectURL(state.overviewUrl);
    state.overviewUrl = null;
    $("overview-image").removeAttribute("src");
    $("slice-image").removeAttribute("src");
    state.index = null;
    state.result = null;
  }

  // --- wiring --------------------------------------------------------------------------------------------
  function init() {
    $("api-key").value = apiKey();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
      checkServer();
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
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

    $("slice-slider").addEventListener("input", (event) => showSlice(Number(event.target.value) - 1));
    $("slice-prev").addEventListener("click", () => showSlice(state.slice - 1));
    $("slice-next").addEventListener("click", () => showSlice(state.slice + 1));
    $("slice-peak").addEventListener("click", () => {
      if (state.index && peakSlice(state.index) >= 0) showSlice(peakSlice(state.index));
    });
    $("slice-figure").addEventListener("keydown", onViewerKey);
    $("slice-figure").addEventListener("wheel", onWheel, { passive: false });
    for (const radio of document.querySelectorAll('input[name="window"]')) {
      radio.addEventListener("change", (event) => {
        state.window = event.target.value;
        showSlice(state.slice);
      });
    }
    $("overview-image").closest("details").addEventListener("toggle", loadOverview);
    checkServer();
  }

  // for the browser tests and the console: render a result document that is already at hand
  window.ichPage = Object.freeze({ showResult: showResult });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
