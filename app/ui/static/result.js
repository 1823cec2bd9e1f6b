/* The result document and refusals in words: numbers, decision, quality gate, markers and BAT when present,
   download links. */
"use strict";

import { apiFetch, apiKey, readJson } from "./api.js";

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

/* A refusal (problem+json) or a failure to reach the service, in words, with its code and status. */
export function showProblem(body, status) {
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

export function fmt(value, digits) { return Number(value).toFixed(digits); }
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

/* Fill the result panel from a result document (fields added by later models are rendered when present). */
export function showResult(doc) {
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
  showMarkers(doc.ncct_markers);
  $("bat-box").hidden = !doc.bat;
  $("bat").textContent = "";
  if (doc.bat) $("bat").append(typeof doc.bat === "object" ? definitionList(doc.bat) : document.createTextNode(formatValue(doc.bat)));
  showWarnings((doc.input && doc.input.warnings) || []);
  showDownloads(doc);
  $("r-series").textContent = doc.input.slice_count + " slices, " + doc.input.source_kind + ", spacing " +
    doc.input.spacing_mm.map((v) => fmt(v, 2)).join(" × ") + " mm";
  $("r-model").textContent = doc.model.name + " " + doc.model.version;
  $("r-timing").textContent = doc.timings_ms && doc.timings_ms.total !== undefined
    ? "analysed in " + fmt(doc.timings_ms.total / 1000, 1) + " s" : "";
  $("results").hidden = false;
  $("results").focus();
}

function showMarkers(markers) {
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
      if (typeof marker === "object" && "measurement" in marker && "value" in marker) {
        // the service's own form: the measurement that decides the marker, its value, unit and threshold
        const unit = marker.unit && marker.unit !== "1" ? marker.unit : "";  // "1": a ratio or a probability
        rest.textContent = `${label(marker.measurement)} ${formatValue(marker.value)} ${unit}`.trim() +
          ("threshold" in marker ? ` (threshold ${formatValue(marker.threshold)})` : "");
      } else if (typeof marker === "object") {
        const others = Object.assign({}, marker);
        delete others.present;
        rest.textContent = formatValue(others);
      }
      row.append(th, present, rest);
      tbody.append(row);
    }
  }
}

function showWarnings(items) {
  const warnings = $("warnings");
  warnings.textContent = "";
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
