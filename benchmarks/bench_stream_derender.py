"""The render server's CPU for one streamed reply: vLLM's stateless streaming derender vs this project's plugin.

Setup:  make install
Usage:  python benchmarks/bench_stream_derender.py [--tokens 512] [--out FILE.json]

Starts one render server of the tiny model (`--tool-call-parser hermes --reasoning-parser qwen3`, with the
`stream_derender` plugin, as `trl vllm-serve-async` starts them) and derenders the same reply (reasoning, content, a
hermes tool call; `--tokens` long) as a stream of one-token engine chunks, the way the gateway sends them:

* `vllm`: vLLM's `/v1/chat/completions/derender` with `stream: true`, one call per chunk (its state travels with
  the client, its parsers are rebuilt and replay the reply on every call);
* `plugin xK`: `stream_derender.ROUTE`, K engine chunks per call (1: an idle server; more: the chunks that queue up
  while a call is in flight under load).

Prints the wall time per call by position in the reply and the render server's own CPU (user + system, from
/proc) for the whole reply; checks the plugin's chunks say the same as vLLM's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from trl.agents.server.process import RenderServer
from trl.agents.server.stream_derender import ROUTE
from trl.agents.tiny_model import build


TOOLS = [{"type": "function", "function": {"name": "shell", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}}}}]  # fmt: skip
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def reply_ids(client: httpx.Client, model: str, tokens: int) -> list[int]:
    """Token ids of a reply with reasoning, then content, then a tool call, about `tokens` long."""
    tail = '\n</think>\n\nLet me look.\n<tool_call>\n{"name": "shell", "arguments": {"command": "ls -la /tmp"}}\n</tool_call>'
    thinking = "<think>\nI should list the files"
    while True:
        ids = client.post("/tokenize", json={"model": model, "prompt": thinking + tail, "add_special_tokens": False})
        ids = ids.json()["tokens"]
        if len(ids) >= tokens:
            return ids
        thinking += " and think it over"


def chunk(ids: list[int], i: int) -> dict:
    return {"request_id": "bench", "choices": [{"index": 0, "token_ids": [ids[i]],
                                                "finish_reason": "stop" if i == len(ids) - 1 else None}]}  # fmt: skip


def run(client: httpx.Client, model: str, ids: list[int], per_call: int | None, name: str) -> tuple[list, list]:
    """Derender the reply; `per_call` None: vLLM's route. Returns (chunks, seconds per call)."""
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": "What is in /tmp?"}],
        "tools": TOOLS,
        "stream": True,
    }
    out, seconds, state = [], [], None
    step = per_call or 1
    for start in range(0, len(ids), step):
        if per_call is None:
            body = {"stream": True, "generate_chunk": chunk(ids, start), "stream_state": state, "chat_request": chat,
                    "prompt_tokens": 10, "prompt_token_ids": [1]}  # fmt: skip
            path = "/v1/chat/completions/derender"
        else:
            body = {"stream_id": name, "position": start, "model": model,
                    "generate_chunks": [chunk(ids, i) for i in range(start, min(start + step, len(ids)))]}  # fmt: skip
            if start == 0:
                body |= {"chat_request": chat, "prompt_token_ids": [1]}
            path = ROUTE
        began = time.perf_counter()
        answer = client.post(path, json=body)
        seconds.append(time.perf_counter() - began)
        if answer.status_code != 200:
            sys.exit(f"{path} answered {answer.status_code}: {answer.text[:500]}")
        payload = answer.json()
        if per_call is None:
            state = payload["stream_state"]
            out.append(payload["chunk"])
        else:
            out += payload["chunks"]
    return out, seconds


def said(chunks: list[dict]) -> dict:
    """What a client reads from the chunks (tool-call ids aside)."""
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    calls = [call for d in deltas for call in d["delta"].get("tool_calls") or []]
    return {
        "content": "".join(d["delta"].get("content") or "" for d in deltas),
        "reasoning": "".join(d["delta"].get("reasoning") or "" for d in deltas),
        "arguments": "".join((c.get("function") or {}).get("arguments") or "" for c in calls),
        "finish": [d["finish_reason"] for d in deltas if d["finish_reason"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stream-derender-"))
    model = str(build(work / "model"))
    flags = ["--dtype", "float32", "--max-model-len", "4096", "--enable-auto-tool-choice", "--tool-call-parser",
             "hermes", "--reasoning-parser", "qwen3"]  # fmt: skip
    print(f"starting a render server (log {work / 'render.log'}) ...", flush=True)
    with RenderServer(model, args=flags, log_path=work / "render.log") as server:
        client = httpx.Client(base_url=server.url, timeout=120)
        ids = reply_ids(client, model, args.tokens)
        n = len(ids)
        buckets = [(0, 16), (n // 4, n // 4 + 16), (n // 2, n // 2 + 16), (n - 16, n)]
        rows, reference = {}, None
        for name, per_call in [("vllm", None), ("plugin x1", 1), ("plugin x4", 4), ("plugin x16", 16)]:
            before = cpu_seconds(server.process.pid)
            chunks, seconds = run(client, model, ids, per_call, name.replace(" ", "-"))
            cpu = cpu_seconds(server.process.pid) - before
            reference = reference or said(chunks)
            if said(chunks) != reference:
                sys.exit(f"{name} says something else than vLLM's route: {said(chunks)} vs {reference}")
            k = per_call or 1
            per_bucket = [1000 * statistics.median(seconds[a // k : max(a // k + 1, b // k)]) for a, b in buckets]
            rows[name] = {"calls": len(seconds), "ms_per_call_by_position": per_bucket, "server_cpu_s": cpu,
                          "wall_s": sum(seconds)}  # fmt: skip
    header = " | ".join(f"tokens {a}-{b}" for a, b in buckets)
    print(f"\nreply of {n} tokens (reasoning, content, hermes tool call), one-token engine chunks\n")
    print(f"| route | calls | ms per call at {header} | render server CPU s | wall s |")
    print("|---|---|" + "---|" * len(buckets) + "---|---|")
    for name, row in rows.items():
        cells = " | ".join(f"{ms:.2f}" for ms in row["ms_per_call_by_position"])
        print(f"| {name} | {row['calls']} | {cells} | {row['server_cpu_s']:.2f} | {row['wall_s']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"reply_tokens": n, "buckets": buckets, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
