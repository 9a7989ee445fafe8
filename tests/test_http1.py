"""The gateway's HTTP/1.1 client (`trl.agents.server.http1`) against a real uvicorn server and a raw socket server on
loopback: connections kept and dropped, bodies whole and streamed, deadlines, servers that break off or send junk."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from trl.agents.server.http1 import Http1Client, HttpProtocolError
from trl.agents.server.upstream import decode, encode


async def echo(request: Request):
    return JSONResponse({"body": decode(await request.body()), "port": request.client.port})


async def stream(request: Request):
    async def lines():
        for i in range(4):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.2)

    return StreamingResponse(lines(), media_type="text/event-stream")


async def slow(request: Request):
    await asyncio.sleep(3)
    return JSONResponse({})


@pytest.fixture(scope="module")
def server_url():
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream), Route("/slow", slow)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def run(coroutine):
    return asyncio.run(coroutine)


async def post(client: Http1Client, url: str, body, timeout: float = 10):
    async with client.request("POST", url, encode(body), timeout) as response:
        return response.status, decode(await response.read())


def test_a_connection_is_kept_for_the_next_call_and_dropped_when_idle_too_long(server_url):
    async def main():
        client = Http1Client(keepalive=0.5)
        big = {"ids": list(range(50_000)), "text": "é" * 1000}
        answers = [await post(client, f"{server_url}/echo", {**big, "i": i}) for i in range(5)]
        assert [status for status, _ in answers] == [200] * 5
        assert [a["body"]["i"] for _, a in answers] == list(range(5)) and answers[0][1]["body"]["ids"] == big["ids"]
        ports = {a["port"] for _, a in answers}
        assert len(ports) == 1  # one connection, kept alive
        await asyncio.sleep(0.7)  # past keepalive: a new connection
        _, later = await post(client, f"{server_url}/echo", {})
        assert later["port"] not in ports
        await client.close()

    run(main())


def test_a_streamed_body_arrives_line_by_line_as_it_is_sent(server_url):
    async def main():
        client = Http1Client()
        seen = []
        async with client.request("GET", f"{server_url}/stream", None, 10) as response:
            assert response.status == 200
            async for line in response.lines():
                if line:
                    seen.append((line, time.monotonic()))
        assert [line for line, _ in seen] == [f"data: {i}".encode() for i in range(4)]
        assert seen[-1][1] - seen[0][1] > 0.4  # not buffered to the end
        status, _ = await post(client, f"{server_url}/echo", {})  # the connection was read to its end: reusable
        assert status == 200
        await client.close()

    run(main())


def test_the_deadline_bounds_the_wait_and_the_client_keeps_working(server_url):
    async def main():
        client = Http1Client()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with client.request("GET", f"{server_url}/slow", None, 0.3) as response:
                await response.read()
        assert time.monotonic() - start < 2
        assert (await post(client, f"{server_url}/echo", {"after": 1}))[1]["body"] == {"after": 1}
        await client.close()

    run(main())


def raw_server(answer: bytes) -> tuple[str, threading.Thread]:
    """A one-shot socket server that reads a request, sends `answer` and closes the connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(answer)
        connection.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


@pytest.mark.parametrize(
    "answer, match",
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut":', "closed the connection"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "closed the connection"),
        (b"this is not HTTP\r\n\r\n", "malformed HTTP answer"),
    ],
)
def test_a_server_that_breaks_off_or_sends_junk_raises_a_connection_error(answer, match):
    url, thread = raw_server(answer)

    async def main():
        client = Http1Client()
        with pytest.raises(HttpProtocolError, match=match):
            async with client.request("POST", f"{url}/x", b"{}", 5) as response:
                await response.read()
        assert not client._idle.get(("http", "127.0.0.1", int(url.rsplit(":", 1)[1])))  # not pooled

    run(main())
    thread.join(5)


def test_a_refused_connection_is_an_os_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()

    async def main():
        with pytest.raises(OSError):
            await post(Http1Client(), f"http://127.0.0.1:{port}/x", {})

    run(main())


def test_a_kept_connection_closed_before_answering_is_retried_once_on_a_new_one():
    """The server's idle timeout can close a kept connection just as a request goes out on it: the server read
    nothing, so the request is sent again on a new connection (once), instead of failing the turn."""
    listener = socket.create_server(("127.0.0.1", 0))
    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{"ok": %d}'
    requests: list[bytes] = []

    def serve():
        first, _ = listener.accept()
        requests.append(first.recv(65536))
        first.sendall(answer % 1)
        requests.append(first.recv(65536))  # the second request, on the kept connection: dropped unanswered
        first.close()
        second, _ = listener.accept()
        requests.append(second.recv(65536))
        second.sendall(answer % 2)
        second.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"

    async def main():
        client = Http1Client()
        assert await post(client, url, {"n": 1}) == (200, {"ok": 1})
        assert await post(client, url, {"n": 2}) == (200, {"ok": 2})

    run(main())
    thread.join(5)
    assert [decode(r.split(b"\r\n\r\n", 1)[1]) for r in requests] == [{"n": 1}, {"n": 2}, {"n": 2}]
