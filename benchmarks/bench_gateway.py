"""Output tokens/s through the gateway's recorded sessions vs directly against the replicas, in one run.

Setup:  make install
Usage:  python benchmarks/bench_gateway.py [--sessions 32] [--turns 4] [--max-tokens 128] [--rounds 2]

Starts `trl vllm-serve-async` with 2 CPU replicas of the tiny model, then runs the same load twice per round:
N concurrent multi-turn chat sessions, every turn generating exactly `--max-tokens` tokens (`ignore_eos`), once
straight to the replicas' `/v1/chat/completions` (sessions spread round-robin, vLLM renders the whole chat each turn)
and once through `/sessions/{sid}/v1/chat/completions` (recorded, delta-rendered). Same engines, same load; modes
alternate within a round so drift in machine load hits all of them; each alternating ratio is the median over rounds of
the gateway run over the direct run of the same round (gateway and direct+ids swap order every round).

Headline (`mixed`): direct and gateway sessions run *at the same time*, half of the sessions each, on the same
replicas; each path's throughput is its output tokens over its own wall time. Both paths then see exactly the same
engine, batch and machine noise, which on a 2-core machine swings separate runs by +-30%. The alternating separate
runs are printed as well.

Streaming (`stream: true`, the same load and pairing as the headline: half the sessions straight to the replicas,
half through the gateway, at the same time): output tokens/s of each path and the median time to first token; and
alternating separate runs of all sessions streaming one way, then the other, which show what the gateway's own work
(a streaming derender call per engine chunk) costs the shared machine. The gateway streams `--stream-interval` tokens
per chunk (its default, or as given in `--serve-args`); direct streams use vLLM's default (every token), and, when the
interval is above 1, are run once more with the same `stream_interval` in the request, for the like-for-like row.

Two direct baselines: `direct+ids` asks for what a trainer needs from each turn (`return_token_ids`, `logprobs`),
which is what the gateway records and the like-for-like comparison (the headline ratio); `direct` asks for text
only, which is cheaper for the engine (about 30% on this tiny model, where per-token logprob bookkeeping is a large
share of the work) and is printed for transparency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from trl.agents.server.launch import STREAM_INTERVAL
from trl.agents.server.process import ServeAsyncProcess
from trl.agents.tiny_model import build


SERVE_ARGS = ["--data-parallel-size", "2", "--dtype", "float32", "--max-model-len", "4096",
              "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]  # fmt: skip


async def run_load(
    urls: list[str],
    model: str,
    sessions: int,
    turns: int,
    max_tokens: int,
    extra: dict,
    offset: int = 0,
    ttfts: list[float] | None = None,
) -> float:
    """Run the load; return output tokens per second. With `ttfts` given, every turn streams (`stream: true`) and
    its time to the first chunk that carries a token is appended there."""

    async def episode(client: aiohttp.ClientSession, url: str, i: int) -> int:
        messages = [{"role": "user", "content": f"Session {i}: fix the failing test in src/app.py."}]
        produced = 0
        for t in range(turns):
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True, **extra}
            if ttfts is not None:
                body.update(stream=True, stream_options={"include_usage": True})
            started = time.perf_counter()
            async with client.post(url, json=body, timeout=aiohttp.ClientTimeout(total=600)) as response:
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}: {await response.text()}")
                if ttfts is None:
                    answer = await response.json()
                    tokens, content = answer["usage"]["completion_tokens"], answer["choices"][0]["message"]["content"]
                else:
                    tokens, content = await read_stream(response, started, ttfts)
            produced += tokens
            messages += [
                {"role": "assistant", "content": content or ""},
                {"role": "user", "content": f"turn {t} done"},
            ]
        return produced

    # aiohttp, not httpx: the load generator shares the 2 cores and must cost little CPU itself.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        start = time.perf_counter()
        ids = range(offset, offset + sessions)
        counts = await asyncio.gather(*(episode(client, urls[i % len(urls)].format(i=i), i) for i in ids))
        return sum(counts) / (time.perf_counter() - start)


async def read_stream(response: aiohttp.ClientResponse, started: float, ttfts: list[float]) -> tuple[int, str]:
    """Read an OpenAI chat stream: (completion tokens from its usage chunk, the content); its time to first token
    (the first chunk with a choice: both vLLM and the gateway send their first one with the first token)."""
    content, tokens, first = [], 0, None
    async for line in response.content:
        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[5:])
        if chunk.get("choices"):
            first = first or time.perf_counter() - started
            content.append(chunk["choices"][0]["delta"].get("content") or "")
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    ttfts.append(first)
    return tokens, "".join(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    parser.add_argument(
        "--serve-args", default="", help="extra flags for trl vllm-serve-async, e.g. '--no-render-server'"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    model = str(build(workdir / "model"))
    extra_args = args.serve_args.split()
    # the gateway's --stream-interval (tokens per streamed chunk); direct streams are also run with it, for fairness
    interval = (
        int(extra_args[extra_args.index("--stream-interval") + 1])
        if "--stream-interval" in extra_args
        else STREAM_INTERVAL
    )
    server = ServeAsyncProcess(
        model, args=[*SERVE_ARGS, *extra_args, "--log-dir", str(workdir)], log_path=workdir / "serve.log"
    )
    print(f"starting trl vllm-serve-async (2 replicas, logs in {workdir}) ...", file=sys.stderr, flush=True)
    with server:
        direct_urls = [f"{u}/v1/chat/completions" for u in server.replica_urls()]
        gateway_url = [f"{server.url}/sessions/bench-{{round}}-{{i}}/v1/chat/completions"]
        # warm-up at full size: the first batches of each shape are slow on the CPU build
        asyncio.run(run_load(direct_urls, model, args.sessions, 1, args.max_tokens, {}))
        modes = {
            "direct+ids": (direct_urls, {"return_token_ids": True, "logprobs": True}),
            "gateway": (None, {}),
            "direct": (direct_urls, {}),
        }
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        mixed: list[tuple[float, float]] = []

        async def both(r: int) -> tuple[float, float]:
            half = args.sessions // 2
            urls = [gateway_url[0].replace("{round}", f"mixed{r}")]
            ids = {"return_token_ids": True, "logprobs": True}
            return await asyncio.gather(
                run_load(direct_urls, model, half, args.turns, args.max_tokens, ids),
                run_load(urls, model, half, args.turns, args.max_tokens, {}, offset=half),
            )

        for r in range(args.rounds):
            direct_rate, gateway_rate = asyncio.run(both(r))
            mixed.append((direct_rate, gateway_rate))
            print(f"round {r} mixed      direct+ids {direct_rate:7.1f}  gateway {gateway_rate:7.1f}  "
                  f"ratio {gateway_rate / direct_rate:.3f}", file=sys.stderr, flush=True)  # fmt: skip
            order = ["direct+ids", "gateway", "direct"] if r % 2 == 0 else ["gateway", "direct+ids", "direct"]
            for mode in order:  # the paired runs swap places every round, so neither always goes first
                urls, extra = modes[mode]
                urls = urls or [gateway_url[0].replace("{round}", str(r))]
                rate = asyncio.run(run_load(urls, model, args.sessions, args.turns, args.max_tokens, extra))
                rates[mode].append(rate)
                print(f"round {r} {mode:10s} {rate:8.1f} output tokens/s", file=sys.stderr, flush=True)
        streamed: list[tuple[float, float]] = []
        ttft: dict[str, list[float]] = {"direct+ids": [], "gateway": []}

        async def both_streaming(r: int) -> tuple[float, float]:
            half = args.sessions // 2
            urls = [gateway_url[0].replace("{round}", f"stream{r}")]
            ids = {"return_token_ids": True, "logprobs": True}
            return await asyncio.gather(
                run_load(direct_urls, model, half, args.turns, args.max_tokens, ids, ttfts=ttft["direct+ids"]),
                run_load(urls, model, half, args.turns, args.max_tokens, {}, offset=half, ttfts=ttft["gateway"]),
            )

        alone: list[tuple[float, float]] = []
        same_interval: list[float | None] = []
        for r in range(args.rounds):
            direct_rate, gateway_rate = asyncio.run(both_streaming(r))
            streamed.append((direct_rate, gateway_rate))
            print(f"round {r} streaming  direct+ids {direct_rate:7.1f}  gateway {gateway_rate:7.1f}  "
                  f"ratio {gateway_rate / direct_rate:.3f}", file=sys.stderr, flush=True)  # fmt: skip
            ids, urls = {"return_token_ids": True, "logprobs": True}, [gateway_url[0].replace("{round}", f"alone{r}")]
            paths = {"direct+ids": (direct_urls, ids), "gateway": (urls, {}),
                     "direct+ids, same interval": (direct_urls, {**ids, "stream_interval": interval})}  # fmt: skip
            order = ["direct+ids", "gateway"] if r % 2 == 0 else ["gateway", "direct+ids"]
            order += ["direct+ids, same interval"] if interval > 1 else []
            rates_alone = {}
            for mode in order:  # swapping places every round, as above
                path_urls, extra = paths[mode]
                load = run_load(path_urls, model, args.sessions, args.turns, args.max_tokens, extra, ttfts=[])
                rates_alone[mode] = asyncio.run(load)
            alone.append((rates_alone["direct+ids"], rates_alone["gateway"]))
            same_interval.append(rates_alone.get("direct+ids, same interval"))
            print(f"round {r} streaming, separate runs: direct+ids {alone[-1][0]:7.1f}  gateway {alone[-1][1]:7.1f}  "
                  f"direct+ids with stream_interval {interval}: {same_interval[-1]}", file=sys.stderr, flush=True)  # fmt: skip
    result = {"sessions": args.sessions, "turns": args.turns, "max_tokens": args.max_tokens}
    result["streaming_ratios"] = [g / d for d, g in streamed]
    result["streaming_ratio"] = statistics.median(result["streaming_ratios"])
    result["streaming_alone_ratios"] = [g / d for d, g in alone]
    result["streaming_alone_ratio"] = statistics.median(result["streaming_alone_ratios"])
    result["stream_interval"] = interval
    if interval > 1:
        result["streaming_alone_ratios_same_interval"] = [
            g / d for (_, g), d in zip(alone, same_interval, strict=True)
        ]
        result["streaming_alone_ratio_same_interval"] = statistics.median(
            result["streaming_alone_ratios_same_interval"]
        )
    result["ttft_ms"] = {mode: 1000 * statistics.median(values) for mode, values in ttft.items()}
    result["ttft_ratio"] = result["ttft_ms"]["gateway"] / result["ttft_ms"]["direct+ids"]
    result.update({f"{mode}_tokens_per_s": statistics.median(values) for mode, values in rates.items()})
    # every ratio is paired per round (runs of the same round are adjacent: slow drift cancels), then the median
    result["mixed_ratios"] = [g / d for d, g in mixed]
    result["ratios"] = [g / d for g, d in zip(rates["gateway"], rates["direct+ids"], strict=True)]
    result["ratios_vs_text_only"] = [g / d for g, d in zip(rates["gateway"], rates["direct"], strict=True)]
    for name, per_round in (
        ("mixed_ratio", "mixed_ratios"),
        ("ratio", "ratios"),
        ("ratio_vs_text_only", "ratios_vs_text_only"),
    ):
        result[name] = statistics.median(result[per_round])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    load = f"{args.turns} turns x {args.max_tokens} tok, DP=2 CPU"
    print("| benchmark | load | direct+ids tok/s | gateway tok/s | gateway / direct+ids |")
    print("|---|---|---|---|---|")
    print(
        f"| gateway vs direct, alternating runs (median of per-round ratios) | {args.sessions} sessions x {load} | "
        f"{result['direct+ids_tokens_per_s']:.0f} | {result['gateway_tokens_per_s']:.0f} | {result['ratio']:.3f} |"
    )
    print(
        f"| gateway vs direct, same run | {args.sessions // 2} + {args.sessions // 2} sessions x {load} | "
        f"{statistics.median(d for d, _ in mixed):.0f} | {statistics.median(g for _, g in mixed):.0f} | "
        f"{result['mixed_ratio']:.3f} |"
    )
    print(
        f"| streaming, same run (time to first token: direct+ids {result['ttft_ms']['direct+ids']:.0f} ms, gateway "
        f"{result['ttft_ms']['gateway']:.0f} ms, ratio {result['ttft_ratio']:.2f}) | {args.sessions // 2} + "
        f"{args.sessions // 2} sessions x {load} | {statistics.median(d for d, _ in streamed):.0f} | "
        f"{statistics.median(g for _, g in streamed):.0f} | {result['streaming_ratio']:.3f} |"
    )
    print(
        f"| streaming, alternating runs | {args.sessions} sessions x {load} | "
        f"{statistics.median(d for d, _ in alone):.0f} | {statistics.median(g for _, g in alone):.0f} | "
        f"{result['streaming_alone_ratio']:.3f} |"
    )
    if interval > 1:
        print(
            f"| streaming, alternating runs, direct also with stream_interval {interval} | {args.sessions} sessions x "
            f"{load} | {statistics.median(same_interval):.0f} | {statistics.median(g for _, g in alone):.0f} | "
            f"{result['streaming_alone_ratio_same_interval']:.3f} |"
        )
    print(
        f"| (direct, text only: no token ids or logprobs) | {args.sessions} sessions x {load} | "
        f"{result['direct_tokens_per_s']:.0f} | | {result['ratio_vs_text_only']:.3f} |"
    )


if __name__ == "__main__":
    main()
