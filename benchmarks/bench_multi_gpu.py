"""`examples/code_repair/grpo.py` on recorded episodes across 2 GPUs: DDP, ZeRO-2, ZeRO-3, then ZeRO-3 weight export.

Setup:  a 2-GPU machine with torch, transformers, peft, accelerate, trl 1.16, datasets, deepspeed
Usage:  python benchmarks/bench_multi_gpu.py [--model 0.6b] [--steps 4] [--out multi.json]
        python benchmarks/bench_multi_gpu.py --tiny     # CPU smoke run: DDP over 2 CPU processes only

For each accelerate config in `examples/code_repair/configs/` (ddp, zero2, zero3) it runs the real training script
under `accelerate launch` with `--replay` (no server: the GPUs only train), on a randomly initialised Qwen3-shaped
model saved once with the tiny model's tokenizer and synthetic 8-16k-token episodes (`bench_trainer.episodes`,
with recorded diffs so the diff-similarity reward varies). Reported per config: optimizer steps run, whether the
saved weights differ from the initial ones, tokens/s (TRL's `num_tokens` over the logged steps after the first)
and the peak GPU memory of each rank. Then `bench_weight_export.py --zero3` under `torchrun` (2 processes):
gathering the ZeRO-3 shards layer by layer and packing them, against a NCCL broadcast of the same bytes.
NCCL's NVLink multicast stays off (`NCCL_NVLS_ENABLE=0`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "code_repair"
from bench_trainer import SHAPES, build_model, episodes  # noqa: E402


def save_model(name: str, out: Path, tokenizer: str) -> Path:
    import torch
    from transformers import AutoTokenizer

    model = build_model(name, "cpu", torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    return out


def add_diffs(path: Path, patches: list[str], seed: int = 0) -> None:
    """Give each recorded episode a diff: a task's gold patch, half of one, or nothing, so rewards vary."""
    rng = random.Random(seed)
    lines = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        patch = rng.choice(patches)
        record["result"] = {"generated_diff": rng.choice([patch, patch[: len(patch) // 2], ""])}
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def weights_changed(before: Path, after: Path) -> float:
    """The share of saved tensors that differ from the initial ones (compared in float32)."""
    from safetensors.torch import load_file

    def load(folder: Path) -> dict:
        tensors = {}
        for f in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(f))
        return tensors

    a, b = load(before), load(after)
    if not b:
        raise RuntimeError(f"no saved weights in {after}")
    common = a.keys() & b.keys()
    return sum(not a[k].float().equal(b[k].float()) for k in common) / len(common)


def run_config(config: str, args, model_dir: Path, episodes_path: Path, cache: Path, work: Path) -> dict:
    out = work / config
    metrics = out / "metrics.jsonl"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    if args.tiny:
        launch += ["--multi_gpu"]  # two CPU processes (see tests/test_rollout.py); --use-cpu below
    else:
        launch += ["--config_file", str(EXAMPLE / "configs" / f"{config}.yaml")]
    command = launch + [
        str(EXAMPLE / "grpo.py"), "--model_name_or_path", str(model_dir), "--dataset", "toy", "--cache_dir", str(cache),
        "--output_dir", str(out), "--replay", str(episodes_path), "--replay_match", "order",
        "--rewards", "similarity", "nonempty", "--num_generations", "4", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "4", "--max_steps", str(args.steps), "--learning_rate", "1e-4",
        "--max_completion_length", str(args.max_tokens), "--metrics_file", str(metrics), "--logging_steps", "1",
    ] + (["--use_cpu"] if args.tiny else ["--bf16", "--gradient_checkpointing"])  # fmt: skip
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.config_timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        return {"config": config, "status": "timeout", "error": str(exc)[-300:]}
    (work / f"{config}.log").write_text(proc.stdout + proc.stderr)
    if args.out:  # one file of logs next to the results (the device machine returns few files)
        with (args.out.parent / "multi-logs.txt").open("a") as f:
            f.write(f"===== {config} (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-20000:]}\n")
    result = {"config": config, "wall_seconds": time.perf_counter() - started}
    if proc.returncode != 0:
        return {**result, "status": "error", "error": (proc.stdout + proc.stderr)[-1500:]}
    lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    peaks = {int(r): float(g) for r, g in re.findall(r"rank (\d+): peak GPU memory ([\d.]+) GiB", proc.stdout)}
    timed = lines[1:]  # the first step pays for compilation and allocator warm-up
    tokens_per_second = None
    if len(timed) >= 2:
        tokens_per_second = (timed[-1]["num_tokens"] - lines[0]["num_tokens"]) / (timed[-1]["time"] - lines[0]["time"])
    return {**result, "status": "ok", "steps": len(lines), "params_changed": weights_changed(model_dir, out),
            "tokens_per_second": tokens_per_second, "peak_gib_per_rank": peaks,
            "rewards": [line.get("reward") for line in lines]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="0.6b", choices=sorted(SHAPES))
    parser.add_argument("--configs", default="ddp,zero2,zero3")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--config-timeout", type=float, default=240)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    min_tokens = 8192
    if args.tiny:
        args.model, args.configs, args.steps, args.max_tokens, min_tokens = "tiny", "ddp", 3, 512, 256
        args.skip_export = True
    work = Path(tempfile.mkdtemp(prefix="bench-multi-gpu-"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        (args.out.parent / "multi-logs.txt").write_text("")
    from code_repair import toy_suite
    from trl.agents.tiny_model import build

    cache = work / "cache"
    toy_suite.build(cache / "toy-suite")
    patches = [json.loads(line)["patch"] for line in (cache / "toy-suite" / "tasks.jsonl").read_text().splitlines()]
    tokenizer = build(work / "tiny")
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer))
    model_dir = save_model(args.model, work / "model", str(tokenizer))
    episodes_path = work / "episodes.jsonl"
    stats = episodes(episodes_path, tasks=2 * args.steps, vocab=vocab, lengths=(min_tokens, args.max_tokens))
    add_diffs(episodes_path, patches)
    print(f"model {args.model} in {model_dir}; episodes {stats}", flush=True)
    results = []
    for config in args.configs.split(","):
        results.append(run_config(config, args, model_dir, episodes_path, cache, work))
        print(json.dumps(results[-1])[:2000], flush=True)
    export = None
    if not args.skip_export:
        command = ["torchrun", "--nproc_per_node", "2", str(HERE / "bench_weight_export.py"), "--zero3",
                   "--models", "0.6b,1.7b", "--out", str(work / "export.json")]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "NCCL_NVLS_ENABLE": "0"})  # fmt: skip
        (work / "export.log").write_text(proc.stdout + proc.stderr)
        export = json.loads((work / "export.json").read_text()) if proc.returncode == 0 else {
            "status": "error", "error": (proc.stdout + proc.stderr)[-1500:]}  # fmt: skip
        print(proc.stdout[-3000:], flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "episodes": stats, "results": results,
                                        "export": export, "logs": str(work)}, indent=1))  # fmt: skip
    print(f"\n{'config':7} {'status':7} {'steps':>5} {'changed':>7} {'tokens/s':>9}  peak GiB per rank")
    for r in results:
        peaks = " ".join(f"r{k}={v:.1f}" for k, v in sorted(r.get("peak_gib_per_rank", {}).items()))
        print(f"{r['config']:7} {r['status']:7} {r.get('steps', 0):5} {r.get('params_changed', 0):7.0%} "
              f"{r.get('tokens_per_second') or 0:9.0f}  {peaks}")  # fmt: skip
    if any(r["status"] != "ok" for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
