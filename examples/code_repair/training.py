"""What `grpo.py` and `sft.py` share about upstream's trainers: their argument parser and the model they load.

* `make_parser(dataclasses, defaults)`: upstream's `TrlParser` over the script's dataclasses, upstream's config and
  `ModelConfig`, with the script's defaults on top of `SCRIPT_DEFAULTS` (a `--config` recipe overrides both, the
  command line overrides the recipe).
* `load_model(model_args)`: the causal LM a `ModelConfig` names, in the dtype it names (`auto`, `bfloat16`, ...).

Not here: LoRA (upstream's `get_peft_config` does it), what either script does with its arguments.
"""

from __future__ import annotations


# Where both scripts' defaults differ from upstream's configs: fp32 and no gradient checkpointing unless a recipe
# asks (upstream turns both on), a log line per step, no checkpoints unless asked, no experiment tracker.
SCRIPT_DEFAULTS = {
    "bf16": False,
    "gradient_checkpointing": False,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
}


def make_parser(dataclass_types: tuple, defaults: dict):
    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    parser.set_defaults(**{**SCRIPT_DEFAULTS, **defaults})
    return parser


def load_model(model_args):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = model_args.dtype
    if dtype not in (None, "auto"):
        dtype = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
    )
