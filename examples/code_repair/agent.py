"""A minimal coding agent over the `openai` client: two tools (`shell`, `apply_patch`), hard limits, a unified diff.

The agent talks to any OpenAI-compatible chat endpoint (a `trl vllm-serve-async` session URL when training, vLLM or
a hosted API otherwise) and works in a git workspace through `sandbox.Sandbox`. Each episode:

* starts from a system prompt and the task, then loops: one model reply, then every tool call in it is run and
  answered with a `tool` message (errors included: the model sees them and can recover);
* stops when the model replies without a tool call after changing something (its submission), or when a limit runs
  out: tool calls (a reply without a tool call counts as one, and nudges the model), generated tokens (as the
  server reports them in `usage`, never estimated), wall time. Warnings are added to tool results as limits near;
* truncates tool output for the model (with a note saying how much was cut);
* returns an `EpisodeResult`: the workspace's unified diff (computed by git, not written by the model), why it
  stopped, the messages, tool statistics and a structured log of every tool call.

`RepairAgent` adapts it to `trl.agents.AgentRollout` (prepare the workspace from a dataset row, run, clean up).
Not here: rewards (`rewards.py`), data and workspaces (`data.py`), the model.

Setup: `pip install trl-agents openai`. Usage (against any OpenAI-compatible endpoint, in a git repository):

    python examples/code_repair/agent.py "Fix the failing test in tests/test_ops.py" --repo PATH \\
        --base-url http://127.0.0.1:8000/v1 [--model NAME] [--tool-limit 30] [--token-limit 8192] [--log run.json]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

from code_repair.sandbox import CommandResult, Limits, Sandbox, SandboxError


SYSTEM_PROMPT = """You are a software engineer fixing a bug in the git repository in your working directory.
Tools: `shell` runs a bash command in the repository (no network, 10 s per command); `apply_patch` replaces one
exact, unique piece of text in a file. Find the cause, fix it with apply_patch, check it, then reply without a tool
call to submit. Keep changes minimal; do not edit the tests."""

NUDGE = "No tool call in your reply. Use shell to investigate or apply_patch to change a file; reply without a tool call only when the fix is in place."

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a bash command in the repository root and return its output (truncated).",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string", "description": "The command, e.g. `grep -rn foo .`"}},
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "apply_patch",
            "description": "Replace `search` by `replace` in `file`. `search` must occur exactly once; an empty "
            "`search` creates a new file.",
            "parameters": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "description": "Path relative to the repository root."},
                    "search": {"type": "string", "description": "Exact text to replace, with enough context."},
                    "replace": {"type": "string", "description": "The new text."},
                },
                "required": ["file", "search", "replace"],
            },
        },
    },
]

# Command names counted in the tool statistics (the first word of each part of a pipeline or command list).
COMMANDS = {"ls", "cat", "head", "tail", "grep", "rg", "find", "sed", "awk", "wc", "diff", "git", "python",
            "pytest", "echo", "cd", "pwd", "mkdir", "rm", "mv", "cp", "touch", "pip"}  # fmt: skip
STOP_REASONS = ("submitted", "tool_limit", "token_limit", "time_limit", "context_exhausted")
DIFF_COMMAND = (
    "git add -A -- . ':(exclude,glob)**/__pycache__/**' ':(exclude,glob)**/*.pyc' ':(exclude).pytest_cache' "
    "&& git diff --cached --no-color --no-ext-diff"
)


@dataclass
class AgentConfig:
    """Limits and sampling of one episode."""

    model: str | None = None  # served model name; None: the endpoint's first model
    tool_limit: int = 30  # tool calls, replies without one included
    token_limit: int = 8192  # tokens the model may generate over the episode (server-reported usage)
    time_limit: float = 120.0  # seconds of wall time for the episode
    response_limit: int = 1024  # max_tokens of one reply
    output_chars: int = 2000  # tool output shown to the model
    command_seconds: float = 10.0  # one shell command
    temperature: float = 1.0
    top_p: float = 1.0
    extra_body: dict[str, Any] = field(default_factory=dict)  # e.g. {"top_k": 20}, passed to the server as is
    # apply_patch: when a one-line `search` is not in the file, use the one line at least this similar (difflib
    # ratio of the stripped texts; None: exact matches only). Lets near-miss copies edit, and be scored.
    fuzzy_match: float | None = None


@dataclass
class AgentArguments:
    """The agent's limits as command-line / recipe arguments (a `TrlParser` dataclass: its names do not clash with
    `GRPOConfig`'s, which owns `temperature` and `top_p`). `config(...)` makes the `AgentConfig`."""

    tool_limit: int = field(default=AgentConfig.tool_limit, metadata={"help": "tool calls per episode"})
    token_limit: int = field(default=AgentConfig.token_limit, metadata={"help": "tokens generated per episode"})
    time_limit: float = field(default=AgentConfig.time_limit, metadata={"help": "seconds per episode"})
    response_limit: int = field(default=AgentConfig.response_limit, metadata={"help": "max_tokens of one reply"})
    fuzzy_match: float | None = field(
        default=None,
        metadata={"help": "apply_patch edits the closest line when a one-line search is this similar (0-1)"},
    )

    def config(self, model: str | None, temperature: float = 1.0, top_p: float = 1.0) -> AgentConfig:
        return AgentConfig(model=model, temperature=temperature, top_p=top_p, **asdict(self))


