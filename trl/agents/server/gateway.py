"""The gateway in front of the vLLM replicas: every route it adds, and why it exists.

vLLM serves the OpenAI API, chat templates, tool and reasoning parsers, sampling and weight transfer. The gateway
adds only what training needs, each route for one reason:

* `POST /sessions/{sid}/v1/chat/completions`, `POST /sessions/{sid}/v1/completions`, and the Anthropic Messages and
  OpenAI Responses APIs `POST /sessions/{sid}/v1/messages`, `POST /sessions/{sid}/v1/responses` (recorded as chat
  turns: `messages_api.py`, `responses_api.py`): the agent's base URL is its episode's identity, so unmodified agents
  are recorded token-exactly (`recording.py`) and pinned to one replica.
* `GET /sessions/{sid}/v1/models`: agents list models at their base URL before chatting.
* `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`: unrecorded traffic (evaluation, smoke
  tests) still needs one address for all replicas; forwarded byte-for-byte to the least busy one.
* `GET /sessions/{sid}/trajectory`, `DELETE /sessions/{sid}`, `GET /sessions`: the trainer reads episodes and
  frees memory (control plane: bearer token when `--api-token` is set).
* `POST /weights/{init,start,update,finish,abort,lora}`, `GET /weights`: the trainer's weight sync, fanned out to
  every replica through vLLM's own weight-transfer routes (`weight_sync.py`; control plane). `GET /weights/layout`:
  the ranks each replica takes in an NCCL group with the trainer, so the trainer needs no rank arithmetic.
* `GET /health`: one answer for all replicas (503 with the reason when any is down).
* `GET /metrics`: sessions, turns, tokens, forks, errors, per-replica load, in Prometheus text format.

Errors are OpenAI-style JSON; errors from vLLM are passed on with its own status and message.

Where things are: `GatewayConfig` and `Gateway` (the state and the work: one method per thing a route does) are
here, with `create_app`, which puts one `Gateway` on `app.state`. The routes are thin, one `APIRouter` per family
under `routes/` (listed in its `__init__`); errors are raised anywhere and turned into responses in one place
(`errors.py`); the bodies the gateway reads itself are models in `protocol.py`.
Not here: starting processes (`launch.py`), the turn pipeline (`recording.py`), the weight-sync phases
(`weight_sync.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from . import messages_api, responses_api
from .errors import ServiceUnavailable, describe, register_error_handlers
from .http1 import Http1Client
from .protocol import completion_stream, error_response, json_response, sse, stream_error
from .recording import Recorder, Timeouts
from .routes import ROUTERS
from .routing import ReplicaHandle, Router
from .sessions import Session, SessionStore
from .upstream import CALL_SECONDS, CALLS, UPSTREAM_KEEPALIVE_SECONDS, GatewayError, get_json, new_client
from .weight_sync import SyncConfig, WeightSync


logger = logging.getLogger("trl.agents.gateway")
# The events that end each API's stream: an error after one of them is logged, not sent.
FINAL_EVENTS = ("data: [DONE]", "event: message_stop", "event: response.completed", "event: response.incomplete")
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class GatewayConfig:
    """Settings of the gateway.

    Args:
        replicas: `(name, url)` of every vLLM replica.
        render_urls: URLs of vLLM render servers (`vllm launch render`) for rendering and parsing; replica i uses
            render server i modulo their number. With none, each session's replica renders and parses.
        api_token: Bearer token required by control endpoints; `None` leaves them open (loopback use).
        max_model_len: Context length of the served model; read from the first replica when `None`.
        health_interval: Seconds between health checks of the replicas.
        timeouts: Deadlines of the calls of one turn.
        max_body_bytes: Largest request body accepted (413 above it).
        sync: Deadlines of weight syncs.
        journal_dir: Folder where every session is journaled as it is recorded, and reloaded from at start (a
            restarted gateway keeps its trajectories); `None` keeps sessions in memory only.
        weight_transfer_backend: The replicas' weight-transfer backend (`nccl`, `trl_agents_shm`, ...), reported to
            trainers so that `ServerClient` picks the same one; `None` when unknown.
        stream_interval: Tokens per engine chunk of a streamed turn after its first (vLLM's `stream_interval`
            sampling parameter): fewer, larger chunks cost the replica, the gateway and the render server less.
    """

    replicas: list[tuple[str, str]]
    render_urls: list[str] = field(default_factory=list)
    api_token: str | None = None
    max_model_len: int | None = None
    health_interval: float = 2.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_body_bytes: int = 64 * 1024 * 1024
    sync: SyncConfig = field(default_factory=SyncConfig)
    journal_dir: str | None = None
    weight_transfer_backend: str | None = None
    stream_interval: int = 1


class Gateway:
    """The gateway's state and its work, one method per thing a route does; a method that refuses raises (the
    exceptions of `errors.py`, `GatewayError` and its subclasses, `NoReplicaAvailable`, ...), never answers itself.

    State: the replicas (`router`) and render servers, the sessions, the recorder, the weight sync (which holds the
    policy version), and the counters `/metrics` exports (`turns`, `tokens`, `errors`).
    """

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.router = Router([ReplicaHandle(name, url.rstrip("/")) for name, url in config.replicas])
        self.sessions = SessionStore(config.journal_dir)
        for session in self.sessions:  # reloaded from the journal: back on their replica
            session.replica = self.router.adopt_session(session.session_id, session.replica)
        # created in `start`, inside the server's event loop: the calls of turns, syncs and health checks, and the
        # pass-through routes' client (aiohttp: any method, headers and streamed answers)
        self.http: Http1Client | None = None
        self.client: aiohttp.ClientSession | None = None
        self.renderers = [ReplicaHandle(f"render-{i}", url.rstrip("/")) for i, url in enumerate(config.render_urls)]
        renderer_of = {
            r.name: self.renderers[i % len(self.renderers)] for i, r in enumerate(self.router.replicas)
        } if self.renderers else {}  # fmt: skip
        self.recorder = Recorder(None, config.max_model_len or 0, config.timeouts, renderer_of, config.stream_interval)
        self.weights = WeightSync(self.router, config.sync, config.weight_transfer_backend)
        self.turns = 0
        self.tokens = Counter()  # "sampled" / "inserted"
        self.errors = Counter()  # HTTP status -> count

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.http = self.recorder.client = self.weights.client = new_client()
        self.client = new_proxy_session()
        await self.check_health()
        if not self.config.max_model_len:
            models = await get_json(self.http, self.router.pick(), "/v1/models", 30)
            self.recorder.max_model_len = int(models["data"][0]["max_model_len"])

    async def close(self) -> None:
        await self.client.close()
        await self.http.close()

    async def check_health(self) -> None:
        await self.router.check_health(self.http, extra=self.renderers)

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await self.check_health()

    # -- recorded turns ----------------------------------------------------------------------------------------

    async def run_turn(self, sid: str, body: dict[str, Any], kind: str) -> dict[str, Any]:
        """Record one turn of session `sid` and return the answer (`kind`: "chat", "completion", "messages" or
        "responses"; the last two are chat turns in another wire format, `messages_api.py`, `responses_api.py`).

        `sid` is a valid session id (the route checks it before reading the body). A new session is pinned to the
        replica with the fewest sessions. Turns of one session run one at a time, and each on one policy version.
        """
        chat = _check_turn(body, kind)
        async with self._recording(sid) as (session, replica, policy):
            if kind == "completion":
                return await self.recorder.completion_turn(session, replica, body, policy)
            if kind == "chat":
                return await self.recorder.chat_turn(session, replica, body, policy)
            if kind == "messages":
                return messages_api.from_chat(await self.recorder.chat_turn(session, replica, chat, policy))
            chat = responses_api.to_chat(body, session.responses)
            answer = await self.recorder.chat_turn(session, replica, chat, policy)
            response = responses_api.from_chat(answer, body)
            if body.get("store", True):
                session.responses[response["id"]] = responses_api.conversation(chat, answer["choices"][0]["message"])
            return response

    async def stream_turn(self, sid: str, body: dict[str, Any], kind: str) -> AsyncIterator[str]:
        """Record one turn of session `sid` and return its server-sent events, sent as the engine samples (chat,
        messages, responses; completions are sent once sampled). Errors before the first event raise here, so a
        bad request gets an HTTP error, not a broken stream; later ones end the stream with the API's error event
        (counted as the HTTP error would be). A client that leaves mid-stream leaves nothing recorded
        (`Recorder.chat_turn_stream`)."""
        chat = _check_turn(body, kind)
        converter: messages_api.Stream | responses_api.Stream | None = None  # None: OpenAI chunks as they are
        if kind == "messages":
            converter = messages_api.Stream()
        elif kind == "responses":
            converter = responses_api.Stream(body)
        events = self._stream_events(sid, body, kind, chat, converter)
        first = await anext(events)

        async def all_events() -> AsyncIterator[str]:
            last = first
            try:
                yield first
                async for last in events:
                    yield last
            except Exception as exc:  # the 200 is sent: the error can only travel as an event
                status, message, type_ = describe(exc)
                self.errors[status] += 1
                if last.startswith(FINAL_EVENTS):  # the client has its whole answer (saving the session failed)
                    logger.error("session %s: %s after its stream ended", sid, message)
                    return
                for event in converter.error(status, message) if converter else stream_error(status, message, type_):
                    yield event
            finally:
                await events.aclose()

        return all_events()

    async def _stream_events(
        self, sid: str, body: dict[str, Any], kind: str, chat: dict[str, Any] | None, converter: Any
    ) -> AsyncIterator[str]:
        async with self._recording(sid) as (session, replica, policy):
            if kind == "completion":
                answer = await self.recorder.completion_turn(session, replica, body, policy)
                for event in completion_stream(answer, bool((body.get("stream_options") or {}).get("include_usage"))):
                    yield event
                return
            if kind == "chat":
                async for chunk in self.recorder.chat_turn_stream(session, replica, body, policy):
                    yield sse(chunk)
                yield "data: [DONE]\n\n"
                return
            if kind == "responses":
                chat = responses_api.to_chat(body, session.responses)
            chat = {**chat, "stream_options": {"continuous_usage_stats": True}}  # the events carry the usage
            async for chunk in self.recorder.chat_turn_stream(session, replica, chat, policy):
                for event in converter.feed(chunk):
                    yield event
            if kind == "responses" and body.get("store", True):
                session.responses[converter.response["id"]] = responses_api.conversation(chat, converter.message)

    @contextlib.asynccontextmanager
    async def _recording(self, sid: str):
        """The session (new ones pinned to the replica with the fewest sessions), its replica and the policy
        version, held for one turn: turns of a session run one at a time, and each on one policy version. The
        session is saved whatever the turn recorded, even when it then failed."""
        session = self._session(sid)
        replica = self.router.by_name(session.replica)
        async with session.lock, self.weights.turn() as policy:
            self._check_serving(sid, replica)
            before = _token_counts(session)
            try:
                yield session, replica, policy
            finally:
                self.sessions.save(session)
            after = _token_counts(session)
        self.turns += 1
        sampled = after[1] - before[1]
        self.tokens["sampled"] += sampled
        self.tokens["inserted"] += after[0] - before[0] - sampled

    def _session(self, sid: str) -> Session:
        """Session `sid`; a new one is created on the replica with the fewest sessions (`NoReplicaAvailable`)."""
        session = self.sessions.get(sid)
        if session is None:
            session = self.sessions.create(sid, self.router.assign_session().name)
        return session

    def _check_serving(self, sid: str, replica: ReplicaHandle) -> None:
        """503 unless the session's replica, and the render server it uses, are up."""
        renderer = self.recorder.renderer(replica)
        if not renderer.healthy:
            raise ServiceUnavailable(f"{renderer.name} is down: {renderer.reason}")
        if not replica.serving:
            raise ServiceUnavailable(f"{replica.name}, which serves session {sid}, is down: {replica.down_reason}")

    # -- sessions (control plane) ------------------------------------------------------------------------------

    def list_sessions(self) -> dict[str, Any]:
        return {
            "sessions": [
                {"session_id": s.session_id, "replica": s.replica, "forks": s.forks, "segments": len(s.segments)}
                for s in self.sessions
            ]
        }

    async def trajectory(self, sid: str) -> Response:
        """Session `sid`'s recording, rendered under its lock: never a half-recorded turn (its `Trajectory` shares the
        session's lists, so the JSON is written before the lock is released, not by the route afterwards)."""
        session = self.sessions.get(sid)
        if session is None:
            raise GatewayError(404, f"unknown session {sid[:200]!r}")
        async with session.lock:
            return json_response(session.trajectory().to_json())

    def delete_session(self, sid: str) -> dict[str, Any]:
        session = self.sessions.delete(sid)
        if session is None:
            raise GatewayError(404, f"unknown session {sid[:200]!r}")
        self.router.release_session(session.replica)
        return {"deleted": sid}

    def authorized(self, authorization: str) -> bool:
        """Whether an `Authorization` header value carries the control token (always, when none is set)."""
        if self.config.api_token is None:
            return True
        return hmac.compare_digest(authorization.encode(), f"Bearer {self.config.api_token}".encode())

    # -- weights -----------------------------------------------------------------------------------------------

    async def weight_layout(self) -> dict[str, Any]:
        """The weight-transfer group a group init would form now, and the deadline of that init."""
        layout = await self.weights.layout()
        return {**layout.to_dict(), "init_timeout": self.weights.config.call_timeout}

    # -- unrecorded traffic ------------------------------------------------------------------------------------

    async def forward(self, request: Request, path: str) -> Response:
        """Send `request` as it is to the least busy replica's `/v1/{path}` and stream the answer back with its
        status and headers (hop-by-hop headers dropped both ways). Not recorded."""
        replica = self.router.pick()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        data = await request.body()  # before counting the request on the replica: reading it can fail
        replica.inflight += 1
        try:
            response = await self.client.request(
                request.method,
                f"{replica.url}/v1/{path}",
                params=list(request.query_params.multi_items()),
                headers=headers,
                data=data,
                timeout=aiohttp.ClientTimeout(total=self.config.timeouts.generate),
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            replica.inflight -= 1
            if not isinstance(exc, asyncio.TimeoutError):
                replica.mark_down(f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable(f"{replica.name} is unreachable: {type(exc).__name__}: {exc}") from exc

        async def close() -> None:
            replica.inflight -= 1
            response.release()

        if response.status >= 400:
            self.errors[response.status] += 1
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(
            response.content.iter_any(),
            status_code=response.status,
            headers=out_headers,
            background=BackgroundTask(close),
        )

    # -- health and metrics ------------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """`/health`'s status and body: 503, with the reason, when any replica or render server is down."""
        replicas = [
            {
                "name": r.name,
                "url": r.url,
                "healthy": r.healthy,
                "reason": r.reason,
                "sessions": r.sessions,
                "quarantined": r.quarantined,
            }  # fmt: skip
            for r in self.router.replicas
        ]
        down = [r for r in [*self.router.replicas, *self.renderers] if not r.serving]
        body = {
            "status": "unhealthy" if down else "ok",
            "reason": "; ".join(f"{r.name} is down: {r.down_reason}" for r in down),
            "policy_version": self.weights.version,
            "render_servers": [{"name": r.name, "url": r.url, "healthy": r.healthy} for r in self.renderers],
            "replicas": replicas,
        }
        return (503 if down else 200), body

    def fail(self, status: int, message: str, type_: str | None = None) -> JSONResponse:
        """An error response, counted (`errors.py` calls it for every refusal)."""
        self.errors[status] += 1
        return error_response(status, message, type_)

    def metrics_text(self) -> str:
        lines = [
            "# TYPE trl_agents_sessions gauge",
            f"trl_agents_sessions {len(self.sessions)}",
            "# TYPE trl_agents_turns_total counter",
            f"trl_agents_turns_total {self.turns}",
            "# TYPE trl_agents_tokens_total counter",
            *(f'trl_agents_tokens_total{{origin="{k}"}} {self.tokens[k]}' for k in ("sampled", "inserted")),
            "# TYPE trl_agents_forks_total counter",
            *(f'trl_agents_forks_total{{reason="{k}"}} {v}' for k, v in self.recorder.forks_by_reason.items()),
            "# TYPE trl_agents_errors_total counter",
            *(f'trl_agents_errors_total{{status="{k}"}} {v}' for k, v in sorted(self.errors.items())),
            "# TYPE trl_agents_upstream_seconds_total counter",
            *(f'trl_agents_upstream_seconds_total{{path="{k}"}} {v:.3f}' for k, v in sorted(CALL_SECONDS.items())),
            "# TYPE trl_agents_upstream_calls_total counter",
            *(f'trl_agents_upstream_calls_total{{path="{k}"}} {v}' for k, v in sorted(CALLS.items())),
            "# TYPE trl_agents_policy_version gauge",
            f"trl_agents_policy_version {self.weights.version}",
            "# TYPE trl_agents_weight_syncs_total counter",
            f"trl_agents_weight_syncs_total {self.weights.syncs}",
            "# TYPE trl_agents_weight_sync_failures_total counter",
            f"trl_agents_weight_sync_failures_total {self.weights.failures}",
            "# TYPE trl_agents_weight_sync_seconds gauge",
            f"trl_agents_weight_sync_seconds {self.weights.last_sync_seconds:.3f}",
        ]
        for name, attr in [("healthy", "serving"), ("inflight", "inflight"), ("sessions", "sessions")]:
            lines.append(f"# TYPE trl_agents_replica_{name} gauge")
            lines += [
                f'trl_agents_replica_{name}{{replica="{r.name}"}} {int(getattr(r, attr))}'
                for r in self.router.replicas
            ]
        return "\n".join(lines) + "\n"


def new_proxy_session() -> aiohttp.ClientSession:
    """The client of the pass-through routes (no limit on connections; idle connections dropped before the upstream
    servers drop them, as `upstream.new_client` does)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(connector=connector)


def _check_turn(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """Refuse what no turn can take, before a session exists (a Responses request is converted later, with its
    session's stored responses); a Messages request's chat request."""
    if body.get("n", 1) not in (1, None):
        raise GatewayError(400, "session routes record one sample per request: use one session per sample (n=1)")
    return messages_api.to_chat(body) if kind == "messages" else None


def _token_counts(session: Session) -> tuple[int, int]:
    """Tokens recorded in `session`, and how many of them were sampled (from the turn records: a pass over the
    masks would cost a turn time in proportion to its context)."""
    segments = session.segments
    return sum(len(s.tokens) for s in segments), sum(t.completion_tokens for s in segments for t in s.turns)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the app's gateway (first health check, context length) and its health loop; close its client after."""
    gateway: Gateway = app.state.gateway
    await gateway.start()
    task = asyncio.create_task(gateway.health_loop())
    try:
        yield
    finally:
        task.cancel()
        await gateway.close()


def create_app(config: GatewayConfig) -> FastAPI:
    """Build the gateway's FastAPI application: one `Gateway` on `app.state`, the routers, the error handlers."""
    app = FastAPI(title="trl vllm-serve-async gateway", lifespan=lifespan)
    app.state.gateway = Gateway(config)
    register_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
