"""The peers and baselines that `benchmarks/run.py` measures mediasvc against.

Served by the same uvicorn as mediasvc (httptools, uvloop, the same GLIBC_TUNABLES):

- ``count_app``: pure ASGI, counts the request body and discards it. The "same server counting"
  ceiling: what uvicorn itself costs before any hashing or writing.
- ``naive_app``: FastAPI with ``UploadFile`` and a copy to disk, the way most tutorials do it
  (``UploadFile`` spools the file to a temp file first, then the handler copies it again).
- ``file_app``: Starlette ``FileResponse`` with its defaults (64 KiB reads), Range included.

And, run as a script, a discarding socket: a minimal HTTP/1.1 server that answers
``100 Continue``, reads ``Content-Length`` bytes into one reused buffer and says 200. It measures
what curl itself can send over loopback (the client's ceiling).

    python benchmarks/apps.py discard --port P
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, UploadFile
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

MiB = 1024 * 1024

# --- same server, counting only ------------------------------------------------------------


async def count_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = b'{"size": %d}' % size
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- naive FastAPI UploadFile ----------------------------------------------------------------

UPLOAD_DIR = Path(os.environ.get("BENCH_UPLOAD_DIR", "/tmp"))
naive_app = FastAPI()


@naive_app.post("/upload")
async def naive_upload(file: UploadFile) -> dict[str, Any]:
    # The common way: FastAPI has already spooled the whole file to a temp file; copy it out.
    dest = UPLOAD_DIR / f"naive-{uuid.uuid4().hex}"
    with dest.open("wb") as out:
        shutil.copyfileobj(file.file, out)
    return {"path": str(dest), "filename": file.filename, "size": dest.stat().st_size}


# --- Starlette FileResponse with its defaults ----------------------------------------------

FILE_ROOT = Path(os.environ.get("BENCH_FILE_ROOT", "/nonexistent"))


async def serve_file(request: Request) -> FileResponse | JSONResponse:
    path = FILE_ROOT / request.path_params["name"]
    if path.parent != FILE_ROOT or not path.is_file():
        return JSONResponse({"detail": "not found"}, status_code=404)
    return FileResponse(path)


file_app = Starlette(routes=[Route("/files/{name}", serve_file)])


# --- the discarding socket -----------------------------------------------------------------


def _discard_connection(conn: socket.socket) -> None:
    buffer = bytearray(4 * MiB)
    view = memoryview(buffer)
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
        header_blob, _, rest = head.partition(b"\r\n\r\n")
        headers = {}
        for line in header_blob.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        length = int(headers.get(b"content-length", b"0"))
        if headers.get(b"expect") == b"100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        remaining = length - len(rest)
        while remaining > 0:
            got = conn.recv_into(view, min(remaining, len(buffer)))
            if not got:
                return
            remaining -= got
        body = b'{"size": %d}' % length
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )


def discard_server(port: int) -> None:
    with socket.create_server(("127.0.0.1", port), backlog=64) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_discard_connection, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["discard"])
    parser.add_argument("--port", type=int, required=True)
    discard_server(parser.parse_args().port)