@dataclass
class ToolCall:
    """One entry of the structured tool-call log."""

    turn: int
    tool: str
    arguments: dict[str, Any] | str  # the raw string when it was not a JSON object
    ok: bool
    output: str  # as shown to the model
    seconds: float
    commands: list[str] = field(default_factory=list)  # shell: the command names (`command_types`)


@dataclass
class EpisodeResult:
    """What an episode produced."""

    diff: str
    stop_reason: str
    messages: list[dict[str, Any]]
    tool_log: list[ToolCall]
    turns: int
    completion_tokens: int
    prompt_tokens: int  # of the last request: the context the model saw
    seconds: float
    error: str = ""  # the server's message when the episode ended on a refused request

    def stats(self) -> dict[str, Any]:
        """Flat statistics: tool calls and successes per tool, shell commands by type, budget used."""
        out: dict[str, Any] = {"turns": self.turns, "completion_tokens": self.completion_tokens}
        for name in ("shell", "apply_patch"):
            calls = [c for c in self.tool_log if c.tool == name]
            out[f"tool_calls_{name}"] = len(calls)
            out[f"tool_success_{name}"] = sum(c.ok for c in calls)
        out["tool_calls_invalid"] = sum(c.tool not in ("shell", "apply_patch") for c in self.tool_log)
        for command, n in Counter(name for c in self.tool_log for name in c.commands).items():
            out[f"shell_cmd_{command}"] = n
        return out

    def reward_kwargs(self) -> dict[str, Any]:
        """What `RepairAgent` returns to `AgentRollout` (so to the reward functions)."""
        return {"generated_diff": self.diff, "stop_reason": self.stop_reason, **self.stats()}


def command_types(command: str) -> list[str]:
    """The command names in a shell line, for statistics.

    >>> command_types("cd src && grep -rn foo . | head -5; python -m pytest -q")
    ['cd', 'grep', 'head', 'python']
    """
    names = []
    for part in re.split(r"&&|\|\||[;|\n]", command):
        words = part.strip().split()
        if words:
            names.append(words[0] if words[0] in COMMANDS else "other")
    return names


