"""A loopback TCP proxy for the resumable-upload tests: counts the bytes clients send through
it, and cuts or holds a connection once a number of them has crossed.

It runs its own asyncio loop in a thread, so synchronous tests (a Node or CLI subprocess, the
Playwright browser) can use it. A cut resets the client's side (RST: a network error mid-body)
and ends the server's side after every byte forwarded so far (FIN: an RST would make the
server's kernel drop what it had received and not yet read, which a real break does not). A hold
stops forwarding the crossing connection's bytes (the server sees a client gone quiet) until
`drop_all` or the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.sent = 0  # bytes clients sent through the proxy (towards the server), all told
        self.connections = 0
        self.cuts = 0
        self.holds = 0
        self.cut_at: int | None = None  # one-shot: abort every connection when `sent` crosses
        self.hold_at: int | None = None  # one-shot: the crossing connection stops forwarding
        self._loop = asyncio.new_event_loop()
        self._clients: set[asyncio.StreamWriter] = set()
        self._servers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def drop_all(self) -> None:
        """Abort every open connection (a held one too), as a network that went away."""
        done = threading.Event()

        def drop() -> None:
            self._cut()
            done.set()

        self._loop.call_soon_threadsafe(drop)
        done.wait(10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Stopped: abort what is open, let the connections' tasks end, then close the loop.
        server.close()
        self._cut()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._clients.add(client_w)
        self._servers.add(server_w)
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, upstream=True),
                self._pump(server_r, client_w, upstream=False),
            )
        finally:
            self._clients.discard(client_w)
            self._servers.discard(server_w)
            client_w.transport.abort()
            server_w.close()

    def _cut(self) -> None:
        for client in list(self._clients):
            client.transport.abort()
        for server in list(self._servers):
            with contextlib.suppress(OSError):
                server.write_eof()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                if upstream:
                    self.sent += len(data)
                    if self.hold_at is not None and self.sent >= self.hold_at:
                        self.hold_at = None
                        self.holds += 1
                        await asyncio.Event().wait()  # never forwards again (until dropped)
                    if self.cut_at is not None and self.sent >= self.cut_at:
                        self.cut_at = None
                        self.cuts += 1
                        self._cut()
                        return
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


@contextlib.contextmanager
def proxy_to(port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(port).start()
    try:
        yield proxy
    finally:
        proxy.close()
