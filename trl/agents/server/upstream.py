"""Calls from the gateway to one vLLM server, with a deadline, raising with the server's own error text.

Bodies are encoded and answers decoded with msgspec (a dependency of vLLM): for a context of 8k token ids about 0.1
ms against 1.2 ms for the standard library's `json`. The connections are `http1.Http1Client`'s.
Not here: choosing the replica (`routing.py`) or what the calls mean (`recording.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from .http1 import Http1Client, Response
from .routing import ReplicaHandle


# Seconds spent waiting on each endpoint, and calls made (exported by the gateway's /metrics).
CALL_SECONDS: Counter = Counter()
CALLS: Counter = Counter()


class UpstreamError(Exception):
    """A server answered with an error status; `payload` is its JSON body (OpenAI-style when vLLM wrote it)."""

    def __init__(self, status: int, payload: dict[str, Any], replica: str):
        self.status, self.payload, self.replica = status, payload, replica
        super().__init__(f"{replica} answered {status}: {error_message(payload)}")


class GatewayError(Exception):
    """A request the gateway refuses itself (not vLLM); `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class ReplicaUnreachable(Exception):
    """A server did not answer in time or refused the connection (it is then marked down)."""

    def __init__(self, replica: ReplicaHandle, detail: str):
        self.replica = replica
        super().__init__(f"{replica.name} ({replica.url}) is unreachable: {detail}")


def error_message(payload: Any) -> str:
    """The human-readable message of an OpenAI-style (or FastAPI-style) error body."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "detail" in payload:
            return str(payload["detail"])
    return str(payload)


# vLLM's servers (uvicorn) close a keep-alive connection after 5 s idle; a request sent on it as it closes fails
# with "connection reset" (seen as a 503 in `make demo`). Drop idle connections on our side first.
UPSTREAM_KEEPALIVE_SECONDS = 2.0


def new_client() -> Http1Client:
    """The client the gateway makes its calls to vLLM servers with (no limit on connections; idle connections
    dropped before the upstream servers drop them)."""
    return Http1Client(keepalive=UPSTREAM_KEEPALIVE_SECONDS)


def encode(body: Any) -> bytes:
    """`body` as JSON bytes (UTF-8; NaN and infinities become null)."""
    return msgspec.json.encode(body)


def encode_sorted(value: Any) -> str:
    """`value` as JSON text with every object's keys sorted: equal for equal values, whatever their key order."""
    return msgspec.json.encode(value, order="sorted").decode()


def decode(raw: bytes) -> Any:
    """The JSON value in `raw`; `ValueError` (msgspec's `DecodeError`) when it is not JSON."""
    return msgspec.json.decode(raw)


async def post_json(session: Http1Client, replica: ReplicaHandle, path: str, body: Any, timeout: float) -> Any:
    """POST `body` to `replica` and return its JSON answer.

    Raises:
        UpstreamError: the server answered 4xx/5xx (its own error text is kept).
        ReplicaUnreachable: no answer within `timeout` (server kept up: it may be busy), or the connection failed
            (server marked down).
    """
    return await _call(session, replica, "POST", path, encode(body), timeout)


async def stream_json(
    session: Http1Client, replica: ReplicaHandle, path: str, body: Any, timeout: float
) -> AsyncIterator[dict[str, Any]]:
    """POST `body` to `replica` and yield each JSON object of its server-sent-event answer, up to `data: [DONE]`.

    `timeout` bounds the whole stream. Raises as `post_json` does; an error object sent inside the stream raises
    `UpstreamError` with its text. Closing the generator early closes the connection (vLLM then aborts the request).
    """
    async with _exchange(session, replica, "POST", path, encode(body), timeout) as response:
        if response.status >= 400:
            _answer(await response.read(), response.status, replica)
        async for line in response.lines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                await response.read()  # the body's last chunk: read, the connection can be kept
                return
            payload = decode(data)
            if isinstance(payload, dict) and "error" in payload and "choices" not in payload:
                status = payload["error"].get("code") if isinstance(payload["error"], dict) else None
                raise UpstreamError(status if isinstance(status, int) else 500, payload, replica.name)
            yield payload


async def get_json(session: Http1Client, replica: ReplicaHandle, path: str, timeout: float) -> Any:
    """GET `path` from `replica` and return its JSON answer; raises as `post_json` does."""
    return await _call(session, replica, "GET", path, None, timeout)


async def _call(
    session: Http1Client, replica: ReplicaHandle, method: str, path: str, data: bytes | None, timeout: float
) -> Any:
    async with _exchange(session, replica, method, path, data, timeout) as response:
        raw = await response.read()
    return _answer(raw, response.status, replica)


@contextlib.asynccontextmanager
async def _exchange(
    session: Http1Client, replica: ReplicaHandle, method: str, path: str, data: bytes | None, timeout: float
) -> AsyncIterator[Response]:
    """One request to `replica`, counted in its load and in the per-endpoint times, within `timeout` (reading the
    answer included); a failed connection marks the replica down."""
    replica.inflight += 1
    start = time.perf_counter()
    try:
        async with session.request(method, f"{replica.url}{path}", data, timeout) as response:
            yield response
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise ReplicaUnreachable(replica, f"no answer to {path} within {timeout:.0f} s") from exc
    except OSError as exc:
        replica.mark_down(f"{type(exc).__name__}: {exc}")
        raise ReplicaUnreachable(replica, f"{type(exc).__name__}: {exc}") from exc
    finally:
        replica.inflight -= 1
        CALL_SECONDS[path] += time.perf_counter() - start
        CALLS[path] += 1


def _answer(raw: bytes, status: int, replica: ReplicaHandle) -> Any:
    """The JSON of an answer; `UpstreamError` with the server's own text for an error status."""
    try:
        payload = decode(raw)
    except ValueError:
        payload = {"error": {"message": raw[:2000].decode(errors="replace") or f"HTTP {status}"}}
    if status >= 400:
        raise UpstreamError(status, payload, replica.name)
    return payload
