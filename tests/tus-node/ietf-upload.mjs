// One tus-js-client upload in one of its IETF draft modes, under Node, for tests/test_ietf_e2e.py.
//
//   node ietf-upload.mjs '{"endpoint": "...", "path": "...", "protocol": "ietf-draft-05", "chunkSize": 1048576}'
//
// protocol: "ietf-draft-05" (interop 6) or "ietf-draft-03" (interop 5). The file is read from a
// Buffer (tus-js-client slices it per request). Network errors are retried at once: the test
// cuts connections on purpose. Prints one JSON line, {"ok": true, "url", "contentLocation",
// "retries"} or {"ok": false, "error"}, and exits 0 either way.
import fs from "node:fs";

import * as tus from "tus-js-client";

const args = JSON.parse(process.argv[2]);
let retries = 0;

function report(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const upload = new tus.Upload(fs.readFileSync(args.path), {
  endpoint: args.endpoint,
  protocol: args.protocol,
  chunkSize: args.chunkSize,
  metadata: { filename: "node ietf.bin", filetype: "application/octet-stream" },
  retryDelays: [0, 100, 200, 500, 1000, 2000],
  storeFingerprintForResuming: false,
  onShouldRetry(error, attempt) {
    retries = attempt + 1;
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    return status === 0 || status >= 500 || status === 409 || status === 423;
  },
  onSuccess({ lastResponse }) {
    report({
      ok: true,
      url: upload.url,
      contentLocation: lastResponse.getHeader("Content-Location") || null,
      retries,
    });
  },
  onError(error) {
    report({ ok: false, error: String(error), retries });
  },
});
upload.start();
