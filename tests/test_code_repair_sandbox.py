"""The coding agent's sandbox holds: path traversal, symlinks, writing outside, network, runaway output, commands
that never end, fork bombs and /proc snooping are all stopped, and the workspace itself stays usable."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from code_repair.agent import apply_patch
from code_repair.sandbox import Limits, Sandbox, namespaces_available


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "app.py").write_text("x = 1\n")
    return ws


@pytest.fixture
def sandbox(workspace):
    with Sandbox(workspace, limits=Limits(seconds=5, output_bytes=100_000, processes=32)) as box:
        yield box


def test_this_machine_isolates_with_namespaces(sandbox):
    """The escape tests below are meaningful only with isolation on; on this machine it must be."""
    assert namespaces_available() and sandbox.isolation == "namespaces"


def test_commands_work_inside_the_workspace(sandbox, workspace):
    result = sandbox.run("cat app.py && echo 'y = 2' >> app.py && python -c 'print(6 * 7)'")
    assert result.ok and result.output == "x = 1\n42\n"
    assert (workspace / "app.py").read_text() == "x = 1\ny = 2\n"
    assert sandbox.run("exit 3").exit_code == 3


@pytest.mark.parametrize(
    "path",
    ["../outside.py", "sub/../../outside.py", "/etc/passwd", "link/escape.py", "link_file", ""],
)
def test_apply_patch_cannot_leave_the_workspace(sandbox, workspace, tmp_path, path):
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 1\n")
    (workspace / "link").symlink_to(tmp_path)  # a directory symlink pointing out of the workspace
    (workspace / "link_file").symlink_to(outside)
    ok, message = apply_patch(sandbox, {"file": path, "search": "secret = 1", "replace": "secret = 2"})
    assert not ok and message.startswith("error")
    assert outside.read_text() == "secret = 1\n"


def test_apply_patch_edits_exactly_one_match(sandbox, workspace):
    (workspace / "m.py").write_text("a = 1\na = 1\nb = 2\n")
    assert apply_patch(sandbox, {"file": "m.py", "search": "a = 1", "replace": "a = 3"})[1].startswith("error")
    assert apply_patch(sandbox, {"file": "m.py", "search": "zzz", "replace": "a = 3"})[1].startswith("error")
    assert apply_patch(sandbox, {"file": "m.py", "search": "b = 2", "replace": "b = 5"}) == (True, "patched m.py")
    assert apply_patch(sandbox, {"file": "pkg/new.py", "search": "", "replace": "n = 0\n"})[0]
    assert (workspace / "m.py").read_text() == "a = 1\na = 1\nb = 5\n"
    assert (workspace / "pkg" / "new.py").read_text() == "n = 0\n"


def test_apply_patch_fuzzy_match_edits_only_a_clear_closest_line(sandbox, workspace):
    source = "def f(x):\n    if not 0 < percent < 50:\n        return x\n    y = 1\n    y = 2\n"
    (workspace / "m.py").write_text(source)
    near = {"file": "m.py", "search": "if not 0 < percent <= 50:", "replace": "if not 0 < percent <= 60:"}
    assert apply_patch(sandbox, near)[1].startswith("error")  # exact matching is the default
    ok, message = apply_patch(sandbox, near, fuzzy_match=0.85)
    assert ok and "closest line 2" in message
    assert (workspace / "m.py").read_text() == source.replace("< percent < 50:", "< percent <= 60:")
    ambiguous = {"file": "m.py", "search": "y = 3", "replace": "y = 4"}  # as close to `y = 1` as to `y = 2`
    assert apply_patch(sandbox, ambiguous, fuzzy_match=0.5)[1].startswith("error")
    far = {"file": "m.py", "search": "completely different text", "replace": "z"}
    assert apply_patch(sandbox, far, fuzzy_match=0.85)[1].startswith("error")


def test_shell_cannot_write_outside_the_workspace(sandbox, tmp_path):
    targets = [tmp_path / "escape.txt", "/tmp/sandbox-escape.txt", "/dev/shm/sandbox-escape.txt"]
    result = sandbox.run("; ".join(f"echo owned > {t}" for t in targets) + "; ln -s /etc/hostname h && echo x > h")
    assert result.output.count("Read-only file system") == len(targets) + 1
    assert not any(os.path.exists(t) for t in targets)
    scratch = sandbox.run('echo ok > "$TMPDIR/f" && cat "$HOME/f"')  # scratch space works
    assert scratch.output == "ok\n"


def test_no_network_not_even_loopback(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')"
        result = sandbox.run(f'python -c "{code}"')
        assert "CONNECTED" not in result.output and not result.ok
        assert "unreachable" in result.output or "refused" in result.output
    finally:
        server.close()


def test_runaway_output_is_capped_and_killed(sandbox):
    start = time.monotonic()
    result = sandbox.run("yes 'flood'")
    assert result.output_capped and result.exit_code is None
    assert len(result.output) <= 100_000 and time.monotonic() - start < 5


def test_a_command_that_never_ends_is_killed_with_its_children(sandbox):
    result = sandbox.run("(sleep 1000 &) ; setsid sleep 1001 & sleep 1002", seconds=1.5)
    assert result.timed_out and result.exit_code is None and 1.4 < result.seconds < 5
    time.sleep(0.5)
    survivors = subprocess.run(["pgrep", "-f", "sleep 100[012]"], capture_output=True, text=True).stdout.split()
    assert survivors == []


def test_a_fork_bomb_hits_the_process_limit_and_the_machine_is_fine(sandbox):
    result = sandbox.run(":(){ :|:& };:; sleep 1; echo alive", seconds=4)
    assert "Resource temporarily unavailable" in result.output
    assert sandbox.run("echo next").output == "next\n"  # the sandbox still serves


def test_proc_shows_only_the_commands_own_processes(sandbox):
    result = sandbox.run("ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline | tr '\\0' ' '")
    count, init = result.output.splitlines()
    assert int(count) <= 5  # bash, ls, grep, wc ... not the host's processes
    assert "sandbox" in init or "bash" in init
    assert str(os.getpid()) not in sandbox.run("ls /proc").output.split()


def test_environment_is_scrubbed(sandbox, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    output = sandbox.run("env").output
    assert "sk-secret" not in output and "API_KEY" not in output


def test_extra_environment_reaches_commands(workspace):
    """`env` (the toy suite's `PYTEST_DISABLE_PLUGIN_AUTOLOAD`, via `data.command_env`) is set for every command."""
    from code_repair.data import command_env

    with Sandbox(workspace, env=command_env("toy")) as box:
        assert box.run("echo $PYTEST_DISABLE_PLUGIN_AUTOLOAD").output.strip() == "1"
    with Sandbox(workspace) as box:
        assert box.run("echo ${PYTEST_DISABLE_PLUGIN_AUTOLOAD:-unset}").output.strip() == "unset"


def test_without_namespaces_the_limits_still_hold(workspace):
    with Sandbox(workspace, limits=Limits(seconds=1, output_bytes=10_000), isolate=False) as box:
        assert box.isolation == "none"
        assert box.run("sleep 30").timed_out
        assert box.run("yes").output_capped
        assert box.run("pwd").output.strip() == str(workspace.resolve())


def test_concurrent_sandboxes_do_not_interfere(tmp_path):
    """Episodes run in threads: each command sees only its own workspace."""
    outputs = {}

    def work(i):
        ws = tmp_path / f"ws{i}"
        ws.mkdir()
        with Sandbox(ws) as box:
            outputs[i] = box.run(f"echo {i} > mine && cat mine && ls").output

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outputs == {i: f"{i}\nmine\n" for i in range(6)}
