"""`ServerClient`: the one place that knows the gateway's HTTP API (sessions, trajectories, weight sync).

Every call has a deadline and checks the answer; errors raise `ServerError` carrying the server's own message.
Not here: what the gateway does with the calls (`server/`), which tensors are sent (`weights/sources.py`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


logger = logging.getLogger("trl.agents.client")


class ServerError(RuntimeError):
    """The gateway answered with an error (or not at all); the message is the server's own."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


class ServerClient:
    """Client of a `trl vllm-serve-async` gateway.

    Args:
        base_url: The gateway's address, e.g. `http://127.0.0.1:8000`.
        api_token: The gateway's `--api-token`, sent as a bearer token on control calls.
        timeout: Deadline in seconds of one HTTP call (a weight-sync call's own deadline is the gateway's; this one
            is the backstop if the gateway itself stops answering).
        transfer: How weights travel. `None` (default): the backend the gateway's replicas were started with
            (`nccl` on GPUs, `trl_agents_shm` on the CPU build). `"shm"`: this project's shared-memory backend,
            trainer and replicas on one host. `"nccl"`: vLLM's NCCL backend, one group of the trainer's sender (rank
            0, on this process's current CUDA device) and every inference worker of every replica; the gateway
            assigns each replica its ranks and the client reads the group's size from it (`GET /weights/layout`),
            so nothing here needs rank arithmetic. A vLLM `TrainerInitInfo` (e.g. `NCCLTrainerInitInfo`) is also
            accepted as it is; its `world_size` is checked against the gateway's layout first.
        master_address: With `"nccl"`: the address of this node that every inference node can reach (default: the
            address this host uses to reach the gateway).
        master_port: With `"nccl"`: the port of the group's rendezvous on `master_address` (default 29600); it must
            be open from the inference nodes. Each new group (after a replica joins or leaves) reuses it.
    """

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        timeout: float = 180.0,
        transfer: Any = None,
        *,
        master_address: str | None = None,
        master_port: int | None = None,
    ):
        if isinstance(transfer, str) and transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {TRANSFERS} or a vLLM TrainerInitInfo, not {transfer!r}")
        if (master_address or master_port) and transfer not in (None, "nccl"):
            raise ValueError("master_address and master_port go with transfer='nccl' (or the gateway's choice)")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.transfer = transfer  # None: the backend the gateway's replicas use (`_group_backend`)
        self.master_address = master_address
        self.master_port = master_port or DEFAULT_NCCL_PORT
        self._engines: dict[int, Any] = {}  # id(model) -> vLLM trainer-side transfer engine
        self._adapter_dir: Path | None = None  # the last adapter the replicas loaded (they read it lazily)
        self.last_sync: dict[str, float] = {}  # seconds, bytes and per-phase seconds of the last sync
        self._sync_timeout = 120.0  # the gateway's deadline of a whole sync (read before each NCCL sync)

    def close(self) -> None:
        """Close the connection, the weight-transfer groups (their rendezvous ports are free again), and delete the
        last saved LoRA adapter (the replicas no longer need it)."""
        self._http.close()
        for engine in self._engines.values():
            engine.shutdown()
        self._engines.clear()
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
            self._adapter_dir = None

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> Any:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        try:
            response = self._http.request(method, path, json=json, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(f"{method} {self.base_url}{path} failed: {type(exc).__name__}: {exc}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text[:2000]}}
        if response.status_code >= 400:
            error = payload.get("error") if isinstance(payload, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(payload)
            raise ServerError(f"{method} {path} answered {response.status_code}: {message}", response.status_code)
        return payload

    # -- sessions ----------------------------------------------------------------------------------------------

    def session_url(self, sid: str) -> str:
        """The OpenAI base URL an agent uses for episode `sid` (its turns are recorded under that id)."""
        return f"{self.base_url}/sessions/{sid}/v1"

    def trajectory(self, sid: str) -> dict[str, Any]:
        """The recorded trajectory of session `sid`, as the gateway's JSON (`trl.agents.Trajectory.from_json` types
        and checks it)."""
        return self._call("GET", f"/sessions/{sid}/trajectory")

    def sessions(self) -> list[dict[str, Any]]:
        """The sessions the gateway holds: `session_id`, `replica`, `forks`, `segments` each."""
        return self._call("GET", "/sessions")["sessions"]

    def close_session(self, sid: str) -> None:
        """Forget session `sid` on the gateway (frees its memory)."""
        self._call("DELETE", f"/sessions/{sid}")

    def health(self) -> dict[str, Any]:
        try:
            response = self._http.get("/health")
        except httpx.HTTPError as exc:
            raise ServerError(f"GET {self.base_url}/health failed: {type(exc).__name__}: {exc}") from exc
        return response.json()

    def wait_healthy(self, timeout: float = 300.0) -> None:
        """Block until the gateway reports every replica healthy; raise with its last reason after `timeout`."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                health = self.health()
                if health.get("status") == "ok":
                    return
                last = health.get("reason") or str(health)
            except ServerError as exc:
                last = str(exc)
            time.sleep(1.0)
        raise ServerError(f"gateway {self.base_url} not healthy after {timeout:.0f} s: {last}")

    # -- weights -----------------------------------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        """The policy version the gateway serves now."""
        return int(self._call("GET", "/weights")["version"])

    def weight_status(self) -> dict[str, Any]:
        return self._call("GET", "/weights")

    def update_weights(self, model, *, rank: int = 0, lora: str = "merge") -> int:
        """Send `model`'s weights to every replica; return the new policy version.

        Args:
            model: A `transformers` model, a PEFT model, or a DeepSpeed ZeRO-3 model.
            rank: This process's rank. Call on every rank: with ZeRO-3 the gathers are collective; only rank 0 sends
                (other ranks return the version they last saw).
            lora: For PEFT models: `"merge"` sends base weights with the adapters merged in, `"adapter"` sends only
                the adapter through vLLM's LoRA loading (replicas need `--enable-lora`).

        Raises:
            ServerError: the sync failed; the message names the replicas that failed. The gateway keeps serving one
                complete version on every replica it did not quarantine.
        """
        from .weights.sources import ModelWeights, is_peft_model

        start = time.perf_counter()
        if lora == "adapter":
            if not is_peft_model(model):
                raise ValueError("lora='adapter' needs a PEFT model")
            if rank != 0:
                return self.weight_version
            return self._load_adapter(model, start)
        if lora != "merge":
            raise ValueError(f"lora must be 'merge' or 'adapter', not {lora!r}")
        source = ModelWeights(model, rank=rank)
        engine = self._engine(model, source, rank)
        try:
            with source.prepared():
                engine.source = source
                if rank == 0 and self._group_backend():
                    from .weights.nccl import send_with_deadline

                    send_with_deadline(engine, self._sync_timeout)
                else:
                    engine.send_weights()
        except BaseException as exc:
            if rank == 0:
                self._abort(f"trainer-side error: {type(exc).__name__}: {exc}")
                if self._group_backend():  # the group may be half-way through a transfer: the next sync opens anew
                    self._engines.pop(id(model)).shutdown()
            raise
        if rank != 0:
            return self.weight_version
        version = engine.client.version
        seconds = time.perf_counter() - start
        phases = engine.client.phases
        self.last_sync = {
            "seconds": seconds,
            "bytes": float(getattr(engine, "bytes_sent", source.nbytes())),
            # replicas: waiting on the gateway's phases; trainer: everything else (gathering, writing chunks)
            **{f"{phase}_seconds": value for phase, value in phases.items()},
            "trainer_seconds": seconds - sum(phases.values()),
        }
        return version

    def _engine(self, model, source, rank: int):
        engine = self._engines.get(id(model))
        if rank == 0 and self._group_backend():
            status = self.weight_status()
            self._sync_timeout = float(status["timeout"])
            stale = (status.get("group") or {"stale": "no group"})["stale"]
            if engine is not None and stale:  # a replica left, joined or failed: the old group cannot take a sync
                logger.warning("opening a new weight-transfer group: %s", stale)
                engine.shutdown()
                engine = None
        if engine is None:
            if self._group_backend():
                from .weights.nccl import open_trainer_group

                engine = open_trainer_group(self, source, rank)
            else:
                from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

                from .weights import shm

                info = shm.trainer_init_info(rank=rank) if self.transfer == "shm" else self.transfer
                engine = WeightTransferTrainerFactory.trainer_init(info, client=_SyncProtocol(self), source=source)
            self._engines[id(model)] = engine
        return engine

    def _group_backend(self) -> bool:
        """Whether weights go through a rank group (NCCL). With `transfer=None`, whatever the gateway's replicas were
        started with (`GET /weights` names the backend), so a trainer cannot pick one the replicas do not run."""
        if self.transfer is None:
            backend = self.weight_status().get("backend")
            self.transfer = "nccl" if backend == "nccl" else "shm"
            logger.info("weight transfer: %s (the replicas' backend: %s)", self.transfer, backend)
        return self.transfer == "nccl" or hasattr(self.transfer, "world_size")

    def weight_layout(self) -> dict[str, Any]:
        """The weight-transfer group the replicas would form now: `world_size`, each replica's `rank_offset` and
        `workers`, a `description`, and `init_timeout` (the gateway's deadline for the group to form)."""
        return self._call("GET", "/weights/layout")

    def _load_adapter(self, model, start: float) -> int:
        from .weights.shm import shm_dir

        # vLLM reads the adapter lazily (at its first request, and again if evicted), so each saved adapter stays
        # on disk until the next one is loaded; a missing adapter directory kills a vLLM engine.
        directory = Path(tempfile.mkdtemp(prefix="trl-agents-lora-", dir=shm_dir()))
        model.save_pretrained(directory)
        try:
            answer = self._call("POST", "/weights/lora", {"lora_path": str(directory), "lora_name": ADAPTER_NAME})
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
        self._adapter_dir = directory
        self.last_sync = {"seconds": time.perf_counter() - start, "bytes": float(_dir_bytes(directory))}
        return int(answer["version"])

    def _abort(self, reason: str) -> None:
        try:
            self._call("POST", "/weights/abort", {"reason": reason})
        except ServerError as exc:  # the original error is what the caller needs; this one is logged
            logger.error("could not abort the weight sync: %s", exc)


ADAPTER_NAME = "trl-agents-policy"
TRANSFERS = ("shm", "nccl")
DEFAULT_NCCL_PORT = 29600


def _dir_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


class _SyncProtocol:
    """vLLM's `VLLMWeightSyncClient` protocol over the gateway's `/weights/*` routes (what vLLM's trainer-side
    transfer engines call during `send_weights`). Seconds spent waiting on each phase add up in `phases`."""

    def __init__(self, client: ServerClient):
        self.client = client
        self.phases: dict[str, float] = {}
        self.version = 0  # the policy version the last finished sync created

    def _timed(self, phase: str, path: str, body: dict) -> Any:
        start = time.perf_counter()
        try:
            return self.client._call("POST", path, body)
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._timed("init", "/weights/init", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self.phases = {}
        self._timed("start", "/weights/start", {})

    def update_weights(self, update_info: Any) -> None:
        self._timed("update", "/weights/update", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.version = int(self._timed("finish", "/weights/finish", {})["version"])
