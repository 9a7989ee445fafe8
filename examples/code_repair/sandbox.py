"""The coding agent's sandbox: run shell commands in one episode's workspace, and edit files only inside it.

Each command runs under `bash` with the workspace as its working directory, a wall-clock limit (the whole process
tree is killed when it runs out), a cap on the output it may produce (killed past it), a scrubbed environment (no
tokens or keys leak in), and limits on processes, file size and memory. Where the OS allows unprivileged user
namespaces (most Linux machines, this one included) each command also gets:

* its own **network namespace** with no interfaces up: no network at all, loopback included;
* its own **mount namespace** where every mount is read-only except the workspace and a per-episode scratch folder
  (`HOME` and `TMPDIR` point there): writing anywhere else fails with "Read-only file system";
* its own **PID namespace** with a fresh `/proc`: other processes are invisible and every process the command
  started, daemonised or not, dies with it.

Where user namespaces are not available (`Sandbox.isolation == "none"`, logged once as a warning) commands still get
the time, output, process-count and file-size limits and the scrubbed environment, but they can reach the network
and write wherever the user may: run such episodes inside a container. The process limit (what stops fork bombs)
is `ulimit -u` inside the user namespace for ordinary users; the kernel never applies it to root, so run as root the
sandbox puts each command in its own `pids` cgroup instead (where `/sys/fs/cgroup/pids` is writable; warned if not).

`Sandbox.resolve` is the only way the agent's file tools reach a file: absolute paths, `..` that leaves the
workspace and symlinks are refused. Not here: the tools themselves (see `agent.py`), workspace preparation
(`data.py`).
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


logger = logging.getLogger("code_repair.sandbox")

PIDS_CGROUP = Path("/sys/fs/cgroup/pids")  # cgroup v1 pids controller, used when running as root
# Runs inside the namespaces as their root: make every mount read-only, then the workspace and scratch writable again.
_ISOLATE = r"""
while read -r _ _ _ _ mount_point _; do mount -o remount,ro,bind "$mount_point" 2>/dev/null; done < /proc/self/mountinfo
for dir in "$1" "$2"; do
  mount --bind "$dir" "$dir" && mount -o remount,rw,bind "$dir" || { echo "sandbox: cannot mount $dir" >&2; exit 125; }
done
"""
# Runs in every mode, right before the command.
_LIMITS = r"""
ulimit {process_flag} -f {file_blocks} -v {memory_kb} || exit 125
cd "$1" || exit 125
exec /bin/bash -c "$3"
"""


class SandboxError(ValueError):
    """A request the sandbox refuses (a path outside the workspace, a symlink ...): the message is for the model."""


@dataclass(frozen=True)
class Limits:
    """Per-command limits."""

    seconds: float = 10.0  # wall clock; the whole process tree is killed past it
    output_bytes: int = 1_000_000  # stdout + stderr; killed past it
    processes: int = 64  # processes and threads at once (fork bombs stop here)
    file_mb: int = 256  # largest file a command may write
    memory_mb: int = 4096  # address space of each process


@dataclass
class CommandResult:
    """What a command did. `exit_code` is None when it was killed."""

    exit_code: int | None
    output: str
    seconds: float
    timed_out: bool = False
    output_capped: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@functools.cache
def namespaces_available() -> bool:
    """Whether this machine lets us create user, network, mount and PID namespaces (checked once)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*_unshare(), "/bin/true"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        logger.warning(
            "sandbox: user namespaces are not available here (%s): commands run without network or filesystem "
            "isolation, only with time, output, process and file-size limits. Run episodes in a container.",
            probe.stderr.decode(errors="replace").strip()[-200:],
        )
    return probe.returncode == 0


def _unshare() -> list[str]:
    return ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
            "--mount-proc", "--"]  # fmt: skip


@functools.cache
def _root_without_cgroup() -> bool:
    """Root, and no pids cgroup to limit processes with (warned once)."""
    missing = os.geteuid() == 0 and not os.access(PIDS_CGROUP, os.W_OK)
    if missing:
        logger.warning("sandbox: running as root without a writable %s: commands have no process limit", PIDS_CGROUP)
    return missing


