// mediasvc web page: resumable upload (tus-js-client), list, file page with a player.
// No framework, no build. Every name from the server is set as text, never as HTML.
"use strict";

const API = "/api/v1/files";
const TOKENS_KEY = "mediasvc.deleteTokens"; // uid → delete token, for files uploaded here
const API_KEY_KEY = "mediasvc.apiKey";
const PROCESSING_POLL_MS = 2000; // a file page looks again while its renditions are being made

const $ = (id) => document.getElementById(id);

// --- small helpers ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Sizes in binary units named as such (KiB, MiB, GiB), as the command line shows them
// (mediasvc/progress.py format_bytes) and the settings are written.
function formatBytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let value = n;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[i]}`;
}

// Bit rates in bits per second, decimal (kbit/s, Mbit/s), as ffprobe and players give them.
function formatBitRate(bitsPerSecond) {
  if (bitsPerSecond >= 1e6) return `${(bitsPerSecond / 1e6).toFixed(bitsPerSecond < 1e7 ? 2 : 1)} Mbit/s`;
  if (bitsPerSecond >= 1e3) return `${Math.round(bitsPerSecond / 1e3)} kbit/s`;
  return `${Math.round(bitsPerSecond)} bit/s`;
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

function formatAge(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

// A file uploaded without a name is called by what it is: its sniffed type and its size.
function displayName(file) {
  return file.original_name || `Unnamed ${file.format} (${formatBytes(file.size)})`;
}

function kindOf(file) {
  if (file.media && file.media.kind) return file.media.kind;
  const top = (file.format || "").split("/")[0];
  return ["video", "audio", "image"].includes(top) ? top : "other";
}

function apiKey() {
  return localStorage.getItem(API_KEY_KEY) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// A file's preview as an <img> or poster attribute. With a key, it is fetched with the key
// (when signed downloads are required the plain URL is refused, and the owner's key is what
// opens it) and shown from a blob: URL; without one, the plain URL.
function withPreview(node, uid, attribute) {
  const url = `${API}/${uid}/preview`;
  if (!apiKey()) {
    node.setAttribute(attribute, url);
    return node;
  }
  fetch(url, { headers: authHeaders() })
    .then((response) => (response.ok ? response.blob() : null))
    .then((blob) => {
      if (!blob) return;
      const blobUrl = URL.createObjectURL(blob);
      if (attribute === "src") {
        node.addEventListener("load", () => URL.revokeObjectURL(blobUrl), { once: true });
      }
      node.setAttribute(attribute, blobUrl);
    })
    .catch(() => {
      // no preview: the placeholder stays
    });
  return node;
}

function loadTokens() {
  try {
    return JSON.parse(localStorage.getItem(TOKENS_KEY) || "{}");
  } catch {
    return {};
  }
}

function saveToken(uid, token) {
  const tokens = loadTokens();
  tokens[uid] = token;
  localStorage.setItem(TOKENS_KEY, JSON.stringify(tokens));
}

function forgetToken(uid) {
  const tokens = loadTokens();
  delete tokens[uid];
  localStorage.setItem(TOKENS_KEY, JSON.stringify(tokens));
}

// The `detail` of an RFC 9457 problem body, else the status line.
function problemText(status, statusText, body) {
  try {
    const problem = JSON.parse(body);
    if (problem && (problem.detail || problem.title)) {
      return `${status} ${problem.title || ""}: ${problem.detail || ""}`.trim();
    }
  } catch {
    // not JSON
  }
  return `${status} ${statusText || "error"}`;
}

// JSON from the API (``raw``: the body as text); a problem's detail as the error's message.
async function api(path, options = {}) {
  const { raw, ...init } = options;
  const response = await fetch(path, {
    ...init,
    headers: { Accept: raw ? "*/*" : "application/json", ...authHeaders(), ...(init.headers || {}) },
  });
  const text = await response.text();
  if (!response.ok) {
    const error = new Error(problemText(response.status, response.statusText, text));
    error.status = response.status;
    throw error;
  }
  if (raw) return text;
  return text ? JSON.parse(text) : null;
}

// --- upload (tus: resumable) ----------------------------------------------------------------------
// tus-js-client (static/vendor, `make vendor-web`) sends the file to /api/v1/uploads: a cut
// connection is retried from the offset the server reports (HEAD), going offline waits for the
// connection to come back, and the upload's URL is kept in localStorage so that after a reload
// choosing the same file again continues it.

const UPLOADS = "/api/v1/uploads";
// Bytes per PATCH: a cut costs at most what was in flight; fewer, bigger requests are faster.
const CHUNK_BYTES = 64 * 1024 * 1024;
// Waits between attempts after a network error or a 5xx (ms); then the upload gives up.
const RETRY_DELAYS = [0, 1000, 2000, 5000, 10000, 20000, 30000, 60000, 60000, 60000];
const DELETE_TOKEN_HEADER = "X-Delete-Token";

const queue = [];
let current = null; // { upload, file, state: "sending" | "paused" | "offline" }

function uploadMetadata(file) {
  const metadata = { filename: file.name };
  // The browser's guess from the extension; none → the server sniffs the content.
  if (file.type) metadata.filetype = file.type;
  const maxDownloads = $("max-downloads").value.trim();
  const expiresIn = $("expires-in").value;
  if (maxDownloads) metadata.max_downloads = maxDownloads;
  if (expiresIn) metadata.expires_in = expiresIn;
  return metadata;
}

function enqueue(files) {
  for (const file of files) queue.push(file);
  if (!current) uploadNext();
}

// Rate over the last few seconds of progress events, so a stall shows at once.
class RateMeter {
  constructor(windowMs = 3000) {
    this.windowMs = windowMs;
    this.samples = [];
  }

  reset() {
    this.samples = [];
  }

  add(loaded) {
    const now = performance.now();
    this.samples.push([now, loaded]);
    while (this.samples.length > 2 && now - this.samples[0][0] > this.windowMs) {
      this.samples.shift();
    }
    const [t0, b0] = this.samples[0];
    const seconds = (now - t0) / 1000;
    return seconds > 0.2 ? (loaded - b0) / seconds : null;
  }
}

function showProgress(loaded, total, rate) {
  const bar = $("progress-bar");
  bar.max = total || 1;
  bar.value = total ? loaded : 0;
  const parts = [`${formatBytes(loaded)} of ${formatBytes(total)}`];
  if (total) parts.push(`${Math.floor((100 * loaded) / total)} %`);
  if (rate !== null && rate !== undefined) {
    parts.push(`${formatBytes(rate)}/s`);
    if (rate > 0 && loaded < total) parts.push(`${formatDuration((total - loaded) / rate)} left`);
  }
  if (total && loaded >= total) parts.push("saving…");
  $("progress-text").textContent = parts.join(" · ");
}

function setStatus(text, kind) {
  const status = $("upload-status");
  status.replaceChildren(...(Array.isArray(text) ? text : [text]));
  status.className = `status ${kind || ""}`;
}

function setButtons(state) {
  $("cancel").disabled = state === "idle";
  $("pause").hidden = state === "paused";
  $("pause").disabled = state !== "sending";
  $("resume").hidden = state !== "paused";
}

// A status of the tus response, or 0 for a network error (no response).
function statusOf(error) {
  return error && error.originalResponse ? error.originalResponse.getStatus() : 0;
}

function errorText(error) {
  const response = error && error.originalResponse;
  if (!response) return "the connection failed";
  return problemText(response.getStatus(), "", response.getBody());
}

async function uploadNext() {
  const file = queue.shift();
  if (!file) {
    current = null; // the last result stays on show
    setButtons("idle");
    return;
  }
  const meter = new RateMeter();
  $("progress").hidden = false;
  $("progress-name").textContent = file.name;
  showProgress(0, file.size, null);
  setStatus(queue.length ? `${queue.length} more waiting` : "", "");

  const upload = new tus.Upload(file, {
    endpoint: UPLOADS,
    chunkSize: CHUNK_BYTES,
    retryDelays: RETRY_DELAYS,
    metadata: uploadMetadata(file),
    headers: authHeaders(),
    removeFingerprintOnSuccess: true,
    onShouldRetry(error) {
      // Offline: no point waiting out the delays; the "online" event resumes it (below).
      if (!navigator.onLine) return false;
      const status = statusOf(error);
      return status === 0 || status >= 500 || status === 409 || status === 423;
    },
    onProgress(sent, total) {
      showProgress(sent, total, meter.add(sent));
    },
    onSuccess({ lastResponse }) {
      finished(file, lastResponse);
    },
    onError(error) {
      if (current && current.upload === upload && !navigator.onLine && statusOf(error) === 0) {
        waitForOnline();
        return;
      }
      setStatus(`${file.name}: ${errorText(error)}`, "error");
      stopProgress("failed");
      uploadNext();
      showUnfinished();
    },
  });
  current = { upload, file, state: "sending", meter };
  setButtons("sending");
  // The same file (name, type, size, modification time) begun before, here or before a
  // reload: continue that upload rather than start again.
  const previous = await upload.findPreviousUploads();
  if (previous.length) {
    previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime));
    upload.resumeFromPreviousUpload(previous[0]);
    setStatus(`${file.name}: continuing the earlier upload`, "");
  }
  upload.start();
}

// The completing response names the file (Content-Location); it is shown as a plain upload's.
async function finished(file, response) {
  try {
    const location = response.getHeader("Content-Location");
    const stored = await api(`${location}/metadata`);
    const token = response.getHeader(DELETE_TOKEN_HEADER);
    if (token) saveToken(stored.uid, token);
    showProgress(file.size, file.size, null);
    $("progress-text").textContent = `${formatBytes(stored.size)} · done`;
    setStatus(["Uploaded ", el("a", { href: `#/files/${stored.uid}` }, displayName(stored))], "ok");
    refreshList();
  } catch (error) {
    setStatus(`${file.name}: uploaded, but ${error.message}`, "error");
  }
  uploadNext();
  showUnfinished();
}

