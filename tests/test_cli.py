"""The `trl` console script: upstream's commands unchanged, plus ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


TRL = Path(sys.executable).parent / "trl"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRL), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def trl_script():
    if not TRL.exists():
        pytest.fail(f"{TRL} is missing: install the project (`make install`) so the `trl` script is ours")
    return TRL


def test_help_lists_upstream_and_our_commands():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for name in ["sft", "grpo", "dpo", "vllm-serve", "vllm-serve-async"]:
        assert name in result.stdout


def test_upstream_sft_help_still_works():
    result = run("sft", "--help")
    assert result.returncode == 0, result.stderr
    assert "--model_name_or_path" in result.stdout


def test_vllm_serve_async_help():
    result = run("vllm-serve-async", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ["--model", "--data-parallel-size", "--host", "--port", "--api-token"]:
        assert flag in result.stdout


def test_script_is_ours():
    assert "trl.agents.cli" in TRL.read_text()
