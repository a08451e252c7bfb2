"""What bounding a chunked body's framing costs: a chunked upload through uvicorn's own
httptools protocol and through ours (which hands a chunked body to the parser in pieces no
larger than the framing may still take), in this process, to an app that only counts the bytes.
Content-Length bodies go to the parser whole, as before. Timing lives here, never in the tests.

    .venv/bin/python benchmarks/chunked_parse.py [--mib 512] [--chunk-kib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mediasvc.server.uvicorn_protocol import HeaderLimits, protocol_factory


async def counting_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    payload = str(size).encode()
    headers = [(b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def best_seconds(http: Any, mib: int, chunk_bytes: int, rounds: int) -> float:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(counting_app, http=http, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while True:  # uvicorn sets a flag, no event, once it listens
        if server.started:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    chunk = b"%x\r\n" % chunk_bytes + b"x" * chunk_bytes + b"\r\n"
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        writer.write(b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(mib * (1 << 20) // chunk_bytes):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        best = min(best, time.perf_counter() - started)
    writer.close()
    server.should_exit = True
    await task
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ours = protocol_factory(
        HeaderLimits(max_header_bytes=16 * 1024, header_timeout_s=30.0, lingering_close_s=5.0)
    )
    for name, http in (("uvicorn", HttpToolsProtocol), ("mediasvc", ours)):
        seconds = uvloop.run(best_seconds(http, args.mib, args.chunk_kib * 1024, args.rounds))
        rate = args.mib / seconds
        print(f"{name:9} {args.mib} MiB chunked: best {seconds:.2f} s, {rate:.0f} MiB/s")


if __name__ == "__main__":
    main()