class CodingAgent:
    """Runs episodes with `config`'s limits (see the module docstring)."""

    def __init__(self, config: AgentConfig | None = None):
        self.config = config or AgentConfig()

    def run(
        self,
        task: str,
        workspace: str | Path,
        client: openai.OpenAI,
        env: Mapping[str, str] | None = None,
        seed: int | None = None,
    ) -> EpisodeResult:
        """One episode on `task` in the git repository `workspace`, talking to the model through `client`; `env`:
        extra environment variables of its commands; `seed`: sample reply n with seed `seed + n` (the same seeds
        give two policies the same random numbers: paired evaluations), None: unseeded."""
        cfg = self.config
        start = time.monotonic()
        model = cfg.model or client.models.list().data[0].id
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": task},
        ]
        log: list[ToolCall] = []
        budget = _Budget(cfg, start)
        stop, error, turns, prompt_tokens, diff = "", "", 0, 0, None
        with Sandbox(workspace, limits=Limits(seconds=cfg.command_seconds), env=env) as sandbox:
            while not (stop := budget.exhausted()):
                try:
                    reply = client.chat.completions.create(
                        model=model,
                        messages=messages,
                        tools=TOOLS,
                        max_tokens=budget.max_tokens(),
                        temperature=cfg.temperature,
                        top_p=cfg.top_p,
                        timeout=budget.seconds_left(),
                        extra_body=cfg.extra_body or None,
                        seed=None if seed is None else seed + turns,
                    )
                except openai.BadRequestError as e:  # the context is full (or the request was refused): stop here
                    stop, error = "context_exhausted", _server_message(e)
                    break
                except openai.APITimeoutError:
                    stop = "time_limit"
                    break
                turns += 1
                budget.tokens_used += reply.usage.completion_tokens if reply.usage else 0
                prompt_tokens = reply.usage.prompt_tokens if reply.usage else prompt_tokens
                message = reply.choices[0].message
                messages.append(message.model_dump(exclude_none=True, exclude_defaults=True) | {"role": "assistant"})
                if not message.tool_calls:
                    diff = _diff(sandbox)
                    if diff.strip():
                        stop = "submitted"
                        break
                    budget.tool_calls += 1  # inaction is an action
                    messages.append({"role": "user", "content": budget.warn(NUDGE)})
                    continue
                for call in message.tool_calls:
                    record = self._call(sandbox, call, turns, budget)
                    log.append(record)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": record.output})
            if stop != "submitted":  # a submission's diff was just computed
                diff = _diff(sandbox)
        seconds = time.monotonic() - start
        return EpisodeResult(diff, stop, messages, log, turns, budget.tokens_used, prompt_tokens, seconds, error)

    def _call(self, sandbox: Sandbox, call, turn: int, budget: _Budget) -> ToolCall:
        """Run one tool call (or say why not); the output shown to the model carries the budget warnings."""
        start = time.monotonic()
        name = call.function.name
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as e:
            arguments = call.function.arguments
            ok, text = False, f"error: arguments are not valid JSON ({e.msg})"
        else:
            ok, text = self._dispatch(sandbox, name, arguments, budget)
        ran = _is_shell(name, arguments) and budget.tool_calls < self.config.tool_limit
        commands = command_types(arguments["command"]) if ran else []  # only commands that actually ran
        budget.tool_calls += 1
        output = budget.warn(self._truncate(text))
        return ToolCall(turn, name, arguments, ok, output, time.monotonic() - start, commands)

    def _dispatch(self, sandbox: Sandbox, name: str, arguments, budget: _Budget) -> tuple[bool, str]:
        if budget.tool_calls >= self.config.tool_limit:
            return False, "not run: the tool-call limit is reached"
        if not isinstance(arguments, dict):
            return False, "error: arguments must be a JSON object"
        if name == "shell":
            if not _is_shell(name, arguments):
                return False, "error: shell needs a non-empty string `command`"
            seconds = min(self.config.command_seconds, max(budget.seconds_left(), 0.1))
            return _shell_output(sandbox.run(arguments["command"], seconds=seconds))
        if name == "apply_patch":
            return apply_patch(sandbox, arguments, fuzzy_match=self.config.fuzzy_match)
        return False, f"error: unknown tool {name!r}; the tools are shell and apply_patch"

    def _truncate(self, text: str) -> str:
        limit = self.config.output_chars
        if len(text) <= limit:
            return text
        return text[:limit] + f"\n[output truncated: {len(text) - limit} more characters not shown]"