// An upload that ended without success: no rate, no time left, the bar empty.
function stopProgress(outcome) {
  $("progress-bar").value = 0;
  $("progress-text").textContent = outcome;
}

// The browser says the network is gone: stop now rather than wait for the request to time out
// (a dropped Wi-Fi can leave it hanging for minutes); the "online" event resumes it.
function waitForOnline() {
  if (!current || current.state === "paused") return;
  if (current.state === "sending") current.upload.abort(false);
  current.state = "offline";
  current.meter.reset();
  setButtons("offline");
  setStatus(`${current.file.name}: offline; it continues when the connection is back`, "");
}

function pauseUpload() {
  if (!current || current.state !== "sending") return;
  current.state = "paused";
  current.upload.abort(false); // the server keeps what it has; Resume continues from there
  setButtons("paused");
  setStatus(`${current.file.name}: paused`, "");
}

function resumeUpload() {
  if (!current || current.state === "sending") return;
  current.state = "sending";
  current.meter.reset();
  setButtons("sending");
  setStatus("", "");
  current.upload.start();
}

async function cancelUpload() {
  queue.length = 0; // cancel means stop: the waiting files too
  if (!current) return;
  const { upload, file } = current;
  current = null;
  setButtons("idle");
  try {
    await upload.abort(true); // terminates it: the server drops its bytes
  } catch {
    // not created yet, or the server is gone: it expires there
  }
  setStatus(`${file.name}: cancelled`, "error");
  stopProgress("cancelled");
  uploadNext();
  showUnfinished();
}

