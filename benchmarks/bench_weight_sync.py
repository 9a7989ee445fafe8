"""Weight-sync time against a floor for the same bytes, for the tiny model and a Qwen3-0.6B-shaped model.

Setup:  make install
Usage:  python benchmarks/bench_weight_sync.py [--models tiny,0.6b] [--syncs 3] [--out results.json]

For each model: starts `trl vllm-serve-async` with 2 CPU replicas (float32), loads the same weights in the trainer,
perturbs them and times `ServerClient.update_weights` (trainer call to new version, every replica updated), `--syncs`
times. The floor is one memcpy of the same number of bytes on this machine (best of 5 `torch.Tensor.copy_`). A sync
needs at least two copies per byte (trainer → shared memory, shared memory → each replica's parameters, the
replicas in parallel), so a ratio of about 2-3 is the best this transport can do; the rest is control plane
(HTTP phases, pausing, layerwise reload bookkeeping).

The 0.6B model has Qwen3-0.6B's shapes (hidden 1024, 28 layers, MLP 3072, vocab 151936, tied embeddings, the same
q/k/v/o projection sizes) with head_dim 64 x 32 heads instead of 128 x 16, because the CPU build of vLLM serves only
head_dim 64; the byte count is within 0.01% of the real model's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trl.agents import ServerClient
from trl.agents.server.process import ServeAsyncProcess
from trl.agents.tiny_model import build


TOKEN = "bench"


def build_qwen3_06b_shaped(out: Path, tokenizer_dir: Path) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():  # the tiny tokenizer: ids fit in the larger vocabulary
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def memcpy_seconds(nbytes: int, repeats: int = 5) -> float:
    source = torch.ones(nbytes, dtype=torch.uint8)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return best


def bench_model(name: str, model_dir: Path, workdir: Path, syncs: int) -> dict:
    from transformers import AutoModelForCausalLM

    logs = workdir / f"logs-{name}"
    args = ["--data-parallel-size", "2", "--api-token", TOKEN, "--log-dir", str(logs), "--dtype", "float32",
            "--max-model-len", "1024", "--render-servers", "0",
            "--kv-cache-memory-bytes", str(256 << 20)]  # explicit KV size: weights then fit next to it  # fmt: skip
    print(f"[{name}] starting 2 replicas (logs in {logs}) ...", file=sys.stderr, flush=True)
    with ServeAsyncProcess(str(model_dir), args=args, startup_timeout=900, log_path=workdir / f"{name}.log") as server:
        client = ServerClient(server.url, api_token=TOKEN, timeout=600)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        times, gateway_times, phases = [], [], []
        for i in range(syncs):
            with torch.no_grad():
                for param in model.parameters():
                    param.mul_(1.0 + 1e-3 * (i + 1))
            version = client.update_weights(model)
            times.append(client.last_sync["seconds"])
            phases.append({k: round(v, 3) for k, v in client.last_sync.items() if k.endswith("_seconds")})
            gateway_times.append(client.weight_status()["last_sync_seconds"])
            print(
                f"[{name}] sync {i + 1}: version {version}, {times[-1]:.3f} s {phases[-1]}",
                file=sys.stderr,
                flush=True,
            )
        nbytes = int(client.last_sync["bytes"])
        client.close()
    floor = memcpy_seconds(nbytes)
    sync = statistics.median(times)
    return {
        "model": name,
        "bytes": nbytes,
        "sync_seconds": sync,
        "gateway_seconds": statistics.median(gateway_times),
        "memcpy_seconds": floor,
        "ratio": sync / floor,
        "all_sync_seconds": times,
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,0.6b", help="comma-separated: tiny, 0.6b")
    parser.add_argument("--syncs", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = set(names) - {"tiny", "0.6b"}
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}: choose from tiny, 0.6b")
    workdir = Path(tempfile.mkdtemp(prefix="bench-weight-sync-"))
    tiny = build(workdir / "tiny")
    results = []
    for name in names:
        model_dir = tiny
        if name == "0.6b":
            print("[0.6b] building the random Qwen3-0.6B-shaped model ...", file=sys.stderr, flush=True)
            model_dir = build_qwen3_06b_shaped(workdir / "qwen3-0.6b-shaped", tiny)
        results.append(bench_model(name, model_dir, workdir, args.syncs))  # on failure the logs stay in workdir
    shutil.rmtree(workdir, ignore_errors=True)
    print("\n| model | bytes | sync (trainer call) | of which gateway | memcpy floor | sync / floor |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['bytes'] / 1e6:.1f} MB | {r['sync_seconds']:.3f} s | {r['gateway_seconds']:.3f} s "
            f"| {r['memcpy_seconds'] * 1e3:.2f} ms | {r['ratio']:.1f}x |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
