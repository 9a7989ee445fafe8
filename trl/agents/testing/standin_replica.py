"""A stand-in for a vLLM server's weight-transfer side, for where a real one cannot run (a test double, shipped in
`trl.agents.testing` so tests and benchmarks share it).

What it stands in for, and why:

* **CPU tests** (`tests/test_nccl_layout.py`): vLLM's NCCL backend needs a GPU, so a CPU vLLM replica cannot join an
  NCCL group at all. This server answers the routes the gateway calls on a replica and, for each of its `--workers`
  simulated inference workers, joins the trainer's rendezvous for real with vLLM's own `StatelessProcessGroup` (the
  TCP store NCCL's group is built on) at rank `rank_offset + worker`, then gathers every rank once (so the trainer,
  rank 0, must call `all_gather_obj` too: a rank held twice or missing stalls there until the store's deadline). It
  records every body it received (`GET /standin/received`), so tests check what each replica was told, and a wrong
  layout fails the way it would on GPUs: at the rendezvous.
* **GPU benchmark** (`benchmarks/bench_nccl_sync.py`): vLLM cannot be installed on the lent GPU machines, but its
  worker-side NCCL code runs there from its pure-Python files. With `--device cuda` each worker also builds vLLM's
  `PyNcclCommunicator` on that group (`worker_init_process_group`'s steps, with the rank the gateway assigned) and
  `/update_weights` receives with vLLM's own `packed_nccl_broadcast_consumer`, keeping the tensors so the benchmark
  can check them byte for byte (`GET /standin/checksums`). Workers are threads, one CUDA device each.

It is not a vLLM server: no model, no sampling, no layerwise reload. Faults are injected with
`POST /standin/fail {"path": "/update_weights", "times": 1}` (that route answers 500 that many times).

Run: `python -m trl.agents.testing.standin_replica --port 8101 --workers 2 [--device cuda] [--model NAME]`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from typing import Any

from .http import JSONHandler


VERSION = "0.31.0"
ROUTES = [  # what a replica must serve for the gateway (listed in /openapi.json, as vLLM's FastAPI app does)
    "/health", "/version", "/v1/models", "/get_world_size", "/server_info", "/pause", "/resume",
    "/init_weight_transfer_engine", "/start_weight_update", "/update_weights", "/finish_weight_update",
]  # fmt: skip


class StandIn:
    """The state behind the routes: simulated workers, their groups, what was received."""

    def __init__(self, workers: int, device: str, model: str, store_timeout: float):
        self.workers = workers
        self.device = device
        self.model = model
        self.store_timeout = store_timeout
        self.groups: list[Any] = []
        self.packed: dict[str, int] = {}  # the packed-transfer geometry the trainer sent at init
        self.received: list[dict] = []  # every weight-transfer body, in order
        self.tensors: dict[str, Any] = {}  # worker 0's received tensors (GPU mode)
        self.faults: dict[str, int] = {}
        self.lock = threading.Lock()

    def world_size(self) -> dict:
        return {"world_size": self.workers}

    def server_info(self) -> dict:
        backend = {"backend": "nccl"}
        return {"vllm_config": {"weight_transfer_config": backend, "lora_config": None}, "standin": True}

    def init(self, body: dict) -> dict:
        from vllm.distributed.utils import StatelessProcessGroup

        info = body["init_info"]
        offset, world = int(info["rank_offset"]), int(info["world_size"])
        geometry = {"packed_buffer_size_bytes": "buffer_size_bytes", "packed_num_buffers": "num_buffers"}
        self.packed = {argument: info[key] for key, argument in geometry.items() if key in info}

        def join(worker: int):
            group = StatelessProcessGroup.create(
                host=info["master_address"], port=int(info["master_port"]), rank=offset + worker, world_size=world,
                store_timeout=int(self.store_timeout),
            )  # fmt: skip
            if self.device != "cuda":
                # every rank of the group takes part, the trainer too: a rank held twice or missing stalls it here
                group.all_gather_obj(group.rank)
                return group
            import torch
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

            torch.cuda.set_device(worker)
            communicator = PyNcclCommunicator(group, device=worker)
            if communicator.disabled:
                raise RuntimeError("vLLM's PyNcclCommunicator disabled itself: the NCCL library did not load")
            return communicator

        with ThreadPoolExecutor(self.workers) as pool:
            self.groups = list(pool.map(join, range(self.workers)))
        return {"message": "Weight transfer initialized", "ranks": [offset + w for w in range(self.workers)]}

    def update(self, body: dict) -> dict:
        info = body["update_info"]
        if self.device == "cuda":
            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(lambda w: self._receive(w, info), range(self.workers)))
        return {}

    def _receive(self, worker: int, info: dict) -> None:
        import torch
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_consumer

        torch.cuda.set_device(worker)
        columns = zip(info["names"], info["dtype_names"], info["shapes"], strict=True)
        meta = [(name, (shape, getattr(torch, dtype))) for name, dtype, shape in columns]
        kept = self.tensors if worker == 0 else {}

        def keep(items):
            kept.update({name: tensor.clone() for name, tensor in items})

        group, device = self.groups[worker], torch.device("cuda", worker)
        packed_nccl_broadcast_consumer(iter(meta), group, 0, keep, device=device, **self.packed)
        torch.cuda.synchronize()

    def floor(self, body: dict) -> dict:
        """Receive `reps` raw broadcasts of `nbytes` (the benchmark's floor), on every worker."""
        import torch

        def receive(worker: int) -> None:
            torch.cuda.set_device(worker)
            flat = torch.empty(int(body["nbytes"]), dtype=torch.uint8, device=f"cuda:{worker}")
            for _ in range(int(body["reps"])):
                self.groups[worker].broadcast(flat, src=0)
            torch.cuda.synchronize()

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(receive, range(self.workers)))
        return {}

    def checksums(self) -> dict:
        return {name: hashlib.sha256(_bytes(t)).hexdigest() for name, t in sorted(self.tensors.items())}