// Uploads begun in this browser and not finished (tus-js-client's URL storage).
async function showUnfinished() {
  const stored = await tus.defaultOptions.urlStorage.findAllUploads();
  const active = current && current.upload.url;
  const left = stored.filter((upload) => upload.uploadUrl && upload.uploadUrl !== active);
  $("unfinished").hidden = left.length === 0;
  $("unfinished-list").replaceChildren(
    ...left.map((upload) =>
      el(
        "li",
        {},
        el("span", { class: "name" }, upload.metadata.filename || "unnamed"),
        el("span", { class: "muted small" }, formatBytes(upload.size)),
        el(
          "button",
          {
            type: "button",
            class: "quiet",
            onclick: async () => {
              try {
                await tus.Upload.terminate(upload.uploadUrl, { headers: authHeaders() });
              } catch {
                // already gone (expired, or finished elsewhere)
              }
              await tus.defaultOptions.urlStorage.removeUpload(upload.urlStorageKey);
              showUnfinished();
            },
          },
          "Forget",
        ),
      ),
    ),
  );
}

function setUpDropZone() {
  const drop = $("drop");
  const input = $("file-input");
  input.addEventListener("change", () => {
    enqueue([...input.files]);
    input.value = ""; // the same file can be chosen again
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    enqueue([...event.dataTransfer.files]);
  });
  // A drop that misses the zone must not navigate away from the page (and lose an upload).
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (!drop.contains(event.target)) event.preventDefault();
    });
  }
  $("cancel").addEventListener("click", cancelUpload);
  $("pause").addEventListener("click", pauseUpload);
  $("resume").addEventListener("click", resumeUpload);
  window.addEventListener("offline", waitForOnline);
  // Back online: an upload that stopped for it continues from the server's offset.
  window.addEventListener("online", () => {
    if (current && current.state === "offline") resumeUpload();
  });
  window.addEventListener("beforeunload", (event) => {
    if (current) event.preventDefault();
  });
}

