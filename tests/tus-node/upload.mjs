// One tus-js-client upload under Node, for tests/test_tus_clients.py.
//
//   node upload.mjs '{"mode": "stream", "endpoint": "...", "path": "...", "chunkSize": 1048576}'
//
// Modes: "stream" (a Readable that is not a file: tus-js-client keeps only the current chunk,
// with uploadSize), "parallel" (parallelUploads over a file's ReadStream, joined by
// concatenation), "deferred" (uploadLengthDeferred, from a Buffer: a deferred length fed from
// a Node stream hung in 4.3.1), "terminate" (abort(true) when a line arrives on stdin).
// Prints one JSON line: {"ok": true, "url", "contentLocation", "retries", "progress"} or
// {"ok": false, "error"}. Exits 0 either way; the test reads the line.
import fs from "node:fs";
import { PassThrough } from "node:stream";

import * as tus from "tus-js-client";

const args = JSON.parse(process.argv[2]);
let retries = 0;
let lastSent = 0;

function report(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function source() {
  if (args.mode === "stream") {
    // Piped through a PassThrough: a plain Readable, so not read by path (random access).
    return fs.createReadStream(args.path).pipe(new PassThrough());
  }
  if (args.mode === "parallel") return fs.createReadStream(args.path);
  return fs.readFileSync(args.path);
}

const options = {
  endpoint: args.endpoint,
  chunkSize: args.chunkSize,
  metadata: { filename: args.filename || "node upload.bin", filetype: "application/octet-stream" },
  headers: args.headers || {},
  // Fast retries: the test cuts the connection on purpose.
  retryDelays: args.retryDelays || [0, 100, 200, 500, 1000, 2000],
  storeFingerprintForResuming: false,
  onShouldRetry(error, attempt) {
    retries = attempt + 1;
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    return status === 0 || status >= 500 || status === 409 || status === 423;
  },
  onProgress(sent) {
    lastSent = sent;
  },
};
if (args.mode === "stream") options.uploadSize = fs.statSync(args.path).size;
if (args.mode === "parallel") options.parallelUploads = args.parallel;
if (args.mode === "deferred") options.uploadLengthDeferred = true;

const upload = new tus.Upload(source(), {
  ...options,
  onSuccess({ lastResponse }) {
    report({
      ok: true,
      url: upload.url,
      contentLocation: lastResponse.getHeader("Content-Location") || null,
      retries,
      progress: lastSent,
    });
  },
  onError(error) {
    report({ ok: false, error: String(error), retries });
  },
});

if (args.mode === "terminate") {
  // The test says when (a line on stdin, once the proxy holds the PATCH mid-body): progress
  // events are throttled and may stop before any threshold is seen.
  process.stdin.once("data", async () => {
    await upload.abort(true);
    report({ ok: true, url: upload.url, terminated: true, progress: lastSent });
    process.stdin.destroy();
  });
}
upload.start();
