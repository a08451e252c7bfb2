"""Time to first byte of Range requests, from a raw keep-alive socket (no client library in
the figure): the time from the request's last byte sent to the response's first byte."""

from __future__ import annotations

import random
import socket
import time
from urllib.parse import urlsplit

MiB = 1024 * 1024


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, float]:
    """Read one response (Content-Length framed) whole; (status, perf_counter at its first
    byte). ``buffer`` holds what was read past it (nothing, with one request at a time)."""
    first_at = 0.0
    while b"\r\n\r\n" not in buffer:
        piece = sock.recv(1 << 20)
        if not piece:
            raise ConnectionError("the server closed the connection")
        if not first_at:
            first_at = time.perf_counter()
        buffer += piece
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    left = length - len(rest)
    while left > 0:
        piece = sock.recv(min(left, 4 * MiB))
        if not piece:
            raise ConnectionError("the server closed the connection mid-body")
        left -= len(piece)
    buffer.clear()
    return status, first_at


def range_ttfb_ms(
    url: str, size: int, *, count: int, range_bytes: int = MiB, seed: int = 18
) -> list[float]:
    """``count`` GETs of ``range_bytes`` at random offsets of a ``size``-byte file at ``url``,
    one after the other on one connection; each must be a 206. Their TTFBs in ms."""
    parts = urlsplit(url)
    rng = random.Random(seed)
    samples: list[float] = []
    buffer = bytearray()
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = rng.randrange(0, size - range_bytes)
            request = (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Range: bytes={start}-{start + range_bytes - 1}\r\n\r\n"
            ).encode()
            sock.sendall(request)
            sent_at = time.perf_counter()
            status, first_at = _read_response(sock, buffer)
            if status != 206:
                raise RuntimeError(f"GET {url} with a Range: {status}")
            samples.append((first_at - sent_at) * 1000)
    return samples