// --- list -----------------------------------------------------------------------------------------

let nextCursor = null;

function fileItem(file) {
  const kind = kindOf(file);
  const thumb = file.preview_url
    ? withPreview(el("img", { class: "thumb", alt: "", loading: "lazy" }), file.uid, "src")
    : el("span", { class: `thumb kind-${kind}`, "aria-hidden": "true" }, kind);
  const facts = [file.format, formatBytes(file.size)];
  if (file.media && file.media.duration_s) facts.push(formatDuration(file.media.duration_s));
  facts.push(formatAge(file.created_at));
  return el(
    "li",
    { "data-uid": file.uid },
    el(
      "a",
      { href: `#/files/${file.uid}`, class: "file-link" },
      thumb,
      el(
        "span",
        { class: "file-text" },
        el("span", { class: "name" }, displayName(file)),
        el("span", { class: "muted small" }, facts.join(" · ")),
      ),
    ),
  );
}

async function loadFiles(append) {
  const list = $("file-list");
  const status = $("list-status");
  const query = append && nextCursor ? `?cursor=${encodeURIComponent(nextCursor)}` : "";
  try {
    const page = await api(`${API}${query}`);
    const items = page.items.map(fileItem);
    if (append) list.append(...items);
    else list.replaceChildren(...items);
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
    status.textContent = list.children.length ? "" : "No files yet.";
    markActive();
  } catch (error) {
    status.textContent =
      error.status === 401 || error.status === 403
        ? "This server needs an API key to list files (see API key, top right)."
        : `Could not load the list: ${error.message}`;
  }
}

function refreshList() {
  return loadFiles(false);
}

function markActive() {
  const uid = routeUid();
  for (const item of $("file-list").children) {
    item.classList.toggle("active", item.dataset.uid === uid);
  }
}

// --- file page ------------------------------------------------------------------------------------

let renderSerial = 0;

function routeUid() {
  const match = location.hash.match(/^#\/files\/([A-Za-z0-9_-]+)$/);
  return match ? match[1] : null;
}

// The browser rendition, when the original does not play as it is (HEVC, MKV, AVI, ProRes …).
function playable(file) {
  const rendition = (file.renditions || []).find((r) => r.role === "playback");
  if (rendition) return { uid: rendition.uid, kind: rendition.format.split("/")[0], rendition };
  return { uid: file.uid, kind: kindOf(file), rendition: null };
}

// hls.js (vendored from npm, its licence beside it), loaded the first time a page needs it.
let hlsLibrary = null;
function loadHls() {
  if (!hlsLibrary) {
    hlsLibrary = new Promise((resolve, reject) => {
      const script = el("script", { src: "/static/vendor/hls.js/hls.min.js" });
      script.addEventListener("load", () => resolve(window.Hls));
      script.addEventListener("error", () => reject(new Error("hls.js did not load")));
      document.head.append(script);
    });
  }
  return hlsLibrary;
}

// Adaptive streaming: hls.js over Media Source Extensions where the browser has them, else the
// browser's own HLS (Safari, iOS); the rendition or the original if neither works.
async function attachHls(video, hls, fallback) {
  try {
    const Hls = await loadHls();
    if (Hls && Hls.isSupported()) {
      const player = new Hls({
        xhrSetup: (xhr) => {
          for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
        },
      });
      player.on(Hls.Events.ERROR, (_event, data) => {
        if (data.fatal) { player.destroy(); video.src = fallback; }
      });
      player.loadSource(hls.master_url);
      player.attachMedia(video);
      video.dataset.streaming = "hls.js";
      return;
    }
  } catch {
    // not loaded: the browser's own HLS, or the file
  }
  if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = hls.master_url;
    video.dataset.streaming = "native";
  } else {
    video.src = fallback;
  }
}

