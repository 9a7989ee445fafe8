"""What the routes share: the app's `Gateway`, the bearer-token check of control routes, reading a JSON body.

Not here: validating what a body holds (the agent's requests are vLLM's to validate; the weight bodies are models in
`protocol.py`), error responses (`errors.py`: these functions raise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..errors import Unauthorized
from ..protocol import Body, parse_weights_body
from ..upstream import GatewayError, decode


if TYPE_CHECKING:
    from ..gateway import Gateway


def gateway_of(request: Request) -> Gateway:
    """The `Gateway` that `create_app` put on the app's state."""
    return request.app.state.gateway


async def require_token(request: Request) -> None:
    """Dependency of every control route: the gateway's bearer token, when it has one (401 otherwise)."""
    if not gateway_of(request).authorized(request.headers.get("authorization", "")):
        raise Unauthorized()


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, unvalidated otherwise: 413 above the size limit, 400 when it is not one."""
    raw = await request.body()
    limit = gateway_of(request).config.max_body_bytes
    if len(raw) > limit:
        raise GatewayError(413, f"request body of {len(raw)} bytes exceeds {limit}")
    try:
        body = decode(raw)
    except ValueError as exc:  # msgspec's DecodeError: not JSON, or not UTF-8
        raise GatewayError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    return body


async def weights_body(request: Request, model: type[Body]) -> Body:
    """The body of a weight route as `model` (an empty body is `{}`; see `protocol.parse_weights_body`)."""
    body = await json_object(request) if await request.body() else {}
    return parse_weights_body(model, body)