class _ProcessLimit:
    """A pids cgroup for one command when running as root (where `ulimit -u` has no effect); nothing otherwise."""

    def __init__(self, processes: int):
        self.path = None
        if os.geteuid() == 0 and not _root_without_cgroup():
            self.path = Path(tempfile.mkdtemp(prefix="trl-sandbox-", dir=PIDS_CGROUP))
            (self.path / "pids.max").write_text(str(processes))

    def wrap(self, argv: list[str]) -> list[str]:
        if self.path is None:
            return argv
        return ["/bin/sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def remove(self) -> None:
        """Kill whatever is left in the cgroup (processes that left the process group) and remove it."""
        if self.path is None:
            return
        deadline = time.monotonic() + 10
        while True:
            for pid in (self.path / "cgroup.procs").read_text().split():
                _kill(int(pid))
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # killed processes leave the cgroup once reaped


class Sandbox:
    """Commands and file edits confined to `workspace` (see the module docstring for what that means here).

    Args:
        workspace: The episode's working copy.
        limits: Per-command limits.
        isolate: Use namespaces where available (True), or never (False; tests of the fallback).
        path: Extra directories put first on `PATH` (default: this Python's `bin`, so `python -m pytest` works).
        env: Extra environment variables of every command (over the defaults below).
    """

    def __init__(
        self,
        workspace: str | Path,
        *,
        limits: Limits | None = None,
        isolate: bool = True,
        path=None,
        env: Mapping[str, str] | None = None,
    ):
        self.workspace = Path(workspace).resolve(strict=True)
        self.limits = limits or Limits()
        self.isolation = "namespaces" if isolate and namespaces_available() else "none"
        self.scratch = Path(tempfile.mkdtemp(prefix="sandbox-scratch-"))
        bins = [str(Path(sys.executable).parent)] if path is None else [str(p) for p in path]
        self.env = {
            "PATH": os.pathsep.join([*bins, "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(self.scratch),
            "TMPDIR": str(self.scratch),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "PAGER": "cat",
            "GIT_PAGER": "cat",
            "GIT_CONFIG_NOSYSTEM": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }

    def run(self, command: str, *, seconds: float | None = None) -> CommandResult:
        """Run `command` with bash in the workspace; never raises for what the command does."""
        limits = self.limits
        # ulimit -u only where it counts this command's processes alone: inside a user namespace, not as root
        per_namespace = self.isolation == "namespaces" and os.geteuid() != 0
        process_flag = f"-u {limits.processes}" if per_namespace else ""
        script = _LIMITS.format(
            process_flag=process_flag, file_blocks=limits.file_mb * 2048, memory_kb=limits.memory_mb * 1024
        )
        if self.isolation == "namespaces":
            argv = [*_unshare(), "/bin/bash", "-c", _ISOLATE + script]
        else:
            argv = ["/bin/bash", "-c", script]
        argv += ["sandbox", str(self.workspace), str(self.scratch), command]
        return self._communicate(argv, seconds or limits.seconds)

    def _communicate(self, argv: list[str], seconds: float) -> CommandResult:
        start = time.monotonic()
        process_limit = _ProcessLimit(self.limits.processes)
        try:
            return self._supervise(process_limit.wrap(argv), seconds, start)
        finally:
            process_limit.remove()

    def _supervise(self, argv: list[str], seconds: float, start: float) -> CommandResult:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.scratch,
            start_new_session=True,
        )
        chunks, size, timed_out, capped = [], 0, False, False
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = seconds - (time.monotonic() - start)
                if left <= 0:
                    timed_out = True
                    break
                if not selector.select(timeout=min(left, 0.5)):
                    if proc.poll() is not None:
                        break  # exited, and its output pipe is held open by nobody that writes
                    continue
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > self.limits.output_bytes:
                    capped = True
                    break
        if timed_out or capped or proc.poll() is None:
            _kill(-proc.pid)  # the command's process group; with namespaces its PID namespace dies with it
        proc.stdout.close()
        code = proc.wait(timeout=30)
        output = b"".join(chunks)[: self.limits.output_bytes].decode(errors="replace")
        if code == 125 and output.startswith("sandbox:"):
            raise RuntimeError(f"the sandbox could not start a command: {output.strip()}")
        killed = timed_out or capped
        return CommandResult(None if killed else code, output, time.monotonic() - start, timed_out, capped)

    def resolve(self, path: str) -> Path:
        """The file `path` (relative to the workspace) names, refusing anything that could leave the workspace."""
        if not path or "\0" in path:
            raise SandboxError("empty or invalid path")
        relative = Path(path)
        if relative.is_absolute():
            raise SandboxError(f"{path}: use a path relative to the repository root")
        current = self.workspace
        for part in relative.parts:
            if part == "..":
                raise SandboxError(f"{path}: '..' is not allowed; paths stay inside the repository")
            current = current / part
            if current.is_symlink():
                raise SandboxError(f"{path}: {current.relative_to(self.workspace)} is a symlink; not followed")
        return current

    def write_text(self, path: Path, text: str) -> None:
        """Write a file `resolve` returned (not following a symlink swapped in meanwhile), owned as commands need."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    def close(self) -> None:
        """Remove the scratch folder (the workspace belongs to whoever made it)."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill(pid: int) -> None:
    """SIGKILL a process (or a process group, for a negative pid) that may already be gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
