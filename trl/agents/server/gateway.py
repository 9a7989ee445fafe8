"""The gateway in front of the vLLM replicas: every route it adds, and why it exists.

vLLM serves the OpenAI API, chat templates, tool and reasoning parsers, sampling and weight transfer. The gateway
adds only what training needs, each route for one reason:

* `POST /sessions/{sid}/v1/chat/completions`, `POST /sessions/{sid}/v1/completions`: the agent's base URL is its
  episode's identity, so unmodified agents are recorded token-exactly (`recording.py`) and pinned to one replica.
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
Not here: starting processes (`launch.py`), the turn pipeline (`recording.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import chat_stream, completion_stream, error_response
from .recording import Recorder, Timeouts, TurnError
from .routing import NoReplicaAvailable, ReplicaHandle, Router
from .sessions import SESSION_ID, SessionStore
from .upstream import CALL_SECONDS, CALLS, ReplicaUnreachable, UpstreamError, new_session
from .weight_sync import SyncConfig, SyncError, WeightSync


logger = logging.getLogger("trl.agents.gateway")

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


class Gateway:
    """State shared by the routes: router, sessions, recorder, policy version, counters."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.router = Router([ReplicaHandle(name, url.rstrip("/")) for name, url in config.replicas])
        self.sessions = SessionStore(config.journal_dir)
        for session in self.sessions:  # reloaded from the journal: back on their replica
            session.replica = self.router.adopt_session(session.session_id, session.replica)
        self.client: aiohttp.ClientSession | None = None  # created in `start`, inside the server's event loop
        self.renderers = [ReplicaHandle(f"render-{i}", url.rstrip("/")) for i, url in enumerate(config.render_urls)]
        renderer_of = {
            r.name: self.renderers[i % len(self.renderers)] for i, r in enumerate(self.router.replicas)
        } if self.renderers else {}  # fmt: skip
        self.recorder = Recorder(None, config.max_model_len or 0, config.timeouts, renderer_of)
        self.weights = WeightSync(self.router, config.sync, config.weight_transfer_backend)
        self.turns = 0
        self.tokens = Counter()  # "sampled" / "inserted"
        self.errors = Counter()  # HTTP status -> count

    async def check_health(self) -> None:
        await self.router.check_health(self.client, extra=self.renderers)

    async def start(self) -> None:
        self.client = self.recorder.client = self.weights.client = new_session()
        await self.check_health()
        if not self.config.max_model_len:
            replica = self.router.pick()
            async with self.client.get(f"{replica.url}/v1/models", timeout=aiohttp.ClientTimeout(total=30)) as r:
                models = await r.json()
            self.recorder.max_model_len = int(models["data"][0]["max_model_len"])

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await self.check_health()

    def authorized(self, request: Request) -> bool:
        if self.config.api_token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.config.api_token}".encode())

    def fail(self, status: int, message: str, type_: str | None = None) -> JSONResponse:
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


