"""A small HTTP/1.1 client for the gateway's JSON calls to the vLLM servers it was started with.

Why not aiohttp: a recorded turn makes three calls (render, generate, derender), and per call aiohttp's client spent
about 470 us of CPU here against about 80 us for a plain keep-alive exchange (`benchmarks/bench_gateway_cpu.py`,
RESULTS.md section 7): the gateway's largest cost per turn. This client keeps idle connections per server, writes
one request with a body of bytes, and parses the answer with `httptools` (uvicorn's parser: Content-Length and
chunked bodies), read whole (`Response.read`) or line by line as it arrives (`Response.lines`, for server-sent
events). Every wait has the call's deadline.

Not here: TLS client certificates, proxies, redirects, cookies, compression, HTTP/2, answers whose body ends only
when the connection closes (the servers are vLLM's own uvicorn servers at URLs the gateway was given: their answers
carry a Content-Length or are chunked); what the calls mean and their errors (`upstream.py`); the gateway's
pass-through routes (aiohttp, `gateway.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from urllib.parse import urlsplit

import httptools


class HttpProtocolError(ConnectionError):
    """The server closed the connection early or sent something that is not HTTP/1.1."""


@lru_cache(maxsize=256)
def _target(url: str) -> tuple[tuple[str, str, int], str, bytes]:
    """(scheme, host, port), the request target and the Host header of `url`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), target, parts.netloc.encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the transport, the parser of the answer in progress, a waiter woken by data."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._waiter: asyncio.Future | None = None
        self.idle_since = 0.0
        self.reset()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body: list[bytes] = []
        self.headers_done = self.complete = self.keep_alive = self.answered = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.lost = HttpProtocolError(f"malformed HTTP answer: {exc}")
            self.transport.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = HttpProtocolError(f"server closed the connection{f' ({exc})' if exc else ''}")
        self._wake()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is complete
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.idle_since = time.monotonic()  # the server's idle timer starts now, not when the caller lets go

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, deadline: float) -> None:
        """Until more of the answer has arrived (or the connection ended); `TimeoutError` past `deadline`."""
        if self.lost is not None and not self.complete:
            raise self.lost
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.lost is not None and not self.complete and not self.body:
            raise self.lost

    def reusable(self) -> bool:
        return self.complete and self.lost is None and self.keep_alive


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """The answer to one request: `status` once its headers have arrived, then its body."""

    def __init__(self, connection: _Connection, deadline: float):
        self._connection = connection
        self._deadline = deadline
        self.status = connection.status

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, until the answer is complete."""
        connection = self._connection
        while True:
            if connection.body:
                pieces, connection.body = connection.body, []
                yield b"".join(pieces)
                continue
            if connection.complete:
                return
            if connection.lost is not None:
                raise connection.lost
            await connection.wait(self._deadline)

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([piece async for piece in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (each without its line break), as the lines arrive."""
        pending: list[bytes] = []  # the start of a line whose end has not arrived
        async for piece in self.chunks():
            if b"\n" not in piece:
                pending.append(piece)
                continue
            *lines, rest = (b"".join(pending) + piece).split(b"\n")
            pending = [rest] if rest else []
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield b"".join(pending).rstrip(b"\r")


class Http1Client:
    """Keep-alive HTTP/1.1 connections to a few servers; idle ones are dropped after `keepalive` seconds (before
    the servers drop them: uvicorn closes idle connections after 5 s, and a request sent as it does fails)."""

    def __init__(self, keepalive: float = 2.0):
        self.keepalive = keepalive
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    @contextlib.asynccontextmanager
    async def request(self, method: str, url: str, body: bytes | None, timeout: float) -> AsyncIterator[Response]:
        """Send one request and yield its `Response` once the status line and headers have arrived.

        Raises `TimeoutError` when no answer (or no more of it) comes within `timeout` seconds of the call,
        `OSError` (`ConnectionError`, `HttpProtocolError`) when the connection fails. A kept connection that the
        server closed before answering (its idle timeout, racing the request) is retried once on a new one: the
        server read nothing from it. The connection goes back to the pool only when the answer was read to its end.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        server, target, host = _target(url)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target.encode(), host)
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        data = [head, b"\r\n", body or b""]
        connection, kept = await self._connect(server, deadline)
        try:
            try:
                await self._send(connection, data, deadline)
            except HttpProtocolError:
                if not kept or connection.answered:
                    raise
                connection.transport.abort()
                connection, _ = await self._connect(server, deadline, fresh=True)
                await self._send(connection, data, deadline)
            yield Response(connection, deadline)
        finally:
            if connection.reusable():
                connection.reset()
                self._idle.setdefault(server, []).append(connection)
            else:
                connection.transport.abort()  # not close(): a server that reads nothing must still see us leave

    @staticmethod
    async def _send(connection: _Connection, data: list[bytes], deadline: float) -> None:
        """Write the request and wait for the answer's headers."""
        connection.transport.writelines(data)
        while not connection.headers_done:
            await connection.wait(deadline)

    async def _connect(
        self, server: tuple[str, str, int], deadline: float, fresh: bool = False
    ) -> tuple[_Connection, bool]:
        """A connection to `server`, and whether it was kept from an earlier request."""
        idle = self._idle.get(server)
        now = time.monotonic()
        while idle and not fresh:
            connection = idle.pop()  # the most recently used first
            if connection.lost is None and now - connection.idle_since < self.keepalive:
                return connection, True
            connection.transport.close()
        scheme, host, port = server
        loop = asyncio.get_running_loop()
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        connect = loop.create_connection(_Connection, host, port, ssl=self._ssl if scheme == "https" else None)
        _, connection = await asyncio.wait_for(connect, max(0.0, deadline - loop.time()))
        return connection, False

    async def close(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for connection in connections:
                connection.transport.close()
        self._idle.clear()
