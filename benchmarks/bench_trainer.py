"""GRPO optimizer steps on recorded multi-turn trajectories: tokens/s and peak GPU memory, ours vs upstream's path.

Setup:  make install (CPU smoke run) or, on a GPU machine: torch, transformers, peft, accelerate, trl 1.16, datasets
        (+ liger-kernel for the Liger rows)
Usage:  python benchmarks/bench_trainer.py [--models 0.6b,1.7b] [--steps 3] [--out results.json]
        python benchmarks/bench_trainer.py --tiny          # CPU smoke run of the same code, tiny model

What runs: randomly initialised Qwen3-0.6B- and Qwen3-1.7B-shaped models (the published shapes, built offline) in
bf16, trained by upstream `GRPOTrainer` (beta 0, one generation batch per optimizer step: 1 task x 4 episodes,
one episode per micro-batch, so no padding) on synthetic agent episodes written as `AgentRollout(record_to=...)`
records: a 1-2k-token prompt, then sampled turns and environment outputs until 8-16k tokens, 30-60% of the
completion environment tokens (`env_mask` 0). Token ids are random (the cost does not depend on their values).

Each variant runs in its own process (an out-of-memory variant cannot disturb the next) and is reported as
tokens/s (the median over the timed steps of each step's prompt + completion tokens, environment tokens included,
over its time; warm-up steps excluded) and peak GPU memory
(`torch.cuda.max_memory_allocated`). Variants: full fine-tuning vs LoRA r=32 (all linear layers), Liger kernels on
or off (`use_liger_kernel`: TRL 1.16 already computes the GRPO loss through its own chunked fused LM head, so Liger
only swaps the layer kernels), gradient checkpointing on or off.

`ours` feeds the trainer through `trl.agents.ReplayRollout`; `upstream` through a plain `rollout_func` written
against upstream's documented contract (the same prompt_ids / completion_ids / logprobs / env_mask, no trl.agents
code), i.e. the nearest thing upstream's built-in path can express: upstream's own multi-turn path (`tools=`)
generates its own tokens and cannot replay recorded ones. Both go through the same upstream loss; the ratio
shows what the rollout hook costs the trainer. The table prints last; `--out` gets every number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


SHAPES = {  # the published Qwen3 configurations (hidden, intermediate, layers, heads, kv heads)
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=64, vocab_size=4096),
}  # fmt: skip
COMMON = dict(head_dim=128, vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
              max_position_embeddings=40960, rms_norm_eps=1e-6)  # fmt: skip
GENERATIONS = 4


def build_model(name: str, device, dtype):
    """A randomly initialised (seed 0) Qwen3 of the shape `SHAPES[name]`, on `device` in `dtype`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return Qwen3ForCausalLM(Qwen3Config(**{**COMMON, **SHAPES[name]})).to(dtype)


FILTERS = {  # --variants filter -> which variants it drops
    "noliger": lambda v: v["liger"],
    "gconly": lambda v: not v["grad_ckpt"],
    "fullonly": lambda v: v["finetune"] != "full",
    "loraonly": lambda v: v["finetune"] != "lora",
    "nogconly": lambda v: v["grad_ckpt"],
    "noupstream": lambda v: v["path"] == "upstream",
    "pairs": lambda v: v["liger"] or not v["grad_ckpt"] or v.get("trim", False),  # measured on both paths
    "trimpairs": lambda v: v["liger"] or not v["grad_ckpt"],  # the pairs and ours trimmed (trl.agents.padding)
}


