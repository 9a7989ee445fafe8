"""Build a tiny Qwen3-architecture model offline, byte-for-byte reproducibly, for tests and the demo.

    python -m trl.agents.tiny_model OUT_DIR [--seed N]

What it writes (about 1 MB in all): random bf16 weights of a `Qwen3ForCausalLM` that the CPU build of vLLM
serves (head_dim 64: CPU attention rejects smaller heads), a byte-level BPE tokenizer trained here on
source files of Python's own standard library (always on disk, no hub needed), and a chat template
(`templates/qwen3_like.jinja`) that behaves like Qwen3's where it matters for agent training:

* roles `system`, `user`, `assistant`, `tool`, each wrapped as `<|im_start|>ROLE\\n ... <|im_end|>\\n`;
* tool schemas rendered as JSON lines inside `<tools></tools>` in the system turn;
* assistant tool calls rendered as `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, the form
  vLLM's `hermes` tool parser reads; `arguments` given as a dict are re-serialised with `tojson`, so a call
  the model sampled as `{"a":true}` comes back as `{"a": true}`;
* consecutive `tool` messages merged into one `user` turn of `<tool_response>` blocks, so rendering tool
  messages one at a time gives different tokens than rendering them together;
* `<think>...</think>` reasoning kept only on assistant turns after the last user message and dropped from
  earlier ones, so the same assistant message renders differently once a new user message follows.

These quirks are deliberate: they make re-rendering a conversation differ from the tokens the engine saw,
which is the drift the gateway and the collator must not suffer. The special tokens `<tool_call>`,
`</tool_call>`, `<tool_response>`, `</tool_response>`, `<think>`, `</think>` are single tokens that are
not "special" (they survive `skip_special_tokens`), as in Qwen3.

Not here: anything that needs a trained model. The weights are random; use the scripted test model in
`examples/` where deterministic behaviour is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path


TEMPLATE_PATH = Path(__file__).parent / "templates" / "qwen3_like.jinja"

# Control tokens (special: stripped by skip_special_tokens) and markup tokens (not special, like Qwen3).
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

# Standard-library files the tokenizer is trained on: present in every CPython 3.11 install.
CORPUS_FILES = [
    "argparse.py",
    "difflib.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "shutil.py",
    "subprocess.py",
    "textwrap.py",
    "unittest/case.py",
    "pathlib.py",
    "string.py",
    "tempfile.py",
]

# Text shaped like agent traffic, so shell commands, diffs and tool-call JSON tokenize compactly.
AGENT_TEXT = """\
{"name": "shell", "arguments": {"command": "ls -la && cat README.md"}}
{"name": "apply_patch", "arguments": {"path": "src/app.py", "search": "return a - b", "replace": "return a + b"}}
{"name": "shell", "arguments": {"command": "python -m pytest -q tests"}}
diff --git a/src/app.py b/src/app.py
--- a/src/app.py
+++ b/src/app.py
@@ -1,3 +1,3 @@
 def add(a, b):
-    return a - b
+    return a + b
The tests pass now. I fixed the bug in the function. true false null
"""


@dataclass
class TinyModelConfig:
    """Shape of the tiny model.

    Args:
        vocab_size: Total tokenizer size, special tokens included.
        hidden_size: Model width; with `num_attention_heads=2` this gives head_dim 64, the smallest the CPU
            build of vLLM serves.
        intermediate_size: MLP width.
        num_hidden_layers: Decoder layers.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention).
        max_position_embeddings: Context length the model (and vLLM's default `max_model_len`) allows.
        seed: Seed of the random weights.
    """

    vocab_size: int = 3072
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    max_position_embeddings: int = 16384
    seed: int = 0

    def __post_init__(self):
        if self.hidden_size // self.num_attention_heads != 64:
            raise ValueError(
                f"hidden_size / num_attention_heads must be 64 (got {self.hidden_size}/{self.num_attention_heads}): "
                "the CPU build of vLLM only serves head_dim 64; set hidden_size = 64 * num_attention_heads."
            )
        if self.vocab_size < 512:
            raise ValueError(
                f"vocab_size must be at least 512 (got {self.vocab_size}): 256 bytes + merges + specials."
            )


def corpus() -> list[str]:
    """Return the training texts: fixed standard-library sources plus agent-shaped text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in CORPUS_FILES:
        path = stdlib / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the tiny tokenizer trains on CPython's standard library.")
        texts.append(path.read_text(encoding="utf-8"))
    return texts + [AGENT_TEXT] * 50


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast` with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(CONTROL_TOKENS) - len(MARKUP_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=CONTROL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=TinyModelConfig.max_position_embeddings,
    )
    wrapped.add_tokens(MARKUP_TOKENS)  # appended after the controls; not special, as in Qwen3
    wrapped.chat_template = TEMPLATE_PATH.read_text()
    return wrapped


def build(out_dir: str | os.PathLike, config: TinyModelConfig | None = None) -> Path:
    """Write the tokenizer, config and random weights of the tiny model to `out_dir` and return its path."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # BPE training is deterministic single-threaded
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = config or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    vocab = -(-len(tokenizer) // 64) * 64  # round up: embedding rows for every id, padded to a multiple of 64
    model_config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(config.seed)
    model = Qwen3ForCausalLM(model_config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=pad_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def digest(model_dir: str | os.PathLike) -> dict[str, str]:
    """Return the sha256 of every file under `model_dir` (relative path -> hex digest)."""
    root = Path(model_dir)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trl.agents.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the model into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    args = parser.parse_args(argv)
    out = build(args.out_dir, TinyModelConfig(seed=args.seed))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for name, sha in digest(out).items():
        print(f"{sha}  {name}")
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