class _Budget:
    """Tool calls, generated tokens and time left in an episode, and the warnings that go with them."""

    def __init__(self, config: AgentConfig, start: float):
        self.config, self.start = config, start
        self.tool_calls = 0
        self.tokens_used = 0

    def seconds_left(self) -> float:
        return self.config.time_limit - (time.monotonic() - self.start)

    def max_tokens(self) -> int:
        return max(1, min(self.config.response_limit, self.config.token_limit - self.tokens_used))

    def exhausted(self) -> str:
        """The stop reason if a limit has run out, else ''."""
        if self.tool_calls >= self.config.tool_limit:
            return "tool_limit"
        if self.tokens_used >= self.config.token_limit:
            return "token_limit"
        if self.seconds_left() <= 0:
            return "time_limit"
        return ""

    def warn(self, text: str) -> str:
        """`text` with a warning in front for each limit that is close."""
        cfg, notes = self.config, []
        calls_left = cfg.tool_limit - self.tool_calls
        if calls_left <= 3:
            notes.append(f"{calls_left} tool call(s) left." if calls_left > 0 else "No tool calls left.")
        if cfg.token_limit - self.tokens_used < cfg.token_limit // 4:
            notes.append(f"Only {max(cfg.token_limit - self.tokens_used, 0)} tokens left: apply your fix now.")
        if self.seconds_left() < cfg.time_limit / 4:
            notes.append(f"Only {max(self.seconds_left(), 0):.0f} s left.")
        return "".join(f"[warning] {n}\n" for n in notes) + text


def _is_shell(name: str, arguments) -> bool:
    """A well-formed shell call."""
    command = arguments.get("command") if isinstance(arguments, dict) else None
    return name == "shell" and isinstance(command, str) and bool(command.strip())


def _shell_output(result: CommandResult) -> tuple[bool, str]:
    """The model's view of a command: what went wrong first (so truncation cannot hide it), then the output."""
    if result.timed_out:
        return False, f"[command killed: it ran past {result.seconds:.0f} s]\n{result.output}"
    if result.output_capped:
        return False, f"[command killed: it printed more than the output limit]\n{result.output}"
    if result.exit_code != 0:
        return False, f"[exit code {result.exit_code}]\n{result.output}"
    return True, result.output or "[no output]"


def apply_patch(sandbox: Sandbox, arguments: dict[str, Any], fuzzy_match: float | None = None) -> tuple[bool, str]:
    """Replace the unique occurrence of `search` by `replace` in `file` (inside the workspace only).

    With `fuzzy_match`, a one-line `search` that is not in the file replaces the single line most similar to it,
    if that line is at least `fuzzy_match` similar and clearly the best (indentation kept).
    """
    values = [arguments.get(key) for key in ("file", "search", "replace")]
    if not all(isinstance(v, str) for v in values):
        return False, "error: apply_patch needs string `file`, `search` and `replace`"
    file, search, replace = values
    try:
        path = sandbox.resolve(file)
    except SandboxError as e:
        return False, f"error: {e}"
    if not path.exists():
        if search:
            return False, f"error: {file} does not exist (an empty `search` creates it)"
        sandbox.write_text(path, replace)
        return True, f"created {file}"
    if not path.is_file():
        return False, f"error: {file} is not a file"
    text = path.read_text(encoding="utf-8", errors="replace")
    count = text.count(search) if search else 0
    if count == 0 and fuzzy_match is not None and search.strip() and "\n" not in search.strip():
        lines = text.splitlines(keepends=True)
        match = _closest_line(lines, search.strip(), fuzzy_match)
        if match is not None:
            old = lines[match]
            indent = old[: len(old) - len(old.lstrip())]
            ending = old[len(old.rstrip("\r\n")) :]
            lines[match] = indent + replace.strip() + ending
            sandbox.write_text(path, "".join(lines))
            return True, f"patched {file} (closest line {match + 1}: {old.strip()!r})"
    if count != 1:
        why = "`search` is empty but the file exists" if not search else f"`search` occurs {count} times in {file}"
        hint = "copy the exact text (grep -n helps)" if count == 0 else "add lines around it to make it unique"
        return False, f"error: {why}; {hint}"
    sandbox.write_text(path, text.replace(search, replace, 1))
    return True, f"patched {file}"