def _bytes(tensor) -> bytes:
    import torch

    return tensor.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes()


def make_handler(state: StandIn):
    gets = {
        "/health": lambda: {},
        "/version": lambda: {"version": VERSION},
        "/v1/models": lambda: {"object": "list", "data": [{"id": state.model, "max_model_len": 4096}]},
        "/get_world_size": state.world_size,
        "/server_info": state.server_info,
        "/openapi.json": lambda: {"paths": {path: {} for path in ROUTES}},
        "/standin/received": lambda: {"received": state.received},
        "/standin/checksums": state.checksums,
    }
    posts = {
        "/pause": lambda b: {},
        "/resume": lambda b: {},
        "/init_weight_transfer_engine": state.init,
        "/start_weight_update": lambda b: {},
        "/update_weights": state.update,
        "/finish_weight_update": lambda b: {},
        "/standin/floor": state.floor,
        "/standin/fail": lambda b: state.faults.update({b["path"]: int(b.get("times", 1))}) or {},
    }

    class Handler(JSONHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            route = gets.get(self.path.split("?")[0])
            if route is None:
                return self.send_json(404, {"detail": "Not Found"})
            self.send_json(200, route())

        def do_POST(self):  # noqa: N802
            path = self.path.split("?")[0]
            body = self.read_json()
            route = posts.get(path)
            if route is None:
                return self.send_json(404, {"detail": "Not Found"})
            if path in ("/init_weight_transfer_engine", "/update_weights"):
                with state.lock:
                    state.received.append({"path": path, "body": body, "time": time.time()})
            if state.faults.get(path, 0) > 0:
                state.faults[path] -= 1
                return self.send_json(500, {"error": {"message": f"stand-in fault injected on {path}"}})
            try:
                self.send_json(200, route(body))
            except Exception as exc:  # the route's failure goes back to the caller as vLLM's would
                self.send_json(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})

    return Handler


def wait_http(url: str, timeout: float = 60.0, process=None) -> None:
    """Block until `url` answers (any status); raise if `process` (when given) exits first or `timeout` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def gateway_process(replica_urls: list[str], port: int, sync_timeout: float, log, health_interval: float = 0.5):
    """A real gateway process (uvicorn, `create_app`) over `replica_urls`, named replica-0, replica-1, ...; the caller
    waits for its `/health` and kills it. (`trl vllm-serve-async --replica` would first check that each replica is a
    real vLLM server, which a stand-in is not.)"""
    import subprocess

    replicas = [(f"replica-{i}", url) for i, url in enumerate(replica_urls)]
    config = (
        f"GatewayConfig(replicas={replicas!r}, sync=SyncConfig.from_total({sync_timeout}), "
        f"health_interval={health_interval}, weight_transfer_backend='nccl')"
    )
    code = (
        "import uvicorn\n"
        "from trl.agents.server.gateway import GatewayConfig, create_app\n"
        "from trl.agents.server.weight_sync import SyncConfig\n"
        f"uvicorn.run(create_app({config}), host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Clients closing idle keep-alive connections are normal; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(port: int, workers: int = 1, device: str = "cpu", model: str = "standin", store_timeout: float = 30.0):
    """Serve on 127.0.0.1:`port` until killed."""
    from vllm.distributed.utils import StatelessProcessGroup  # noqa: F401 - imported now, not at the first init

    server = QuietServer(("127.0.0.1", port), make_handler(StandIn(workers, device, model, store_timeout)))
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="simulated inference workers (TP x PP)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="standin")
    parser.add_argument("--store-timeout", type=float, default=30.0, help="rendezvous deadline in seconds")
    args = parser.parse_args()
    serve(args.port, args.workers, args.device, args.model, args.store_timeout)