// The player and what goes with it (seek bar, a note on what plays), as a list of nodes.
function player(file) {
  const source = playable(file);
  const src = `${API}/${source.uid}?inline=true`;
  const kind = source.kind;
  const hls = kind === "video" && file.processing && file.processing.hls;
  let node;
  if (kind === "video") {
    node = el("video", {
      id: "player",
      controls: true,
      preload: "metadata",
      playsinline: true,
      src: hls ? null : src,
    });
    if (hls) attachHls(node, hls, src);
    if (file.preview_url) withPreview(node, file.uid, "poster");
  } else if (kind === "audio") {
    node = el("audio", { id: "player", controls: true, preload: "metadata", src });
  } else if (kind === "image") {
    node = el("img", { id: "player", src, alt: displayName(file) });
  } else {
    return [el("p", { class: "muted" }, `No preview for ${file.format}.`)];
  }
  let retried = false;
  node.addEventListener("error", async () => {
    // With signed downloads required, the plain URL is refused: ask for a signed one, once.
    if (!retried) {
      retried = true;
      try {
        const link = await api(`${API}/${source.uid}/link?inline=true`);
        node.src = link.url;
        return;
      } catch {
        // not configured, or not ours: fall through
      }
    }
    node.replaceWith(
      el("p", { class: "status error" }, `This browser cannot show ${file.format}. Download it instead.`),
    );
  });
  const parts = [el("div", { class: `player player-${kind}` }, node)];
  if (kind === "video" && file.processing && file.processing.storyboard) {
    parts.push(seekBar(node, file.processing.storyboard));
  }
  if (hls) {
    const heights = hls.variants.map((v) => `${v.height}p`).join(", ");
    parts.push(el("p", { class: "muted small", id: "playing-hls" }, `Streaming (HLS: ${heights}).`));
  } else if (source.rendition) {
    const r = source.rendition;
    const codecs = [r.video_codec, r.audio_codec].filter(Boolean).join("/");
    parts.push(el("p", { class: "muted small", id: "playing-rendition" },
      `Playing the browser rendition (${codecs}) of this file: ${file.media.playback.reason}.`));
  }
  return parts;
}

// --- storyboard previews on a seek bar ---------------------------------------------------------

// "00:01:02.500" → 62.5
function vttTime(text) {
  const parts = text.trim().split(":").map(Number);
  return parts.reduce((total, part) => total * 60 + part, 0);
}

// WebVTT cues whose text is "URL#xywh=x,y,w,h" (the storyboard the server makes).
function parseStoryboard(text) {
  const cues = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i += 1) {
    const times = lines[i].split("-->");
    if (times.length !== 2 || i + 1 >= lines.length) continue;
    const match = lines[i + 1].match(/^(.*)#xywh=(\d+),(\d+),(\d+),(\d+)$/);
    if (!match) continue;
    const [, url, x, y, w, h] = match;
    cues.push({ start: vttTime(times[0]), end: vttTime(times[1]), url, x: +x, y: +y, w: +w, h: +h });
  }
  return cues;
}

