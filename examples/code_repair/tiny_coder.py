"""The tiny coder: the tiny model pre-trained to copy a hint into tool calls, the base `make demo` starts from.

Why it exists: a randomly initialised tiny model fine-tuned on the 30 toy expert trajectories memorises them and
copies nothing on held-out tasks (measured: 0.0 solved, with 1,500 or 8,000 steps), so GRPO has nothing to improve
there. Copying a file name and a line from the task text into `grep` and `apply_patch` calls is a skill the model
has to learn from many varied examples; a 4-layer, 256-wide model learns it in about 4,000 steps of batch 16.

Data (`data`, CPU, about a minute): 95% synthetic episodes, each made from one line of the CPython standard library
(the running interpreter's) with one small mutation (an operator, a number or a name), a problem statement of
stdlib docstring sentences and backticked code, the toy suite's hint line, and the turns the scripted expert would
take (`grep` -> `apply_patch` -> tests -> submit, tool results as the agent prints them); 5% real expert
trajectories of 10 of the 30 toy training tasks (tasks 1 and 2 of each repository, `SEEN_TASKS`), which teach the
toy repositories' paths and test output. The other 20 training tasks reach GRPO unseen; the 10 held-out tasks are
used only to measure the result.
Training (`train`): plain PyTorch on the token ids, loss on the assistant's tokens only (the masking collator's
labels), AdamW, cosine schedule. One H100: about 90 s; 2 CPU cores: about 6 hours (`--device cpu`).
Measured at the end: greedy, teacher-forced exact match of the expert's `grep` and `apply_patch` calls on the
held-out tasks, the unseen training tasks and fresh synthetic episodes (written to `build.json` in the model).

Not here: the demo's SFT and GRPO (`demo.py`); the tokenizer and architecture (`trl.agents.tiny_model`).

Usage:

    python examples/code_repair/tiny_coder.py data --out build/tiny-coder-data      # CPU: tokenized episodes
    python examples/code_repair/tiny_coder.py train --data build/tiny-coder-data/data.pt \\
        --output-dir examples/code_repair/tiny-coder                                 # GPU if there is one
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "tiny-coder"
SHAPE = {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4,
         "num_key_value_heads": 2}  # fmt: skip
SEEN_TASKS = [f"toy__{repo}-{n}" for repo in ("calc", "textkit", "shopcart", "intervals", "minimark") for n in (1, 2)]
MUTATIONS = [(" < ", " <= "), (" <= ", " < "), (" == ", " != "), (" != ", " == "), (" + ", " - "), (" - ", " + "),
             (" and ", " or "), (" or ", " and "), ("True", "False"), ("False", "True"), ("[0]", "[1]"),
             ("[1]", "[0]"), (" is ", " is not ")]  # fmt: skip
TEST_OUTPUT = "{dots}{pad}[100%]\n{n} passed in 0.0{t}s\n"


def shipped_build() -> dict[str, Any]:
    """How the shipped tiny coder was built (`build.json`: recipe, seen tasks, exact-match probes); a clear error
    when the checkpoint is missing."""
    path = SHIPPED / "build.json"
    if not (SHIPPED / "model.safetensors").is_file() or not path.is_file():
        raise FileNotFoundError(f"no tiny coder at {SHIPPED}: rebuild it with `python {Path(__file__).name} data` "
                                "and `train` (see its docstring), or pass --model tiny")  # fmt: skip
    return json.loads(path.read_text())


def mutate(line: str, rng: random.Random) -> str | None:
    """One small bug in `line`: a flipped operator or constant, a number off by one, or a name missing its last
    letter; None when the line has none of these."""
    flips = [(a, b) for a, b in MUTATIONS if line.count(a) == 1]
    if flips:
        a, b = rng.choice(flips)
        return line.replace(a, b)
    for pattern, change in ((r"\d+", lambda w: str(int(w) + 1)), (r"[A-Za-z_]{4,}", lambda w: w[:-1])):
        found = list(re.finditer(pattern, line))
        if found:
            m = rng.choice(found)
            return line[: m.start()] + change(m.group()) + line[m.end() :]
    return None


def stdlib_edits(rng: random.Random, files: int = 400) -> tuple[list[tuple], list[str]]:
    """Candidate bugs `(path, line number, indent, buggy, fixed)` from the standard library's package modules, and
    docstring sentences to build statements from."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.glob("*/*.py") if "test" not in str(p.relative_to(root)))[:files]
    edits, sentences = [], []
    for path in paths:
        text = path.read_text(errors="replace")
        lines = text.splitlines()
        counts = Counter(lines)
        for number, line in enumerate(lines, 1):
            fixed = line.strip()
            if not 12 <= len(fixed) <= 70 or "`" in fixed or fixed.startswith(("#", '"', "'")) or counts[line] > 1:
                continue
            buggy = mutate(fixed, rng)
            if buggy and buggy != fixed:
                edits.append(
                    (str(path.relative_to(root)), number, line[: len(line) - len(line.lstrip())], buggy, fixed)
                )
        for doc in re.findall(r'"""([^"]{30,300})"""', text):
            sentences += [s.strip() + "." for s in doc.replace("\n", " ").split(". ") if 20 < len(s.strip()) < 120
                          and "`" not in s]  # fmt: skip
    rng.shuffle(edits)
    return edits, sentences


def statement(rng: random.Random, sentences: list[str], code: list[str]) -> str:
    """Two to four sentences, some prose, some `code` returning the wrong thing, wrapped as the toy statements are."""
    parts = []
    for _ in range(rng.randint(2, 4)):
        if rng.random() < 0.5:
            parts.append(rng.choice(sentences))
        else:
            verb = rng.choice(["returns", "raises", "gives", "prints"])
            link = rng.choice(["instead of", "but should give", "and not"])
            parts.append(f"`{rng.choice(code)}` {verb} `{rng.choice(code)}` {link} `{rng.choice(code)}`.")
    text = " ".join(parts)
    return "\n".join(text[i : i + 110] for i in range(0, len(text), 110))


def synthetic_episode(edit: tuple, text: str, rng: random.Random) -> list[dict[str, Any]]:
    """The expert's episode for one synthetic bug, played by the scripted expert itself (`ExpertScript`) with the
    tool results the agent would have printed: grep the line, patch it, run the tests, submit."""
    from code_repair.agent import SYSTEM_PROMPT
    from code_repair.scripted_model import ExpertScript
    from code_repair.sft import as_training_messages
    from code_repair.toy_suite import hint_line

    path, number, indent, buggy, fixed = edit
    task = f"{text}\n\n{hint_line(path, buggy, fixed)}"
    tests = rng.randint(3, 9)
    results = {  # the tool results, in the order the expert calls the tools
        "grep": f"{number}:{indent}{buggy}\n",
        "apply_patch": f"patched {path}",
        "tests": TEST_OUTPUT.format(dots="." * tests, pad=" " * (73 - tests), n=tests, t=rng.randint(1, 9)),
    }
    script = ExpertScript([{"problem_statement": task, "patch": ""}])
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]
    for result in (*results.values(), None):
        reply = script.reply(messages)
        messages.append({"role": "assistant", **reply})
        if result is None or not reply.get("tool_calls"):
            break
        messages.append({"role": "tool", "tool_call_id": reply["tool_calls"][0]["id"], "content": result})
    return as_training_messages(messages)


def tool_call_probes(tokenizer, messages: list[dict], tools: list[dict]) -> list[dict[str, Any]]:
    """For the first `grep` and `apply_patch` turns: the prompt ids and the ids of the expert's reply (to its end
    token), for a teacher-forced exact-match check."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    probes = []
    for k, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        name = calls[0]["function"]["name"] if calls else None
        if message["role"] != "assistant" or name not in ("shell", "apply_patch") or k > 4:
            continue
        prefix = _ids(tokenizer.apply_chat_template(messages[:k], tools=tools, add_generation_prompt=True))
        full = _ids(tokenizer.apply_chat_template(messages[: k + 1], tools=tools))
        if full[: len(prefix)] != prefix:
            raise ValueError(f"turn {k}: the rendered history is not a prefix of the rendered turn")
        target = full[len(prefix) :]
        probes.append({"tool": "grep" if name == "shell" else "apply_patch", "prefix": prefix,
                       "target": target[: target.index(end) + 1]})  # fmt: skip
    return probes


def _ids(rendered) -> list[int]:
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def make_data(out: Path, synthetic: int = 5800, probes: int = 60, seed: int = 0, cache_dir: str | None = None) -> Path:
    """Write `out/data.pt`: tokenized training episodes (`synthetic`, `seen`) and probes (`held_out`, `unseen`,
    `synthetic`); see the module docstring."""
    import torch
    from transformers import AutoTokenizer

    from code_repair.agent import TOOLS
    from code_repair.data import Workspaces, command_env, task_dataset
    from code_repair.sft import write_expert_trajectories
    from trl.agents import DataCollatorForAgentTrajectories
    from trl.agents.tiny_model import TinyModelConfig, build

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(build(out / "tiny", TinyModelConfig(**SHAPE)))
    collator = DataCollatorForAgentTrajectories(tokenizer=tokenizer, max_length=4096)
    cache = Path(cache_dir or "~/.cache/trl-agents/code_repair").expanduser()
    workspaces = Workspaces(cache, env=command_env("toy"))
    train_rows, test_rows = list(task_dataset("toy", "train", cache)), list(task_dataset("toy", "test", cache))
    missing = set(SEEN_TASKS) - {r["instance_id"] for r in train_rows}
    if missing:
        raise ValueError(f"SEEN_TASKS not in the toy training split: {sorted(missing)}")
    expert = {
        e["instance_id"]: e
        for e in write_expert_trajectories(train_rows + test_rows, workspaces, out / "expert.jsonl")
    }
    failed = [i for i, e in expert.items() if e["reward"] != 1.0]
    if failed:
        raise RuntimeError(f"the scripted expert failed on {failed}")

    def encode(messages, tools) -> tuple:
        batch = collator([{"messages": messages, "tools": tools}])
        labels = batch["labels"][0]
        return batch["input_ids"][0].to(torch.int16), labels != -100

    rng = random.Random(seed)
    edits, sentences = stdlib_edits(rng)
    if len(edits) < synthetic + probes + 500:
        raise RuntimeError(f"only {len(edits)} candidate lines in the standard library")
    code = [e[4] for e in edits[synthetic + probes :]]
    episodes = [synthetic_episode(e, statement(rng, sentences, code), rng) for e in edits[: synthetic + probes]]
    data: dict[str, Any] = {"synthetic": [], "seen": [], "probes": {"held_out": [], "unseen": [], "synthetic": []}}
    for i, messages in enumerate(episodes):
        if i < synthetic:
            data["synthetic"].append(encode(messages, TOOLS))
        else:
            data["probes"]["synthetic"] += tool_call_probes(tokenizer, messages, TOOLS)
        if i % 500 == 0:
            print(f"synthetic episodes: {i}/{len(episodes)}", file=sys.stderr, flush=True)
    held_out = {r["instance_id"] for r in test_rows}
    for instance, episode in expert.items():
        if instance in SEEN_TASKS:
            data["seen"].append(encode(episode["messages"], episode["tools"]))
        else:
            split = "held_out" if instance in held_out else "unseen"
            data["probes"][split] += tool_call_probes(tokenizer, episode["messages"], episode["tools"])
    torch.save(data, out / "data.pt")
    print(f"wrote {out / 'data.pt'}: {len(data['synthetic'])} synthetic, {len(data['seen'])} expert episodes; "
          + ", ".join(f"{k} {len(v)} probes" for k, v in data["probes"].items()), flush=True)  # fmt: skip
    return out / "data.pt"


def train(data_path: Path, output_dir: Path, steps: int = 4000, batch_size: int = 16, lr: float = 1e-3,
          expert_share: float = 0.05, device: str | None = None, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Train the tiny coder from `data_path` and save it (bf16, with the tokenizer) to `output_dir`. Needs only torch
    and transformers (the tiny model's tokenizer and config come with the data), so it runs on a bare GPU machine."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = torch.load(data_path)
    tiny = data_path.parent / "tiny"  # the tiny model `data` built in the coder's shape: tokenizer and config
    config = AutoConfig.from_pretrained(tiny)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng, started, log = random.Random(seed), time.monotonic(), []
    for step in range(1, steps + 1):
        scale = min(1.0, step / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        rows = [
            rng.choice(data["seen"] if rng.random() < expert_share else data["synthetic"]) for _ in range(batch_size)
        ]
        ids, labels, attention = _batch(rows, pad, device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 500 == 0 or step == steps:
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.monotonic() - started, 1)})
            print(json.dumps(log[-1]), flush=True)
    exact = exact_match(model, data["probes"], pad, device)
    report = {"shape": SHAPE, "steps": steps, "batch_size": batch_size, "lr": lr, "expert_share": expert_share, "seed": seed,
              "seen_tasks": SEEN_TASKS, "device": device, "seconds": round(time.monotonic() - started, 1),
              "exact_match": exact, "log": log}  # fmt: skip
    model.to(torch.bfloat16).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "generation_config.json").write_text((tiny / "generation_config.json").read_text())
    (output_dir / "build.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"exact_match": exact, "seconds": report["seconds"]}), flush=True)
    return report


def _batch(rows, pad: int, device: str):
    import torch

    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attention = torch.zeros_like(ids)
    for r, (row_ids, trained) in enumerate(rows):
        row_ids = row_ids.long()
        ids[r, : len(row_ids)] = row_ids
        attention[r, : len(row_ids)] = 1
        labels[r, : len(row_ids)] = torch.where(trained, row_ids, -100)
    return ids.to(device), labels.to(device), attention.to(device)


def exact_match(model, probes: dict[str, list[dict]], pad: int, device: str) -> dict[str, float]:
    """Share of probes whose greedy continuation is exactly the expert's tool call, per probe set and tool."""
    import torch

    model.eval()
    hits: dict[str, list[int]] = {}
    with torch.no_grad():
        for split, items in probes.items():
            for k in range(0, len(items), 64):
                chunk = items[k : k + 64]
                width = max(len(p["prefix"]) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                attention = torch.zeros_like(ids)
                for r, p in enumerate(chunk):  # left padding: every prompt ends where generation starts
                    ids[r, width - len(p["prefix"]) :] = torch.tensor(p["prefix"])
                    attention[r, width - len(p["prefix"]) :] = 1
                longest = max(len(p["target"]) for p in chunk)
                out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=False,
                                     max_new_tokens=longest, pad_token_id=pad)  # fmt: skip
                for r, p in enumerate(chunk):
                    got = out[r, width : width + len(p["target"])].tolist()
                    hits.setdefault(f"{split}/{p['tool']}", []).append(int(got == p["target"]))
    model.train()
    return {key: round(sum(v) / len(v), 3) for key, v in sorted(hits.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("data", help="write the tokenized episodes and probes (CPU)")
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--cache-dir", default=None, help="toy repositories cache (default: ~/.cache/trl-agents/...)")
    fit = sub.add_parser("train", help="train and save the tiny coder (GPU when there is one)")
    fit.add_argument("--data", type=Path, required=True)
    fit.add_argument("--output-dir", type=Path, default=SHIPPED)
    fit.add_argument("--steps", type=int, default=4000)
    fit.add_argument("--device", default=None)
    fit.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "data":
        make_data(args.out, cache_dir=args.cache_dir)
    else:
        if not args.data.is_file():
            parser.error(f"--data {args.data}: no such file (run the `data` command first)")
        train(args.data, args.output_dir, steps=args.steps, device=args.device, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
