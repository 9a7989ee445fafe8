"""Every error the gateway answers with, mapped to an HTTP response in one place (`register_error_handlers`).

Code anywhere below the routes raises; nothing returns an error response itself. What each exception becomes:

* `GatewayError` and its subclasses (`TurnError`, `SyncError`, `Unauthorized` and `ServiceUnavailable` below): a
  request the gateway refuses itself: OpenAI-style JSON (`protocol.error_response`) with the exception's status and
  message; the `type` is the one `ERROR_TYPES` gives its class (`None`: the default for the status).
* `SessionClosed`: 410 `SessionClosedError` naming the session (an agent calling after its episode ended).
* `NoReplicaAvailable`, `ReplicaUnreachable`: 503 `ServiceUnavailableError` with the exception's message.
* `UpstreamError`: vLLM's own answer, passed on unchanged (its status and its JSON body).
* FastAPI's and Starlette's own errors (no such route, wrong method, invalid parameters): OpenAI-style JSON too.
* Anything else: 500 `ServerError` naming the exception, logged with its traceback.

A streamed turn that fails after its first event has already sent its 200: `describe` gives the same status, message
and type for the error event the stream then ends with (`Gateway.stream_turn`).

Every error response is counted in `Gateway.errors` by status (exported by `/metrics`), including vLLM's.
Not here: what raises them (the `Gateway` in `gateway.py`, the routes under `routes/`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .recording import TurnError
from .routing import NoReplicaAvailable
from .sessions import SessionClosed
from .upstream import GatewayError, ReplicaUnreachable, UpstreamError, error_message
from .weight_sync import SyncError


if TYPE_CHECKING:
    from .gateway import Gateway


logger = logging.getLogger("trl.agents.gateway")


class Unauthorized(GatewayError):
    """A control route called without the gateway's bearer token."""

    def __init__(self) -> None:
        super().__init__(401, "missing or wrong bearer token for a control endpoint")


class ServiceUnavailable(GatewayError):
    """A replica or render server that the request needs is down."""

    def __init__(self, message: str):
        super().__init__(503, message)


# The OpenAI error `type` of each kind of refusal; `None`: the default for its status (`protocol.error_response`).
# A subclass not listed takes its nearest listed base's entry (Starlette looks handlers up along the class's MRO).
ERROR_TYPES: dict[type[GatewayError], str | None] = {
    GatewayError: None,
    TurnError: None,
    Unauthorized: "AuthenticationError",
    ServiceUnavailable: "ServiceUnavailableError",
    SyncError: "WeightSyncError",
}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def _refusal(request: Request, exc: Exception) -> JSONResponse:
    """The gateway's own refusals and failures, as `describe` maps them."""
    return _gateway(request).fail(*describe(exc, f"{request.method} {request.url.path}"))


async def _upstream(request: Request, exc: UpstreamError) -> JSONResponse:
    _gateway(request).errors[exc.status] += 1
    return JSONResponse(exc.payload, status_code=exc.status)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _gateway(request).fail(400, f"invalid request: {exc.errors()}")


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _gateway(request).fail(exc.status_code, str(exc.detail))


def describe(exc: Exception, where: str = "a stream") -> tuple[int, str, str | None]:
    """The status, message and OpenAI error type of `exc` (see the module docstring); unexpected ones are logged
    with their traceback, naming `where` they happened. vLLM's errors (`UpstreamError`) keep vLLM's message; as an
    HTTP answer they are passed on whole (`_upstream`)."""
    if isinstance(exc, GatewayError):
        return exc.status, str(exc), next((ERROR_TYPES[c] for c in type(exc).__mro__ if c in ERROR_TYPES), None)
    if isinstance(exc, SessionClosed):
        return 410, str(exc), "SessionClosedError"
    if isinstance(exc, (NoReplicaAvailable, ReplicaUnreachable)):
        return 503, str(exc), "ServiceUnavailableError"
    if isinstance(exc, UpstreamError):
        return exc.status, error_message(exc.payload), None
    logger.error("unexpected error on %s", where, exc_info=exc)
    return 500, f"gateway error: {type(exc).__name__}: {exc}", "ServerError"


def register_error_handlers(app: FastAPI) -> None:
    """Map every exception above to its response on `app` (whose `state.gateway` counts them)."""
    for exc_class in [*ERROR_TYPES, SessionClosed, NoReplicaAvailable, ReplicaUnreachable]:
        app.add_exception_handler(exc_class, _refusal)
    app.add_exception_handler(UpstreamError, _upstream)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _refusal)  # Starlette re-raises it after answering, for the server log