// A sheet's URL as something CSS can load: with an API key, fetched with it into a blob.
async function sheetUrl(url) {
  if (!apiKey()) return url;
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw new Error(`storyboard sheet: ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

// A seek bar under the player: the pointer over it shows the storyboard tile of that moment
// and its time; a click seeks there. The bar follows the playback position.
function seekBar(video, storyboard) {
  const fill = el("div", { class: "seek-fill" });
  const tile = el("div", { class: "seek-tile", id: "storyboard-preview", hidden: true });
  const label = el("div", { class: "seek-time" });
  const preview = el("div", { class: "seek-preview", hidden: true }, tile, label);
  const bar = el("div", { class: "seek-bar", id: "seek-bar", role: "slider", "aria-label": "Seek" }, fill);
  const wrap = el("div", { class: "seek" }, preview, bar);
  let cues = [];
  const sheets = new Map();
  api(storyboard.vtt_url, { raw: true })
    .then((text) => { cues = parseStoryboard(text); })
    .catch(() => {}); // no previews: the bar still seeks
  const duration = () => (Number.isFinite(video.duration) && video.duration) || (cues.length ? cues[cues.length - 1].end : 0);
  const timeAt = (event) => {
    const box = bar.getBoundingClientRect();
    const share = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
    return { share, time: share * duration(), x: event.clientX - box.left, width: box.width };
  };
  bar.addEventListener("pointermove", async (event) => {
    const at = timeAt(event);
    const cue = cues.find((c) => at.time >= c.start && at.time < c.end) || cues[cues.length - 1];
    label.textContent = formatDuration(at.time);
    preview.hidden = false;
    if (cue) {
      if (!sheets.has(cue.url)) sheets.set(cue.url, sheetUrl(cue.url));
      const url = await sheets.get(cue.url);
      Object.assign(tile.style, {
        width: `${cue.w}px`,
        height: `${cue.h}px`,
        backgroundImage: `url("${url}")`,
        backgroundPosition: `-${cue.x}px -${cue.y}px`,
      });
      tile.hidden = false;
    }
    const half = (cue ? cue.w : 60) / 2;
    preview.style.left = `${Math.min(at.width - half, Math.max(half, at.x))}px`;
  });
  bar.addEventListener("pointerleave", () => { preview.hidden = true; });
  bar.addEventListener("click", (event) => {
    const at = timeAt(event);
    if (duration()) video.currentTime = at.time;
  });
  video.addEventListener("timeupdate", () => {
    const total = duration();
    fill.style.width = total ? `${(100 * video.currentTime) / total}%` : "0";
  });
  return wrap;
}

function facts(file) {
  const rows = [
    ["Type", file.format],
    ["Size", `${formatBytes(file.size)} (${file.size.toLocaleString()} bytes)`],
    ["Uploaded", new Date(file.created_at).toLocaleString()],
    ["Expires", file.expires_at ? new Date(file.expires_at).toLocaleString() : "never"],
    // Downloads are counted only against a limit (each GET of a limited file reserves its
    // bytes); a file without one is not counted, so a count would always read 0.
    ["Downloads", file.max_downloads ? `${file.downloads} of ${file.max_downloads}` : "no limit"],
    ["Stored", [file.local ? "local disk" : null, `cloud: ${file.cloud_status}`].filter(Boolean).join(", ")],
  ];
  const media = file.media;
  if (media) {
    if (media.duration_s) rows.push(["Duration", formatDuration(media.duration_s)]);
    if (media.width && media.height) rows.push(["Picture", `${media.width} × ${media.height}`]);
    const codecs = media.streams.map((s) => `${s.kind} ${s.codec || "?"}`).join(", ");
    if (codecs) rows.push(["Streams", codecs]);
    if (media.bit_rate) rows.push(["Bit rate", formatBitRate(media.bit_rate)]);
    if (media.faststart === false) rows.push(["Faststart", "no: moov after the media data"]);
    if (media.playback) {
      rows.push(["Browsers", `${media.playback.plays_as_is ? "play it as it is" : "need a rendition"}: ${media.playback.reason}`]);
    }
  } else if (file.probe_status === "pending") {
    rows.push(["Media", "being examined…"]);
  } else if (file.probe_status === "skipped" && file.probe_error) {
    rows.push(["Media", file.probe_error]); // e.g. ffprobe is not installed on the server
  }
  const processing = file.processing;
  if (processing) {
    const state = processing.state === "running"
      ? `making the ${processing.step} (${Math.round(processing.percent)} %)`
      : processing.state;
    rows.push(["Processing", processing.error ? `${state}: ${processing.error}` : state]);
  }
  rows.push(["UID", el("code", {}, file.uid)]);
  rows.push(["SHA-256", el("code", { class: "hash" }, file.sha256)]);
  return el("dl", { class: "facts" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function actions(file) {
  const buttons = [
    el("a", { class: "button", href: `${API}/${file.uid}`, download: "" }, "Download"),
    el("a", { class: "button quiet", href: `${API}/${file.uid}?inline=true`, target: "_blank", rel: "noopener" }, "Open"),
  ];
  if (file.faststart_uid) {
    buttons.push(el("a", { class: "button quiet", href: `#/files/${file.faststart_uid}` }, "Faststart copy"));
  }
  if (file.derived_from) {
    buttons.push(el("a", { class: "button quiet", href: `#/files/${file.derived_from}` }, "Original"));
  }
  const token = loadTokens()[file.uid];
  if (token) {
    buttons.push(
      el(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: async () => {
            if (!confirm(`Delete ${displayName(file)}?`)) return;
            try {
              await api(`${API}/${file.uid}`, { method: "DELETE", headers: { "X-Delete-Token": token } });
              forgetToken(file.uid);
              location.hash = "#/";
              refreshList();
            } catch (error) {
              alert(`Could not delete: ${error.message}`);
            }
          },
        },
        "Delete",
      ),
    );
  }
  return el("div", { class: "actions" }, buttons);
}

