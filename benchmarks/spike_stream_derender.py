"""Spike (wip branch): vLLM's stateless streaming derender vs the stream_derender plugin, same chunks, same output.

Needs a render server with the plugin on port 18123: VLLM_PLUGINS=trl_agents_derender python -m
vllm.entrypoints.launchers.render.entry --model M --port 18123 --enable-auto-tool-choice --tool-call-parser hermes
--reasoning-parser qwen3 (started from outside the repo root, whose stale egg-info hides the entry point).
"""
import httpx, json, time, statistics
R = "http://127.0.0.1:18123"; M = "/tmp/gc/model"
c = httpx.Client(timeout=120)
tools = [{"type": "function", "function": {"name": "shell", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]
text = "<think>\nI should list the files " + "and think more " * 60 + "\n</think>\n\nLet me look.\n<tool_call>\n{\"name\": \"shell\", \"arguments\": {\"command\": \"ls -la /tmp\"}}\n</tool_call>"
ids = c.post(f"{R}/tokenize", json={"model": M, "prompt": text, "add_special_tokens": False}).json()["tokens"]
msgs = [{"role": "user", "content": "hi"}]
prompt = c.post(f"{R}/v1/chat/completions/render", json={"model": M, "messages": msgs, "tools": tools}).json()["token_ids"]
print("reply tokens", len(ids))
chat = {"model": M, "messages": msgs, "tools": tools, "stream": True}
def chunk(i):
    last = i == len(ids) - 1
    return {"request_id": "r1", "choices": [{"index": 0, "token_ids": [ids[i]], "finish_reason": "stop" if last else None, "logprobs": None}]}
def run(stock):
    state, out, times = None, [], []
    for i in range(len(ids)):
        t = time.perf_counter()
        if stock:
            a = c.post(f"{R}/v1/chat/completions/derender", json={"stream": True, "generate_chunk": chunk(i), "stream_state": state, "prompt_tokens": len(prompt), "prompt_token_ids": prompt[-8:], "chat_request": chat}).json()
            state = a["stream_state"]
        else:
            a = c.post(f"{R}/trl/v1/chat/completions/derender_stream", json={"stream_id": "s1", "position": i, "generate_chunk": chunk(i), "chat_request": chat if i == 0 else None, "prompt_token_ids": prompt[-8:]}).json()
        times.append(time.perf_counter() - t)
        out.append(a["chunk"])
    return out, times
def summary(out):
    content = "".join((ch["choices"][0]["delta"].get("content") or "") for ch in out if ch["choices"])
    reasoning = "".join((ch["choices"][0]["delta"].get("reasoning") or "") for ch in out if ch["choices"])
    calls = [tc for ch in out if ch["choices"] for tc in (ch["choices"][0]["delta"].get("tool_calls") or [])]
    args = "".join((tc.get("function") or {}).get("arguments") or "" for tc in calls)
    names = [(tc.get("function") or {}).get("name") for tc in calls if (tc.get("function") or {}).get("name")]
    finish = [ch["choices"][0]["finish_reason"] for ch in out if ch["choices"] and ch["choices"][0]["finish_reason"]]
    return {"content": content, "reasoning_len": len(reasoning), "reasoning_head": reasoning[:40], "names": names, "args": args, "finish": finish}
a, ta = run(True); b, tb = run(False)
sa, sb = summary(a), summary(b)
print("stock ", sa); print("ours  ", sb); print("equal:", sa == sb)
n = len(ids)
for name, t in [("stock", ta), ("ours", tb)]:
    print(name, "ms/call first 16:", round(1000*statistics.median(t[:16]), 2), " last 16:", round(1000*statistics.median(t[-16:]), 2), " total s:", round(sum(t), 2))
