/* Talking to the service: the API key (sessionStorage), authorised fetches, the upload with progress, and the
   polling of an asynchronous job (202 + Location). */
"use strict";

const KEY_STORAGE = "ich-api-key";

export function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }
export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}
export function apiFetch(url, options) {
  const opts = options || {};
  return fetch(url, Object.assign({}, opts, { headers: Object.assign({}, opts.headers || {}, authHeaders()) }));
}
export async function readJson(response) {
  try { return await response.json(); } catch (_) { return null; }
}
export function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
}

/* POST the files (multipart ``files`` parts, optional ``onset_to_ct_hours``) with Prefer: respond-async.
   ``progress.upload(percent)`` follows the upload, ``progress.uploaded()`` is called when the body is sent.
   Resolves to {status, body, location, retryAfter}; status 0 when the service could not be reached. */
export function post(files, onset, progress) {
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
        progress.upload((100 * event.loaded) / event.total);
      }
    };
    xhr.upload.onload = () => progress.uploaded();
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
      resolve({ status: xhr.status, body: body, location: xhr.getResponseHeader("Location"),
                retryAfter: Number(xhr.getResponseHeader("Retry-After")) || 1 });
    };
    xhr.onerror = () => resolve({ status: 0, body: null, location: null, retryAfter: 1 });
    progress.upload(0);
    xhr.send(form);
  });
}

/* GET the job at ``location`` until it is no longer 202 (``pending(status)`` is told each job status: queued,
   running), waiting Retry-After seconds (0.5 to 5) between calls. Resolves to {status, body}. */
export async function poll(location, retryAfter, pending) {
  let wait = retryAfter;
  for (;;) {
    await sleep(1000 * Math.max(0.5, Math.min(wait, 5)));
    const response = await apiFetch(location, {
      headers: { Accept: "application/json, application/problem+json" }, cache: "no-store" });
    const body = await readJson(response);
    if (response.status === 202) {
      pending((body && body.status) || "queued");
      wait = Number(response.headers.get("Retry-After")) || 1;
      continue;
    }
    return { status: response.status, body: body };
  }
}