function processingUnderWay(file) {
  const state = file.processing && file.processing.state;
  return state === "pending" || state === "running";
}

// While the file's rendition and storyboard are being made, its facts follow; once they are
// made, a rendition replaces the player, a storyboard adds previews to the one playing.
async function watchProcessing(file, serial) {
  let current = file;
  while (processingUnderWay(current)) {
    await new Promise((resolve) => { setTimeout(resolve, PROCESSING_POLL_MS); });
    if (serial !== renderSerial) return;
    try {
      current = await api(`${API}/${file.uid}/metadata`);
    } catch {
      return; // deleted, or the server went: the page stays as it is
    }
    if (serial !== renderSerial) return;
    $("detail").querySelector(".facts").replaceWith(facts(current));
  }
  const streams = (f) => Boolean(f.processing && f.processing.hls);
  if (playable(current).uid !== playable(file).uid || streams(current) !== streams(file)) {
    render();
    return;
  }
  const video = $("detail").querySelector("video#player");
  const storyboard = current.processing && current.processing.storyboard;
  if (video && storyboard && !$("seek-bar")) video.parentElement.after(seekBar(video, storyboard));
}

async function render() {
  markActive();
  const detail = $("detail");
  const uid = routeUid();
  const serial = ++renderSerial;
  if (!uid) {
    detail.replaceChildren(el("p", { class: "muted" }, "Choose a file to see its details and play it."));
    return;
  }
  detail.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const file = await api(`${API}/${uid}/metadata`);
    if (serial !== renderSerial) return; // the user went elsewhere meanwhile
    detail.replaceChildren(
      el("h2", { class: "name", id: "file-title" }, displayName(file)),
      ...player(file),
      actions(file),
      facts(file),
    );
    if (processingUnderWay(file)) watchProcessing(file, serial);
  } catch (error) {
    if (serial !== renderSerial) return;
    detail.replaceChildren(el("p", { class: "status error" }, error.message));
  }
}

// --- start ----------------------------------------------------------------------------------------

function start() {
  const keyInput = $("api-key");
  keyInput.value = apiKey();
  keyInput.addEventListener("change", () => {
    localStorage.setItem(API_KEY_KEY, keyInput.value.trim());
    refreshList();
  });
  setUpDropZone();
  setButtons("idle");
  showUnfinished();
  $("refresh").addEventListener("click", refreshList);
  $("more").addEventListener("click", () => loadFiles(true));
  window.addEventListener("hashchange", render);
  refreshList();
  render();
}

start();
