// The playground: API key, endpoint catalog, queue submission with live progress, results.
//
// Flow per submit: POST /queue/genserve/<name> → follow GET …/status/stream?logs=1 (server-sent
// events read through fetch, since EventSource cannot send the Authorization header; polling
// when the stream breaks) → GET the result → render its files by content type.

import { buildForm } from "./form.js";

const KEY_NAME = "genserve.apiKey";
const POLL_MS = 500;
// `base: step 3/20`, `refiner: step 2/5`, training `step 10/400 loss 0.1234`.
const STEP_LINE = /^(?:([\w -]+): )?step (\d+)\/(\d+)/;

const $ = (id) => document.getElementById(id);
// `run` counts submissions and endpoint switches: a job whose form was left stops updating the
// page (it keeps running on the server).
const state = { key: null, endpoints: [], current: null, read: null, running: null, run: 0 };

// -- API key -----------------------------------------------------------------------------------

function loadKey() {
  return localStorage.getItem(KEY_NAME) ?? sessionStorage.getItem(KEY_NAME);
}

function storeKey(key, remember) {
  forgetKey();
  (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

function forgetKey() {
  localStorage.removeItem(KEY_NAME);
  sessionStorage.removeItem(KEY_NAME);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Key ${state.key}`, ...(options.headers ?? {}) };
  return fetch(path, { ...options, headers });
}

// The server's own words for a failed answer: a 422's `message`, else `detail`.
async function errorText(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    return `HTTP ${response.status}`;
  }
  const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  return `HTTP ${response.status}: ${body.message ?? detail}`;
}

async function connect(key) {
  state.key = key;
  const r = await api("/playground/endpoints");
  if (!r.ok) {
    state.key = null;
    if (r.status === 401) forgetKey();
    $("key-status").textContent = `Could not use this key: ${await errorText(r)}`;
    $("key-status").dataset.state = "error";
    return false;
  }
  state.endpoints = (await r.json()).endpoints;
  $("key-status").textContent = "Key accepted.";
  $("key-status").dataset.state = "ok";
  $("key-forget").hidden = false;
  renderNav();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.endpoints.find((e) => e.name === wanted && e.deployed) ??
    state.endpoints.find((e) => e.deployed);
  if (first) select(first.name);
  return true;
}

// -- endpoints and forms -----------------------------------------------------------------------

function renderNav() {
  const nav = $("endpoints");
  nav.replaceChildren();
  for (const e of state.endpoints) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = e.name;
    b.dataset.endpoint = e.name;
    b.disabled = !e.deployed;
    b.title = e.deployed ? e.summary : "not deployed on this server";
    b.addEventListener("click", () => select(e.name));
    nav.append(b);
  }
}

function select(name) {
  const e = state.endpoints.find((x) => x.name === name);
  state.current = e;
  history.replaceState(null, "", `#${name}`);
  for (const b of $("endpoints").children) b.setAttribute("aria-current", b.dataset.endpoint === name);
  $("workspace").hidden = false;
  $("workspace").dataset.endpoint = name;
  $("endpoint-title").textContent = `${e.app_id} (${e.kind})`;
  $("endpoint-summary").textContent = e.summary;
  state.read = buildForm($("endpoint-form"), name, e.input_schema, { upload });
  state.run += 1;
  state.running = null;
  $("submit").disabled = false;
  $("cancel").disabled = true;
  resetResult();
}

async function upload(file) {
  const r = await api(`/files/upload?file_name=${encodeURIComponent(file.name)}`, {
    method: "POST", body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  if (!r.ok) throw new Error(await errorText(r));
  return (await r.json()).url;
}

// -- progress ----------------------------------------------------------------------------------

function resetResult() {
  $("error").textContent = "";
  $("results").replaceChildren();
  $("logs").textContent = "";
  $("raw").textContent = "";
  setProgress("idle", 0, "idle");
}

function setProgress(phase, percent, label) {
  const bar = $("progress");
  bar.dataset.state = phase;
  if (percent === null) bar.removeAttribute("value"); // indeterminate
  else bar.value = percent;
  $("progress-label").textContent = label;
}

function showStatus(status) {
  const logs = status.logs ?? [];
  $("logs").textContent = logs.map((l) => l.message).join("\n");
  if (status.status === "IN_QUEUE") {
    setProgress("queued", 0, `queued (position ${status.queue_position ?? "?"})`);
    return;
  }
  if (status.status === "IN_PROGRESS") {
    const step = logs.map((l) => STEP_LINE.exec(l.message)).filter(Boolean).pop();
    if (step) {
      const [, stage, k, n] = step;
      setProgress("running", (100 * Number(k)) / Number(n),
                  `${stage ? `${stage}: ` : ""}step ${k}/${n}`);
    } else {
      setProgress("running", null, logs.length ? logs[logs.length - 1].message : "running");
    }
  }
}

async function follow(id, live) {
  const path = `/queue/requests/${id}/status`;
  try {
    const r = await api(`${path}/stream?logs=1`);
    if (!r.ok || !r.body) throw new Error(`stream answered ${r.status}`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        const status = JSON.parse(data);
        if (!live()) return status;
        showStatus(status);
        if (status.status === "COMPLETED") return status;
      }
    }
  } catch (err) {
    console.warn("status stream failed, polling instead:", err);
  }
  for (;;) {
    const r = await api(`${path}?logs=1`);
    if (!r.ok) throw new Error(await errorText(r));
    const status = await r.json();
    if (!live()) return status;
    showStatus(status);
    if (status.status === "COMPLETED") return status;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// -- submit and results ------------------------------------------------------------------------

async function submit() {
  resetResult();
  let body;
  try {
    body = state.read();
  } catch (err) {
    $("error").textContent = err.message;
    return;
  }
  const name = state.current.name;
  const run = ++state.run;
  const live = () => run === state.run;
  $("submit").disabled = true;
  setProgress("submitting", null, "submitting");
  try {
    const r = await api(`/queue/genserve/${encodeURIComponent(name)}`, {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    });
    if (!r.ok) throw new Error(await errorText(r));
    const { request_id: id } = await r.json();
    if (!live()) return;
    state.running = id;
    $("cancel").disabled = false;
    $("workspace").dataset.requestId = id;
    const final = await follow(id, live);
    if (!live()) return;
    const result = await api(`/queue/requests/${id}`);
    if (!result.ok) throw new Error(await errorText(result));
    const output = await result.json();
    if (!live()) return;
    const took = final.metrics?.inference_time;
    setProgress("done", 100, took ? `done in ${took.toFixed(2)} s` : "done");
    $("raw").textContent = JSON.stringify(output, shorten, 2);
    await renderOutput(output);
  } catch (err) {
    if (!live()) return;
    setProgress("failed", 0, "failed");
    $("error").textContent = err.message;
  } finally {
    if (live()) {
      state.running = null;
      $("submit").disabled = false;
      $("cancel").disabled = true;
    }
  }
}

async function cancel() {
  if (!state.running) return;
  const r = await api(`/queue/requests/${state.running}/cancel`, { method: "PUT" });
  $("progress-label").textContent = r.ok ? "cancelling…" : await errorText(r);
}

// Inline data: URIs can be megabytes; the JSON view only needs to show they are there.
function shorten(key, value) {
  return typeof value === "string" && value.startsWith("data:") && value.length > 120
    ? `${value.slice(0, 60)}… (${value.length} chars)` : value;
}

// Every File-like object ({url, content_type}) in the output, with where it was found.
function files(value, where = [], out = []) {
  if (Array.isArray(value)) value.forEach((v, i) => files(v, [...where, i], out));
  else if (value && typeof value === "object") {
    if (typeof value.url === "string" && typeof value.content_type === "string") {
      out.push({ ...value, where: where.join(".") });
    } else {
      for (const [k, v] of Object.entries(value)) files(v, [...where, k], out);
    }
  }
  return out;
}

const MESH_FORMATS = ["obj", "glb", "ply"];

function meshFormat(file) {
  const ext = (file.file_name ?? "").split(".").pop().toLowerCase();
  if (MESH_FORMATS.includes(ext)) return ext;
  return { "model/obj": "obj", "model/gltf-binary": "glb", "application/ply": "ply" }[
    file.content_type];
}

function download(file) {
  const a = document.createElement("a");
  a.href = file.url;
  a.download = file.file_name ?? "";
  a.className = "download";
  const size = file.file_size ? ` (${(file.file_size / 1024).toFixed(1)} KiB)` : "";
  a.textContent = `${file.file_name ?? file.where}${size}`;
  return a;
}

async function renderOutput(output) {
  const box = $("results");
  if (typeof output.text === "string") {
    const pre = document.createElement("pre");
    pre.className = "chat-text";
    pre.textContent = output.text;
    box.append(pre);
  }
  for (const file of files(output)) {
    const figure = document.createElement("figure");
    figure.dataset.where = file.where;
    const type = file.content_type;
    let media = null;
    if (type.startsWith("image/")) {
      media = document.createElement("img");
      media.alt = file.where;
    } else if (type.startsWith("audio/")) {
      media = document.createElement("audio");
      media.controls = true;
      media.preload = "auto";
    } else if (type.startsWith("video/")) {
      media = document.createElement("video");
      Object.assign(media, { controls: true, loop: true, muted: true, autoplay: true,
                             playsInline: true, preload: "auto" });
    }
    if (media) {
      media.src = file.url;
      figure.append(media);
    } else if (meshFormat(file)) {
      const holder = document.createElement("div");
      holder.className = "mesh-viewer";
      figure.append(holder);
      showMesh(holder, file.url, meshFormat(file));
    }
    const caption = document.createElement("figcaption");
    caption.append(download(file));
    figure.append(caption);
    box.append(figure);
  }
}

// The viewer (three.js, vendored at build time) loads only when a mesh is shown, so the rest
// of the page works on a server where `make playground` has not been run.
async function showMesh(holder, url, format) {
  try {
    const { showMesh: show } = await import("./viewer.js");
    await show(holder, url, format);
  } catch (err) {
    holder.dataset.state = "error";
    holder.textContent = `3D viewer unavailable: ${err.message} ` +
      "(the server's three.js build is made by `make playground`)";
  }
}

// -- start -------------------------------------------------------------------------------------

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  if (await connect(key)) {
    storeKey(key, $("remember-key").checked);
    $("api-key").value = "";
  }
});
$("key-forget").addEventListener("click", () => {
  forgetKey();
  location.hash = "";
  location.reload();
});
// A link or an edited address bar changing only the #endpoint does not reload the page.
window.addEventListener("hashchange", () => {
  const name = decodeURIComponent(location.hash.slice(1));
  const e = state.endpoints.find((x) => x.name === name && x.deployed);
  if (e && e !== state.current) select(name);
});
$("submit").addEventListener("click", submit);
$("cancel").addEventListener("click", cancel);

const saved = loadKey();
if (saved) connect(saved);
else $("key-status").textContent = "Enter an API key to start.";
