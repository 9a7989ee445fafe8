"""`make reliability`: try hard to break `trl vllm-serve-async` and the coding agent's sandbox, and print what held.

Starts the real server (2 CPU replicas of the tiny model, a session journal), then: load (256 concurrent sessions x
4 turns, and the same load straight at the replicas), bad input (hand-made cases and schemathesis fuzzing of the
gateway's OpenAPI schema), faults (a replica SIGKILLed mid-episode, the gateway restarted), security (control
routes without the token, the default bind, path tricks on trajectories) and sandbox escapes. Prints one table and
writes it to `docs/RELIABILITY.md`. Exits 1 if anything did not hold.

Usage: `make reliability` (or `python benchmarks/reliability.py [--sessions 256] [--turns 4] [--fuzz-examples 30]`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from trl.agents.testing.servers import API_TOKEN, serve_async
from trl.agents.tiny_model import build


ROOT = Path(__file__).resolve().parents[1]


ROWS: list[tuple[str, str, str, bool]] = []  # area, what was tried, how much, held


def row(area: str, tried: str, amount: str, held: bool, detail: str = "") -> None:
    ROWS.append((area, tried + (f" ({detail})" if detail else ""), amount, held))
    print(f"[{'held' if held else 'FAILED'}] {area}: {tried} -- {amount} {detail}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def episodes(base_urls: list[str], model: str, sessions: int, turns: int) -> tuple[list[float], int, list]:
    """`sessions` concurrent conversations of `turns` turns; returns turn latencies, failures, transcripts."""
    latencies, failures, transcripts = [], 0, []
    # idle connections dropped after 2 s: vLLM's servers (uvicorn) close them after 5 s, and a request sent on one as
    # it closes fails with a read error (seen on the direct run, where finished episodes leave idle connections)
    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def one(i: int):
            nonlocal failures
            url = base_urls[i % len(base_urls)].format(i=i)
            messages = [{"role": "user", "content": f"episode-{i} says hello"}]
            for k in range(turns):
                start = time.monotonic()
                try:
                    r = await http.post(f"{url}/chat/completions", json={
                        "model": model, "messages": messages, "max_tokens": 16, "temperature": 1.0})  # fmt: skip
                except httpx.TransportError as exc:  # a failed turn, counted like an error status
                    print(f"episode {i} turn {k}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    failures += 1
                    return
                latencies.append(time.monotonic() - start)
                if r.status_code != 200:
                    failures += 1
                    return
                messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"] or ""})
                messages.append({"role": "user", "content": f"episode-{i} turn {k}"})
            transcripts.append((i, messages))

        await asyncio.gather(*(one(i) for i in range(sessions)))
    return latencies, failures, transcripts


def load(server, model: str, tokenizer, sessions: int, turns: int, auth: dict) -> None:
    total = sessions * turns
    lat, failed, _ = asyncio.run(episodes([f"{server.url}/sessions/load-{{i}}/v1"], model, sessions, turns))
    http = httpx.Client(base_url=server.url, headers=auth, timeout=120)
    mixed = lost = 0
    for i in range(sessions):
        trajectory = http.get(f"/sessions/load-{i}/trajectory").json()
        segments = trajectory["segments"]
        n_turns = sum(len(s["turns"]) for s in segments)
        lost += turns - n_turns
        text = tokenizer.decode(segments[-1]["token_ids"])
        markers = {int(m.split()[0]) for m in text.split("episode-")[1:]}
        mixed += markers != {i}
        http.delete(f"/sessions/load-{i}")
    row("load", f"{sessions} concurrent sessions x {turns} turns through the gateway", f"{total} turns",
        failed == 0 and lost == 0 and mixed == 0,
        f"lost {lost}, mixed {mixed}, failed {failed}; turn latency p50 {percentile(lat, .5):.2f} s, "
        f"p99 {percentile(lat, .99):.2f} s")  # fmt: skip
    replicas = [f"{u}/v1" for u in server.replica_urls()]
    lat_direct, failed_direct, _ = asyncio.run(episodes(replicas, model, sessions, turns))
    row("load", "the same load straight at the replicas (no gateway, nothing recorded)", f"{total} turns",
        failed_direct == 0, f"p50 {percentile(lat_direct, .5):.2f} s, p99 {percentile(lat_direct, .99):.2f} s")  # fmt: skip


BAD_INPUT = [
    ("invalid JSON", "POST", "/sessions/bad/v1/chat/completions", b"{not json"),
    ("a JSON list body", "POST", "/sessions/bad/v1/chat/completions", b"[1, 2]"),
    ("messages of the wrong type", "POST", "/sessions/bad/v1/chat/completions", {"model": "M", "messages": "hi"}),
    ("no messages", "POST", "/sessions/bad/v1/chat/completions", {"model": "M"}),
    ("negative max_tokens", "POST", "/sessions/bad/v1/chat/completions",
     {"model": "M", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}),
    ("huge max_tokens", "POST", "/sessions/bad/v1/chat/completions",
     {"model": "M", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**12}),
    ("unknown model", "POST", "/sessions/bad/v1/chat/completions",
     {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
    ("odd unicode (lone surrogate escape, RTL, NUL)", "POST", "/sessions/bad/v1/chat/completions",
     b'{"model": "M", "messages": [{"role": "user", "content": "\\ud800 \\u202e \\u0000"}]}'),
    ("invalid session id", "POST", "/sessions/%20bad%21/v1/chat/completions",
     {"model": "M", "messages": [{"role": "user", "content": "x"}]}),
    ("a 2,000-character session id", "POST", "/sessions/" + "a" * 2000 + "/v1/chat/completions",
     {"model": "M", "messages": [{"role": "user", "content": "x"}]}),
    ("n=3 on a recorded session", "POST", "/sessions/bad/v1/chat/completions",
     {"model": "M", "messages": [{"role": "user", "content": "x"}], "n": 3}),
    ("a prompt longer than the context", "POST", "/sessions/bad/v1/chat/completions",
     {"model": "M", "messages": [{"role": "user", "content": "word " * 20000}]}),
    ("a 70 MB body", "POST", "/sessions/bad/v1/chat/completions", b"x" * (70 * 1024 * 1024)),
    ("a wrong weight-sync body", "POST", "/weights/update", {"names": 5}),
    ("streamed chat, unknown model", "POST", "/sessions/bad/v1/chat/completions",
     {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}], "stream": True}),
    ("Messages: invalid JSON", "POST", "/sessions/bad/v1/messages", b"{not json"),
    ("Messages: no max_tokens", "POST", "/sessions/bad/v1/messages",
     {"model": "M", "messages": [{"role": "user", "content": "x"}]}),
    ("Messages: unknown content block", "POST", "/sessions/bad/v1/messages",
     {"model": "M", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
    ("Messages: streamed, a prompt longer than the context", "POST", "/sessions/bad/v1/messages",
     {"model": "M", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "word " * 20000}]}),
    ("Responses: unknown previous_response_id", "POST", "/sessions/bad/v1/responses",
     {"model": "M", "input": "x", "previous_response_id": "resp_nope"}),
    ("Responses: a hosted tool", "POST", "/sessions/bad/v1/responses",
     {"model": "M", "input": "x", "tools": [{"type": "web_search"}]}),
    ("Responses: input of the wrong type", "POST", "/sessions/bad/v1/responses", {"model": "M", "input": 5}),
]  # fmt: skip


def bad_input(server, model: str, auth: dict, canary: dict, fuzz_examples: int) -> None:
    http = httpx.Client(base_url=server.url, headers=auth, timeout=120)
    answers = []
    for name, method, path, body in BAD_INPUT:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        body = body.replace(b'"M"', json.dumps(model).encode())
        r = http.request(method, path, content=body, headers={"content-type": "application/json"})
        try:
            documented = r.status_code in (400, 404, 409, 413, 422) and "message" in r.json()["error"]
        except (ValueError, KeyError, TypeError):
            documented = False
        answers.append((name, r.status_code, documented))
    held = all(ok for *_, ok in answers)
    detail = ", ".join(f"{name}: {code}" for name, code, _ in answers)
    row("bad input", "hand-made requests", f"{len(BAD_INPUT)} cases", held, detail)
    st = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.url}/openapi.json",
          "--checks", "not_a_server_error", "--max-examples", str(fuzz_examples), "-H",
          f"Authorization: Bearer {API_TOKEN}", "--exclude-path-regex", "^/weights", "--request-timeout", "60",
          "--no-color"]  # fmt: skip
    result = subprocess.run(st, capture_output=True, text=True, timeout=1800, cwd=tempfile.gettempdir())  # its cache
    summary = [line for line in result.stdout.splitlines() if "passed" in line or "failed" in line or "error" in line]
    row("bad input", "schemathesis: property-based requests from the gateway's OpenAPI schema (weight routes "
        "excluded), check: no 5xx", f"{fuzz_examples} examples per operation", result.returncode == 0,
        (summary[-1].strip() if summary else result.stdout[-300:]))  # fmt: skip
    healthy = http.get("/health").status_code == 200
    unchanged = http.get(f"/sessions/{canary['session_id']}/trajectory").json() == canary
    row("bad input", "afterwards: server up, an unrelated session's data unchanged", "1 canary session",
        healthy and unchanged)  # fmt: skip


def security(server, auth: dict, canary: dict) -> None:
    from trl.agents.server.launch import make_parser

    http = httpx.Client(base_url=server.url, timeout=60)
    sid = canary["session_id"]
    control = [("GET", "/sessions"), ("GET", "/weights"), ("GET", f"/sessions/{sid}/trajectory"), ("DELETE", f"/sessions/{sid}"),
               ("POST", "/weights/init"), ("POST", "/weights/start"), ("POST", "/weights/update"),
               ("POST", "/weights/finish"), ("POST", "/weights/abort"), ("POST", "/weights/lora")]  # fmt: skip
    codes = [http.request(m, p).status_code for m, p in control]
    wrong = [http.request(m, p, headers={"Authorization": "Bearer nope"}).status_code for m, p in control]
    row("security", "control routes without a token, and with a wrong one", f"{len(control)} routes x 2",
        set(codes + wrong) == {401}, f"answers {sorted(set(codes + wrong))}")  # fmt: skip
    host = make_parser().parse_args(["--model", "m"]).host
    row("security", "default bind address of `trl vllm-serve-async`", "1", host == "127.0.0.1", host)
    tricks = [f"/sessions/..%2F{sid}/trajectory", f"/sessions/x/../{sid}/trajectory", "/sessions/%2e%2e/trajectory",
              f"/sessions/{sid}%00/trajectory", f"/sessions/{sid}/trajectory/../../sessions"]  # fmt: skip
    leaks = 0
    for path in tricks:
        r = http.get(path, headers=auth)
        leaks += r.status_code == 200 and r.json() != canary and "token_ids" in r.text
    row("security", "path tricks on trajectory routes (.., %2F, NUL)", f"{len(tricks)} paths", leaks == 0)


def faults(server, model: str, auth: dict) -> None:
    http = httpx.Client(base_url=server.url, headers=auth, timeout=120)
    asyncio.run(episodes([f"{server.url}/sessions/fault-{{i}}/v1"], model, 8, 1))
    placement = {s["session_id"]: s["replica"] for s in http.get("/sessions").json()["sessions"]}
    victim_url = server.replica_urls()[1]
    port = victim_url.rsplit(":", 1)[1]
    found = subprocess.run(["pgrep", "-f", "--", f"api_server .*--port {port}"], capture_output=True, text=True)
    pids = found.stdout.split()
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(8)  # a health check or two
    status = {}
    for sid, replica in placement.items():
        r = http.post(f"/sessions/{sid}/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "again"}], "max_tokens": 4})  # fmt: skip
        status[sid] = (replica, r.status_code)
    dead = [c for r, c in status.values() if r == "replica-1"]
    alive = [c for r, c in status.values() if r != "replica-1"]
    health = http.get("/health")
    row("faults", "a replica SIGKILLed mid-episode", f"{len(placement)} sessions",
        bool(pids) and set(dead) == {503} and set(alive) == {200} and health.status_code == 503,
        f"its sessions: {sorted(set(dead))}, the others: {sorted(set(alive))}, /health {health.status_code}")  # fmt: skip


def restart(model_dir: str, logs: Path, journal: Path, auth: dict, before: dict) -> None:
    (logs / "restart").mkdir(parents=True, exist_ok=True)
    with serve_async(model_dir, logs / "restart", "--journal-dir", str(journal)) as server:
        http = httpx.Client(base_url=server.url, headers=auth, timeout=120)
        after = {sid: http.get(f"/sessions/{sid}/trajectory").json() for sid in before}
    row("faults", "the gateway restarted (stopped, started on the same --journal-dir)", f"{len(before)} sessions",
        after == before, "every trajectory identical, token for token")  # fmt: skip


def sandbox_escapes() -> None:
    from code_repair.sandbox import Limits, Sandbox

    with tempfile.TemporaryDirectory() as ws, Sandbox(ws, limits=Limits(seconds=3, output_bytes=100_000)) as box:
        attempts = {
            "write outside the workspace": ("touch /tmp/escaped; touch $HOME/../escaped2", lambda r: not Path("/tmp/escaped").exists()),
            "network": ("python -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)\"", lambda r: not r.ok),
            "read the host's processes in /proc": ("ls /proc | grep -cE '^[0-9]+$'", lambda r: int(r.output.split()[0]) < 6),
            "fork bomb": (":(){ :|:& };:; sleep 1", lambda r: "Resource temporarily unavailable" in r.output),
            "runaway output": ("yes", lambda r: r.output_capped),
            "a command that never ends": ("sleep 1000", lambda r: r.timed_out),
        }  # fmt: skip
        results = {name: check(box.run(command)) for name, (command, check) in attempts.items()}
        results["still serving afterwards"] = box.run("echo ok").output == "ok\n"
        held = all(results.values())
        row("sandbox", "escape attempts: " + ", ".join(results), f"{len(results)} attempts ({box.isolation})", held,
            "; ".join(f"{k}: {'held' if v else 'NOT held'}" for k, v in results.items()))  # fmt: skip


SUITE_FAULTS = {
    "agents that crash, hang, answer nothing or run overlong (25% of a GRPO batch)":
        "tests/test_rollout.py::test_failing_episodes_never_stop_training_and_are_counted",
    "a weight sync interrupted: a replica stopped (SIGSTOP) mid-sync":
        "tests/test_weight_sync.py::test_stopped_replica_fails_the_sync_by_name_and_is_quarantined",
    "a weight sync interrupted: a replica killed (SIGKILL) during the update phase":
        "tests/test_weight_sync.py::test_killed_replica_fails_the_sync_by_name_and_survivor_serves_one_version",
    "an agent flooding its tool output, hanging commands, escapes, unknown tools (real gateway, random model)":
        "tests/test_code_repair_agent.py::test_agent_against_the_random_model_ends_every_episode_within_its_limits",
}  # fmt: skip


def suite_faults() -> None:
    """Faults the test suite already provokes with real servers: run those tests and report them here."""
    for tried, test in SUITE_FAULTS.items():
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                                capture_output=True, text=True, timeout=1800)  # fmt: skip
        last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-200:]
        row("faults", tried, "1 test run", result.returncode == 0, f"`{test.split('::')[1]}`: {last}")


def write_table(path: Path, seconds: float) -> str:
    lines = ["| area | what was tried | how much | held |", "|---|---|---|---|"]
    lines += [f"| {a} | {t} | {n} | {'yes' if h else '**no**'} |" for a, t, n, h in ROWS]
    table = "\n".join(lines)
    path.write_text(
        "# Reliability\n\n"
        f"Output of `make reliability` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, 2 CPU replicas of the "
        f"tiny model, {seconds:.0f} s). Regenerate with `make reliability`; the table is its output.\n\n"
        + table
        + "\n"
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--fuzz-examples", type=int, default=30)
    parser.add_argument("--skip-suite-faults", action="store_true", help="do not rerun the fault tests of the suite")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    args = parser.parse_args()
    start = time.monotonic()
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    model = str(build(work / "model"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    journal = work / "journal"
    (work / "logs").mkdir()
    sandbox_escapes()
    with serve_async(model, work / "logs", "--journal-dir", str(journal)) as server:
        http = httpx.Client(base_url=server.url, headers=auth, timeout=120)
        asyncio.run(episodes([f"{server.url}/sessions/canary-{{i}}/v1"], model, 4, 2))
        canary = http.get("/sessions/canary-0/trajectory").json()
        load(server, model, tokenizer, args.sessions, args.turns, auth)
        bad_input(server, model, auth, canary, args.fuzz_examples)
        security(server, auth, canary)
        faults(server, model, auth)
        kept = {s["session_id"]: http.get(f"/sessions/{s['session_id']}/trajectory").json()
                for s in http.get("/sessions").json()["sessions"]}  # fmt: skip
    restart(model, work / "logs", journal, auth, kept)
    if not args.skip_suite_faults:
        suite_faults()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print("\n" + write_table(args.out, time.monotonic() - start))
    print(f"\nwritten to {args.out}")
    return 0 if all(h for *_, h in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
