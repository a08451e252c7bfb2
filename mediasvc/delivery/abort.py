"""Drop a connection whose client stopped reading, whatever ASGI server holds it.

ASGI has no "abort": an app that gives up on a response can only return, and the server then
closes the transport gracefully, which (asyncio's ``close()``) waits until its write buffer is
flushed, i.e. forever if the client never reads. Under our uvicorn protocol the scope carries
``ABORT_EXTENSION``, whose ``abort`` resets the connection (``transport.abort()``). Under another
server (granian) we find the connection's socket among the process's descriptors by its two
addresses and reset it: ``SO_LINGER`` 0, then ``shutdown``; the server's next write fails, its
transport closes, and the kernel drops the queued bytes. That fallback is Linux only
(``/proc/self/fd``); elsewhere, and when a proxy rewrote the client address, we fall back to the
server's own close.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
from collections.abc import Mapping
from typing import Any

from mediasvc.server import ABORT_EXTENSION

logger = logging.getLogger(__name__)

FD_DIR = "/proc/self/fd"


def abort_connection(scope: Mapping[str, Any]) -> bool:
    """Reset the TCP connection of ``scope``; False if it could not be found."""
    extension = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if extension is not None:
        extension["abort"]()
        return True
    return _reset_socket_of(scope)


def _reset_socket_of(scope: Mapping[str, Any]) -> bool:
    server, client = scope.get("server"), scope.get("client")
    if not server or not client:
        return False
    wanted = ((str(server[0]), int(server[1])), (str(client[0]), int(client[1])))
    try:
        names = os.listdir(FD_DIR)
    except OSError:
        return False
    for name in names:
        sock = _socket_copy(int(name))
        if sock is None:
            continue
        with sock:
            try:
                local, peer = sock.getsockname(), sock.getpeername()
            except OSError:
                continue
            if not isinstance(local, tuple) or not isinstance(peer, tuple):
                continue
            if ((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1]))) != wanted:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
            return True
    return False


def _socket_copy(fd: int) -> socket.socket | None:
    """A socket object on a duplicate of ``fd`` (ours to close), if ``fd`` is a TCP socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock
