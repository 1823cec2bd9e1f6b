/* The axial slice viewer: slice PNGs of /v1/predictions/{id}/slices/{k}.png fetched with the key (blob URLs,
   a bounded cache, neighbours prefetched), wheel / keys / slider, window presets, orientation letters. */
"use strict";

import { apiFetch, readJson } from "./api.js";
import { fmt } from "./result.js";

const $ = (id) => document.getElementById(id);
const SLICE_CACHE_MAX = 96;
const DIRECTION_NAMES = { R: "right", L: "left", A: "anterior", P: "posterior", S: "superior", I: "inferior" };
const WINDOW_NAMES = { brain: "brain", blood: "blood", bone: "bone" };

const state = {
  index: null,  // GET /v1/predictions/{id}/slices
  slice: 0,
  window: "brain",
  wanted: null,  // "k:window" of the image to show
  busy: false,
  cache: new Map(),  // "k:window" -> blob URL, oldest first
  inflight: new Map(),
};

/* Open the viewer on a result: its slice index, then the largest haematoma section (else a key slice). */
export async function loadViewer(doc) {
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

/* Forget the current result's slices (blob URLs revoked). */
export function resetViewer() {
  $("viewer").hidden = true;
  for (const url of state.cache.values()) URL.revokeObjectURL(url);
  state.cache.clear();
  state.index = null;
  $("slice-image").removeAttribute("src");
}

/* Wire the viewer's controls: slider, buttons, keys on the figure, the wheel, the window presets. */
export function initViewer() {
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
}