def _closest_line(lines: list[str], search: str, threshold: float, margin: float = 0.05) -> int | None:
    """Index of the line most similar to `search` if it reaches `threshold` and beats the runner-up by `margin`."""
    scores = sorted(
        ((difflib.SequenceMatcher(None, search, line.strip()).ratio(), i) for i, line in enumerate(lines)),
        reverse=True,
    )
    if not scores or scores[0][0] < threshold:
        return None
    if len(scores) > 1 and scores[1][0] > scores[0][0] - margin:
        return None
    return scores[0][1]


def _diff(sandbox: Sandbox) -> str:
    """The workspace's changes against its commit, new files included, as a unified diff."""
    result = sandbox.run(DIFF_COMMAND, seconds=60)
    return result.output if result.ok else ""


def _server_message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return str(body.get("message") or error.message)


class RepairAgent:
    """`AgentRollout`'s agent: prepares the row's workspace, runs `CodingAgent` in it, removes it afterwards.

    Args:
        workspaces: A `data.Workspaces` (repository cache and per-episode copies).
        config: The agent's limits and sampling.
        request_timeout: Deadline of one HTTP request to the model server.
    """

    def __init__(self, workspaces, config: AgentConfig | None = None, request_timeout: float = 300.0):
        self.workspaces = workspaces
        self.agent = CodingAgent(config)
        self.request_timeout = request_timeout

    def __call__(self, example: dict[str, Any], base_url: str) -> dict[str, Any]:
        return self.episode(example, base_url).reward_kwargs()

    def episode(self, example: dict[str, Any], base_url: str, seed: int | None = None) -> EpisodeResult:
        """One episode on the row `example` against the model at `base_url`, in a workspace of its own (`seed`: see
        `CodingAgent.run`)."""
        client = openai.OpenAI(base_url=base_url, api_key="-", timeout=self.request_timeout, max_retries=0)
        workspace = self.workspaces.checkout(example)
        try:
            return self.agent.run(example["problem_statement"], workspace, client, env=self.workspaces.env, seed=seed)
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the coding agent once in a git repository.")
    parser.add_argument("task", help="the task statement (or @FILE to read it from a file)")
    parser.add_argument("--repo", default=".", help="git repository to work in (changed in place)")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "-"))
    parser.add_argument("--model", default=None, help="served model name (default: the endpoint's first)")
    parser.add_argument("--log", type=Path, help="write the messages and the tool-call log here (JSON)")
    defaults = AgentConfig()
    for name in ("tool_limit", "token_limit", "time_limit", "response_limit", "temperature", "top_p"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, name)), default=getattr(defaults, name))
    parser.add_argument("--fuzzy-match", type=float, default=None, help="see AgentConfig.fuzzy_match")
    args = parser.parse_args(argv)
    task = Path(args.task[1:]).read_text() if args.task.startswith("@") else args.task
    if not (Path(args.repo) / ".git").exists():
        parser.error(f"{args.repo} is not a git repository")
    config = AgentConfig(**{k: v for k, v in vars(args).items() if k in AgentConfig.__dataclass_fields__})
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=args.time_limit, max_retries=0)
    result = CodingAgent(config).run(task, args.repo, client)
    if args.log:
        args.log.write_text(json.dumps({**asdict(result), "stats": result.stats()}, indent=1, default=str))
    print(result.diff or "(no changes)")
    print(f"stopped: {result.stop_reason}; {json.dumps(result.stats())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