def episodes(path: Path, *, tasks: int, vocab: int, lengths: tuple[int, int], seed: int = 0) -> dict:
    """Write `tasks` x GENERATIONS synthetic episode records; return their statistics."""
    rng = random.Random(seed)
    total, env = 0, 0
    with path.open("w") as f:
        for task in range(tasks):
            prompt = [rng.randrange(vocab) for _ in range(rng.randint(lengths[0] // 8, lengths[0] // 4))]
            for g in range(GENERATIONS):
                target = rng.randint(*lengths)
                env_share = rng.uniform(0.3, 0.6)
                ids, mask = list(prompt), [0] * len(prompt)
                while len(ids) < target:
                    sampled = rng.randint(max(1, lengths[0] // 160), lengths[0] // 14)  # 50-600 at 8k
                    inserted = int(sampled * env_share / (1 - env_share) * rng.uniform(0.5, 1.5))
                    ids += [rng.randrange(vocab) for _ in range(sampled + inserted)]
                    mask += [1] * sampled + [0] * inserted
                ids, mask = ids[:target], mask[:target]
                mask[-1] = 1  # the episode ends on a sampled token
                total += len(ids) - len(prompt)
                env += mask[len(prompt) :].count(0)
                segment = {"token_ids": ids, "mask": mask, "logprobs": [-1.0 if m else None for m in mask],
                           "prompt_length": len(prompt), "turns": []}  # fmt: skip
                record = {"prompt": f"task {task}", "session_id": f"t{task}-e{g}", "result": {"score": g},
                          "failure": None, "trajectory": {"segments": [segment]}}  # fmt: skip
                f.write(json.dumps(record) + "\n")
    return {"episodes": tasks * GENERATIONS, "completion_tokens": total, "env_share": env / total}


def upstream_rollout(path: Path):
    """A rollout_func written against upstream's contract alone: the recorded tokens, cycled per prompt."""
    by_prompt: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_prompt.setdefault(record["prompt"], []).append(record)
    used: dict[str, int] = {}

    def rollout_func(prompts, trainer):
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "score": []}
        for prompt in prompts:
            record = by_prompt[prompt][used.get(prompt, 0) % len(by_prompt[prompt])]
            used[prompt] = used.get(prompt, 0) + 1
            segment = record["trajectory"]["segments"][-1]
            start = segment["mask"].index(1)
            out["prompt_ids"].append(segment["token_ids"][:start])
            out["completion_ids"].append(segment["token_ids"][start:])
            out["env_mask"].append(segment["mask"][start:])
            out["logprobs"].append([lp or 0.0 for lp in segment["logprobs"][start:]])
            out["score"].append(record["result"]["score"])
        return out

    return rollout_func


def run_variant(spec: dict) -> dict:
    """One variant, in this process: build, train warm-up + timed steps, measure."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available()
    model = build_model(spec["model"], "cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32)
    peft_config = None
    if spec["finetune"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=32, lora_alpha=64, target_modules="all-linear")

    steps: list[tuple[float, int]] = []  # (seconds, tokens) per optimizer step
    batches: list[int] = []  # prompt + completion tokens (environment tokens included) of each generation batch

    class Clock(TrainerCallback):
        """Times each optimizer step (rollout, scoring, forward, backward, optimizer) and counts its tokens."""

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start, self.batches = time.perf_counter(), len(batches)

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            steps.append((time.perf_counter() - self.start, sum(batches[self.batches :])))

    path = Path(spec["episodes"])
    if spec["path"] == "ours":
        from trl.agents import ReplayRollout

        inner = ReplayRollout(path)
    else:
        inner = upstream_rollout(path)

    def rollout(prompts, trainer):
        output = inner(prompts, trainer)
        batches.append(
            sum(len(p) + len(c) for p, c in zip(output["prompt_ids"], output["completion_ids"], strict=True))
        )
        return output

    prompts = list(dict.fromkeys(json.loads(line)["prompt"] for line in path.read_text().splitlines()))
    total_steps = spec["warmup"] + spec["steps"]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, gradient_accumulation_steps=GENERATIONS,
        num_generations=GENERATIONS, max_completion_length=spec["max_completion_length"], max_steps=total_steps,
        learning_rate=1e-6, beta=0.0, shuffle_dataset=False, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=spec["grad_ckpt"],
        use_liger_kernel=spec["liger"], logging_steps=1, report_to=[], save_strategy="no", seed=0,
        dataloader_num_workers=0,
    )  # fmt: skip

    def reward(completions, score, **kwargs):
        return [float(s) for s in score]

    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, processing_class=AutoTokenizer.from_pretrained(spec["tokenizer"]),
        train_dataset=Dataset.from_dict({"prompt": prompts}), rollout_func=rollout, peft_config=peft_config,
        callbacks=[Clock()],
    )  # fmt: skip
    if spec.get("trim"):  # each micro-batch cut to its own longest row (trl.agents.padding)
        from trl.agents.padding import trim_padding

        trim_padding(trainer)
    before = next(p for p in trainer.model.parameters() if p.requires_grad).detach().float().clone()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    after = next(p for p in trainer.model.parameters() if p.requires_grad).detach().float()
    timed = steps[spec["warmup"] :]
    seconds = [t for t, _ in timed]
    rates = [n / t for t, n in timed]
    return {
        "status": "ok",
        "step_seconds": seconds,
        "step_tokens": [n for _, n in timed],
        "step_tokens_per_second": rates,
        "median_step_seconds": statistics.median(seconds),
        "tokens_per_second": statistics.median(rates),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "params_changed": bool((after - before.to(after.device)).abs().max() > 0),
        "loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }


def child(spec: dict) -> None:
    try:
        result = run_variant(spec)
    except Exception as exc:  # reported as the variant's result (e.g. out of memory), never hidden
        import torch

        oom = isinstance(exc, torch.OutOfMemoryError)
        result = {"status": "OOM" if oom else "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print("RESULT " + json.dumps(result), flush=True)


def variants(models: list[str], which: str) -> list[dict]:
    out = []
    for model in models:
        for finetune in ("full", "lora"):
            for grad_ckpt in (True, False):
                for liger in (False, True):
                    out.append(dict(model=model, finetune=finetune, grad_ckpt=grad_ckpt, liger=liger, path="ours"))
            out.append(dict(model=model, finetune=finetune, grad_ckpt=True, liger=False, path="upstream"))
            out.append(dict(model=model, finetune=finetune, grad_ckpt=True, liger=False, path="ours", trim=True))
    filters = set(which.split(",")) - {"all"}
    unknown = filters - set(FILTERS)
    if unknown:
        raise SystemExit(f"unknown --variants filters {sorted(unknown)}; choose from {sorted(FILTERS)}")
    return [v for v in out if not any(FILTERS[f](v) for f in filters)]


def label(v: dict) -> str:
    trim = " trim" if v.get("trim") else ""
    return f"{v['model']} {v['finetune']:4} gc={'on ' if v['grad_ckpt'] else 'off'} liger={'on ' if v['liger'] else 'off'}{trim}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="0.6b,1.7b")
    parser.add_argument("--variants", default="all", help=f"all, or comma-separated filters from {sorted(FILTERS)}")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant")
    parser.add_argument("--rounds", type=int, default=1, help="run the variant list this many times, in turn")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-tokens", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the tiny model's, built here)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, short episodes, 1 step")
    parser.add_argument("--variant-timeout", type=float, default=300)
    parser.add_argument("--deadline", type=float, default=None, help="seconds; variants not started by then: skipped")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.tiny:
        args.models, args.min_tokens, args.max_tokens, args.steps = "tiny", 256, 512, 1
        args.variants = args.variants if args.variants != "all" else "noliger,gconly"
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    tokenizer = args.tokenizer
    if tokenizer is None:
        from trl.agents.tiny_model import build

        tokenizer = str(build(work / "tiny"))
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer))
    path = work / "episodes.jsonl"
    tasks = args.warmup + args.steps
    stats = episodes(path, tasks=tasks, vocab=vocab, lengths=(args.min_tokens, args.max_tokens))
    print(f"episodes: {stats}", flush=True)
    results = []
    begun = time.monotonic()
    for v in [dict(v, round=r) for r in range(args.rounds) for v in variants(args.models.split(","), args.variants)]:
        if args.deadline is not None and time.monotonic() - begun > args.deadline:
            results.append({**v, "status": "skipped", "error": f"not started within --deadline {args.deadline:.0f} s"})
            continue
        spec = {**v, "episodes": str(path), "tokenizer": tokenizer, "steps": args.steps, "warmup": args.warmup,
                "max_completion_length": args.max_tokens}  # fmt: skip
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, timeout=args.variant_timeout, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})  # fmt: skip
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = json.loads(found[-1][7:]) if found else {"status": "crashed", "error": proc.stderr[-800:]}
        except subprocess.TimeoutExpired:
            result = {"status": "timeout", "error": f"over {args.variant_timeout:.0f} s"}
        result["wall_seconds"] = time.perf_counter() - started
        results.append({**v, **result})
        r = results[-1]
        extra = r.get("error", "")[:200] if r["status"] != "ok" else ""
        print(f"{label(v)} {v['path']:8} {r['status']:7} {r.get('tokens_per_second', 0):9.0f} tok/s "
              f"peak {r.get('peak_gib') or 0:5.1f} GiB  ({r['wall_seconds']:.0f} s) {extra}", flush=True)  # fmt: skip
    ratios = {}
    for name in dict.fromkeys(label(r) for r in results):
        base = name.removesuffix(" trim")  # ours trimmed against the same upstream rows
        rates = {path: [x for r in results if label(r) == (name if path == "ours" else base) and r["path"] == path
                        and r["status"] == "ok" for x in r["step_tokens_per_second"]] for path in ("ours", "upstream")}  # fmt: skip
        if rates["ours"] and rates["upstream"]:
            ratios[name] = statistics.median(rates["ours"]) / statistics.median(rates["upstream"])
    environment = _environment()
    if args.out:
        args.out.write_text(json.dumps({"environment": environment, "episodes": stats, "results": results,
                                        "ours_over_upstream": ratios}, indent=1))  # fmt: skip
    print(f"\n{environment}")
    print(
        f"{'variant':38} {'path':8} {'round':>5} {'status':7} {'tokens/s':>9} {'peak GiB':>8} {'step s':>7} {'trained':>7}"
    )
    for r in results:
        print(f"{label(r):38} {r['path']:8} {r['round']:5} {r['status']:7} {r.get('tokens_per_second', 0):9.0f} "
              f"{r.get('peak_gib') or 0:8.1f} {r.get('median_step_seconds', 0):7.2f} {str(r.get('params_changed', '-')):>7}")  # fmt: skip
    for name, ratio in ratios.items():
        print(f"ours/upstream tokens/s (medians of per-step rates over all rounds), {name}: {ratio:.3f}")


def _environment() -> str:
    import torch
    import transformers

    import trl

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {device}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, trl {trl.__version__}")  # fmt: skip


if __name__ == "__main__":
    main()
