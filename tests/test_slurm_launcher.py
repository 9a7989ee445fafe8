"""The SLURM launcher splits a node's GPUs between `trl vllm-serve-async` and training, waits for the server's
health and stops it afterwards. Runs the real script with stand-ins for what a CPU machine lacks (`nvidia-smi`, the
server, `accelerate`, `curl`): each records how it was called."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "code_repair" / "slurm" / "train.sbatch"


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def run(tmp_path, gpus: int, server_gpus: int):
    bins, calls = tmp_path / "bin", tmp_path / "calls"
    bins.mkdir(parents=True)
    calls.mkdir()
    stand_in(bins, "nvidia-smi", f"seq 0 {gpus - 1}")
    stand_in(
        bins,
        "trl",
        f"echo \"CUDA=$CUDA_VISIBLE_DEVICES $*\" > {calls}/server; sleep 60 & trap 'echo stopped >> {calls}/server; kill $!; exit 0' TERM; wait",
    )
    stand_in(bins, "curl", "exit 0")
    stand_in(bins, "accelerate", f'echo "CUDA=$CUDA_VISIBLE_DEVICES TOKEN=$TRL_AGENTS_API_TOKEN $*" > {calls}/train')
    env = {**os.environ, "PATH": f"{bins}:{os.environ['PATH']}", "SERVER_GPUS": str(server_gpus), "SLURM_JOB_ID": "42"}
    result = subprocess.run(["bash", str(SCRIPT), "Qwen/Qwen3-8B", "--lora"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    return result, calls


def test_gpus_are_split_between_serving_and_training(tmp_path):
    result, calls = run(tmp_path, gpus=4, server_gpus=1)
    assert result.returncode == 0, result.stderr
    server = (calls / "server").read_text()
    train = (calls / "train").read_text()
    assert server.startswith("CUDA=0 vllm-serve-async --model Qwen/Qwen3-8B --data-parallel-size 1 --port 20042")
    assert server.rstrip().endswith("stopped")  # the server is stopped when training ends
    assert train.startswith("CUDA=1,2,3 TOKEN=") and "--num_processes 3" in train
    assert "grpo.py --model Qwen/Qwen3-8B --server-url http://127.0.0.1:20042" in train and train.rstrip().endswith(
        "--lora"
    )
    token = train.split("TOKEN=")[1].split()[0]
    assert f"--api-token {token}" in server and len(token) == 32


def test_two_serving_gpus_and_a_refused_split(tmp_path):
    result, calls = run(tmp_path, gpus=4, server_gpus=2)
    assert result.returncode == 0 and "CUDA=0,1 " in (calls / "server").read_text()
    assert "CUDA=2,3 " in (calls / "train").read_text()
    bad, _ = run(tmp_path / "x", gpus=1, server_gpus=1)
    assert bad.returncode == 2 and "need at least one GPU to serve and one to train" in bad.stderr
