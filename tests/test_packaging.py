"""The overlay: `trl.agents` importable after `pip install -e .` and after `pip install .`, `trl` still upstream's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import trl
import trl.agents


ROOT = Path(__file__).resolve().parents[1]
PROBE = "import trl, trl.agents, trl.trainer; print(trl.__file__); print(trl.agents.__file__); print(trl.__version__)"
PLUGINS = (
    "import importlib.metadata as m; print(sorted(e.value for e in m.entry_points(group='vllm.endpoint_plugins')))"
)


def test_editable_install_resolves_agents_to_the_source_tree():
    assert Path(trl.agents.__file__).resolve() == ROOT / "trl" / "agents" / "__init__.py"
    assert Path(trl.__file__).resolve().parent.parent == Path(sysconfig.get_paths()["purelib"]).resolve()
    assert not (ROOT / "trl" / "__init__.py").exists(), "trl/__init__.py would shadow upstream TRL"


def test_editable_install_works_from_another_directory(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    trl_file, agents_file, version = out.stdout.split()
    assert version.startswith("1.16.")
    assert Path(agents_file).resolve().is_relative_to(ROOT)


def test_regular_install_into_a_fresh_venv(tmp_path):
    """`pip install .` copies trl/agents into upstream's installed `trl` package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    # Dependencies come from this environment (appended after the new venv's own site-packages) to save time;
    # upstream trl and this project are installed into the new venv for real.
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Upstream first, then this project, the order pip uses when it resolves trl as our dependency: the `trl`
    # console script is then ours (both distributions declare it; the last one installed wins).
    # From a copy: a build in the source tree leaves an egg-info there that Python finds first from that directory
    # (stale entry points, once setup.py changes)
    source = tmp_path / "source"
    skip = (".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip))
    for target in (f"trl=={trl.__version__}", str(source)):
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", target],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if install.returncode != 0:
            pytest.fail(f"pip install {target} failed:\n{install.stdout}\n{install.stderr}")
    out = subprocess.run([str(python), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    trl_file, agents_file, version = out.stdout.split()
    assert Path(trl_file).parent == Path(purelib) / "trl"
    assert Path(agents_file).parent == Path(purelib) / "trl" / "agents"
    assert (Path(purelib) / "trl" / "agents" / "templates" / "qwen3_like.jinja").is_file()
    plugins = subprocess.run([str(python), "-c", PLUGINS], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "trl.agents.server.stream_derender:Plugin" in plugins.stdout, plugins.stderr
    help_text = subprocess.run([str(venv / "bin" / "trl"), "--help"], capture_output=True, text=True, timeout=120)
    assert "vllm-serve-async" in help_text.stdout, help_text.stderr