def create_app(config: GatewayConfig) -> FastAPI:
    """Build the gateway's FastAPI application."""
    gateway = Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        task = asyncio.create_task(gateway.health_loop())
        try:
            yield
        finally:
            task.cancel()
            await gateway.client.close()

    app = FastAPI(title="trl vllm-serve-async gateway", lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return gateway.fail(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return gateway.fail(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return gateway.fail(500, f"gateway error: {type(exc).__name__}: {exc}", "ServerError")

    async def read_json(request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            return gateway.fail(413, f"request body of {len(raw)} bytes exceeds {config.max_body_bytes}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return gateway.fail(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return gateway.fail(400, "request body must be a JSON object")
        return body

    def unauthorized() -> JSONResponse:
        return gateway.fail(401, "missing or wrong bearer token for a control endpoint", "AuthenticationError")

    # -- recorded OpenAI routes ------------------------------------------------------------------------------

    async def recorded_turn(sid: str, request: Request, kind: str):
        if not SESSION_ID.match(sid):
            return gateway.fail(400, f"invalid session id {sid[:200]!r}: use 1-128 of [A-Za-z0-9._-]")
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        if body.get("n", 1) not in (1, None):
            return gateway.fail(400, "session routes record one sample per request: use one session per sample (n=1)")
        session = gateway.sessions.get(sid)
        if session is None:
            try:
                replica = gateway.router.assign_session()
            except NoReplicaAvailable as exc:
                return gateway.fail(503, str(exc), "ServiceUnavailableError")
            session = gateway.sessions.create(sid, replica.name)
        replica = gateway.router.by_name(session.replica)
        async with session.lock, gateway.weights.turn() as policy:
            renderer = gateway.recorder.renderer(replica)
            if not renderer.healthy:
                return gateway.fail(503, f"{renderer.name} is down: {renderer.reason}", "ServiceUnavailableError")
            if not replica.serving:
                return gateway.fail(
                    503,
                    f"{replica.name}, which serves session {sid}, is down: {replica.down_reason}",
                    "ServiceUnavailableError",
                )
            before = sum(len(s.tokens) for s in session.segments), sum(s.tokens.num_sampled for s in session.segments)
            run = gateway.recorder.chat_turn if kind == "chat" else gateway.recorder.completion_turn
            try:
                answer = await run(session, replica, body, policy)
            except UpstreamError as exc:
                gateway.errors[exc.status] += 1
                return JSONResponse(exc.payload, status_code=exc.status)
            except ReplicaUnreachable as exc:
                return gateway.fail(503, str(exc), "ServiceUnavailableError")
            except TurnError as exc:
                return gateway.fail(exc.status, str(exc))
            finally:
                gateway.sessions.save(session)  # whatever the turn recorded, even when it then failed
            after = sum(len(s.tokens) for s in session.segments), sum(s.tokens.num_sampled for s in session.segments)
        gateway.turns += 1
        sampled = after[1] - before[1]
        gateway.tokens["sampled"] += sampled
        gateway.tokens["inserted"] += after[0] - before[0] - sampled
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = chat_stream if kind == "chat" else completion_stream
            return StreamingResponse(chunks(answer, include_usage), media_type="text/event-stream")
        return JSONResponse(answer)

    @app.post("/sessions/{sid}/v1/chat/completions")
    async def session_chat(sid: str, request: Request):
        return await recorded_turn(sid, request, "chat")

    @app.post("/sessions/{sid}/v1/completions")
    async def session_completions(sid: str, request: Request):
        return await recorded_turn(sid, request, "completion")

    @app.get("/sessions/{sid}/v1/models")
    async def session_models(sid: str, request: Request):
        return await forward(request, "models")

    # -- control plane ---------------------------------------------------------------------------------------

    @app.get("/sessions")
    async def list_sessions(request: Request):
        if not gateway.authorized(request):
            return unauthorized()
        return {
            "sessions": [
                {"session_id": s.session_id, "replica": s.replica, "forks": s.forks, "segments": len(s.segments)}
                for s in gateway.sessions
            ]
        }

    @app.get("/sessions/{sid}/trajectory")
    async def trajectory(sid: str, request: Request):
        if not gateway.authorized(request):
            return unauthorized()
        session = gateway.sessions.get(sid)
        if session is None:
            return gateway.fail(404, f"unknown session {sid[:200]!r}")
        async with session.lock:  # never a half-recorded turn
            return JSONResponse(session.to_dict())

    @app.delete("/sessions/{sid}")
    async def delete_session(sid: str, request: Request):
        if not gateway.authorized(request):
            return unauthorized()
        session = gateway.sessions.delete(sid)
        if session is None:
            return gateway.fail(404, f"unknown session {sid[:200]!r}")
        gateway.router.release_session(session.replica)
        return {"deleted": sid}

    def field_of(body: dict, name: str, kinds: tuple[type, ...]):
        value = body.get(name)
        if not isinstance(value, kinds):
            raise SyncError(400, f"`{name}` is required ({' or '.join(k.__name__ for k in kinds)})")
        return value

    weights = gateway.weights
    sync_routes = {  # POST /weights/<name>: what the route runs with the request's JSON body
        "init": lambda b: weights.init(field_of(b, "init_info", (dict, list))),
        "start": lambda b: weights.start(),
        "update": lambda b: weights.update(field_of(b, "update_info", (dict, list))),
        "finish": lambda b: weights.finish(),
        "abort": lambda b: weights.abort(str(b.get("reason") or "asked by the trainer")),
        "lora": lambda b: weights.load_lora(field_of(b, "lora_path", (str,)), field_of(b, "lora_name", (str,))),
    }

    def sync_route(run):
        async def route(request: Request) -> JSONResponse:
            if not gateway.authorized(request):
                return unauthorized()
            body = await read_json(request) if (await request.body()) else {}
            if isinstance(body, JSONResponse):
                return body
            try:
                return JSONResponse(await run(body))
            except SyncError as exc:
                return gateway.fail(exc.status, str(exc), "WeightSyncError")

        return route

    for name, run in sync_routes.items():
        app.add_api_route(f"/weights/{name}", sync_route(run), methods=["POST"], name=f"weights_{name}")

    @app.get("/weights")
    async def weights_status(request: Request):
        if not gateway.authorized(request):
            return unauthorized()
        return weights.status()

    @app.get("/weights/layout")
    async def weights_layout(request: Request):
        """The weight-transfer group a group init would form now (ranks per replica, world size)."""
        if not gateway.authorized(request):
            return unauthorized()
        try:
            layout = await weights.layout()
        except SyncError as exc:
            return gateway.fail(exc.status, str(exc), "WeightSyncError")
        return {**layout.to_dict(), "init_timeout": weights.config.call_timeout}

    @app.get("/health")
    async def health():
        replicas = [
            {
                "name": r.name,
                "url": r.url,
                "healthy": r.healthy,
                "reason": r.reason,
                "sessions": r.sessions,
                "quarantined": r.quarantined,
            }  # fmt: skip
            for r in gateway.router.replicas
        ]
        servers = [*gateway.router.replicas, *gateway.renderers]
        down = [r for r in servers if not r.serving]
        status = 503 if down else 200
        reason = "; ".join(f"{r.name} is down: {r.down_reason}" for r in down)
        body = {"status": "unhealthy" if down else "ok", "reason": reason, "policy_version": gateway.weights.version}
        body["render_servers"] = [{"name": r.name, "url": r.url, "healthy": r.healthy} for r in gateway.renderers]
        return JSONResponse({**body, "replicas": replicas}, status_code=status)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(gateway.metrics_text(), media_type="text/plain; version=0.0.4")

    # -- unrecorded OpenAI routes ----------------------------------------------------------------------------

    async def forward(request: Request, path: str) -> Response:
        try:
            replica = gateway.router.pick()
        except NoReplicaAvailable as exc:
            return gateway.fail(503, str(exc), "ServiceUnavailableError")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        replica.inflight += 1
        try:
            response = await gateway.client.request(
                request.method,
                f"{replica.url}/v1/{path}",
                params=list(request.query_params.multi_items()),
                headers=headers,
                data=await request.body(),
                timeout=aiohttp.ClientTimeout(total=config.timeouts.generate),
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            replica.inflight -= 1
            if not isinstance(exc, asyncio.TimeoutError):
                replica.mark_down(f"{type(exc).__name__}: {exc}")
            return gateway.fail(
                503, f"{replica.name} is unreachable: {type(exc).__name__}: {exc}", "ServiceUnavailableError"
            )

        async def close() -> None:
            replica.inflight -= 1
            response.release()

        if response.status >= 400:
            gateway.errors[response.status] += 1
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(
            response.content.iter_any(),
            status_code=response.status,
            headers=out_headers,
            background=BackgroundTask(close),
        )

    @app.get("/v1/models")
    async def models(request: Request):
        return await forward(request, "models")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await forward(request, "chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await forward(request, "completions")

    return app
