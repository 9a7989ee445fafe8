"""`git(...)`: run git without prompts or user config and raise with git's own error text.

One place for the git calls of the workspaces (`data.py`) and the toy suite (`toy_suite.py`). Not here: what they run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def git(
    *args: str, cwd: Path | None, timeout: float = 600, env: dict[str, str] | None = None, stdin: str | None = None
) -> str:
    """Run git (by default without prompts or user config); return its stdout; raise with its own error text."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout,
        env=env if env is not None else {**os.environ, **GIT_ENV},
    )  # fmt: skip
    if result.returncode != 0:
        shown = list(args)
        while shown[:1] == ["-c"]:  # leave out leading `-c name=value` settings
            shown = shown[2:]
        command = " ".join(shown)[:200]
        raise RuntimeError(f"git {command} failed in {cwd}: {result.stderr.strip()[-2000:]}")
    return result.stdout
