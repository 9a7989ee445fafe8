"""A deterministic scripted "model" behind a real OpenAI-compatible HTTP server: a test double for the agent.

It knows each task's oracle patch and plays an expert episode through the agent's real tools: look at the faulty
line with `grep`, apply the fix with `apply_patch`, run the tests, then submit (a reply without a tool call). The fix
is the statement's hint line where there is one (the toy suite's `Hint: in FILE the line `A` is wrong; it should be
`B`.`: the shortest edit, and one a small model can learn to copy), else one edit per hunk of the oracle (search =
the hunk's old side, replace = its new side). When a tool result reports an error it says so and
submits what it has. Used by the tests (the agent solves every toy task through real workspaces) and by `make demo`
(expert trajectories for the SFT warm-start). It is NOT a language model: `usage` counts whitespace-separated words,
and it only answers `POST /v1/chat/completions` and `GET /v1/models` (no streaming).

Usage:

    with ScriptedModel(rows) as model:           # rows: task dicts with `problem_statement` and `patch`
        client = openai.OpenAI(base_url=model.base_url, api_key="-")
"""

from __future__ import annotations

import json
import re
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from trl.agents.testing.http import JSONHandler


MODEL_NAME = "scripted-expert"
HINT = re.compile(
    r"^Hint: in (?P<file>\S+) the line `(?P<search>.+)` is wrong; it should be `(?P<replace>.*)`\.$", re.M
)


def expert_edits(statement: str, patch: str) -> list[dict[str, str]]:
    """The `apply_patch` arguments the expert uses: the hint's edit, else the oracle's hunks (`patch_edits`)."""
    hint = HINT.search(statement)
    return [hint.groupdict()] if hint else patch_edits(patch)


def patch_edits(patch: str) -> list[dict[str, str]]:
    """The oracle as `apply_patch` arguments, one per hunk.

    >>> patch_edits("diff --git a/m.py b/m.py\\n--- a/m.py\\n+++ b/m.py\\n@@ -1,2 +1,2 @@\\n x = 1\\n-y = x - 1\\n+y = x + 1\\n")
    [{'file': 'm.py', 'search': 'x = 1\\ny = x - 1\\n', 'replace': 'x = 1\\ny = x + 1\\n'}]
    """
    edits, file, old, new = [], None, None, None
    for line in patch.splitlines():
        if line.startswith("+++ "):
            file = line[4:].removeprefix("b/")
        elif line.startswith(("diff --git", "--- ", "index ", "new file", "deleted file")):
            continue
        elif line.startswith("@@"):
            old, new = [], []
            edits.append({"file": file, "old": old, "new": new})
        elif old is not None and line.startswith("\\"):
            continue  # "\ No newline at end of file"
        elif old is not None:
            sign, text = line[:1], line[1:] + "\n"
            if sign in (" ", "-"):
                old.append(text)
            if sign in (" ", "+"):
                new.append(text)
    return [{"file": e["file"], "search": "".join(e["old"]), "replace": "".join(e["new"])} for e in edits]


class ExpertScript:
    """Decides the next assistant message of an expert episode from the conversation so far."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.patches = [(row["problem_statement"], row["patch"]) for row in rows]

    def task_edits(self, messages: list[dict[str, Any]]) -> list[dict[str, str]] | None:
        task = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
        found = next(((s, p) for s, p in self.patches if s and s in task), None)
        return expert_edits(*found) if found else None

    def reply(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        edits = self.task_edits(messages)
        if edits is None:
            return {"content": "I do not know this task."}
        last = messages[-1]
        if last.get("role") == "tool" and str(last.get("content", "")).startswith("error"):
            return {"content": "The last step failed; submitting what I have."}
        plan = [("shell", {"command": _grep_command(edits[0])})]
        plan += [("apply_patch", edit) for edit in edits]
        plan.append(("shell", {"command": "python -m pytest -q -p no:cacheprovider 2>&1 | tail -3"}))
        step = sum(1 for m in messages if m.get("role") == "assistant")
        if step >= len(plan):
            return {"content": "The fix is in place."}
        name, arguments = plan[step]
        call = {
            "id": f"call_{step}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        return {"content": None, "tool_calls": [call]}


def _grep_command(edit: dict[str, str]) -> str:
    changed = [line for line in edit["search"].splitlines() if line.strip()]
    needle = changed[len(changed) // 2].strip() if changed else ""
    return f"grep -n -F -- {json.dumps(needle)} {edit['file']}"


def _words(value: Any) -> int:
    return len(re.findall(r"\S+", json.dumps(value)))


class ScriptedModel:
    """`ExpertScript` served over HTTP on loopback (a thread; use as a context manager)."""

    def __init__(self, rows: list[dict[str, Any]], host: str = "127.0.0.1", port: int = 0):
        script = ExpertScript(rows)

        class Handler(JSONHandler):
            def do_GET(self):
                if self.path.rstrip("/").endswith("/v1/models"):
                    return self.send_json(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
                return self.send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self.send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                try:
                    body = self.read_json()
                    messages = body["messages"]
                except (ValueError, KeyError, TypeError) as e:
                    return self.send_json(400, {"error": {"message": f"bad request: {e}", "type": "invalid_request"}})
                message = {"role": "assistant", **script.reply(messages)}
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                usage = {"prompt_tokens": _words(messages), "completion_tokens": _words(message)}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                return self.send_json(
                    200,
                    {
                        "id": "chatcmpl-scripted",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", MODEL_NAME),
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": usage,
                    },
                )

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.base_url = f"http://{host}:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, name="scripted-model", daemon=True)

    def __enter__(self) -> ScriptedModel:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
