"""What the trainer sends: its parameters under the names vLLM loads, as a vLLM `WeightSource`.

* a plain `transformers` model: its parameters as they are;
* a PEFT model: the LoRA weights merged into the base weights for the duration of the sync (then unmerged), sent under
  the base model's names, adapters and `modules_to_save` copies handled;
* a DeepSpeed ZeRO-3 model: parameters gathered one decoder layer at a time (every rank takes part in each gather,
  only rank 0 keeps the tensors), so peak memory is one layer on top of the shards.

Adapter-only LoRA sync (no full-weight transfer) does not go through here: see `ServerClient.update_weights`.
It satisfies vLLM's `WeightSource` interface by shape (`metadata`, iteration, `groups`, `iter_groups`,
`held_names`) without importing vLLM, so the trainer side also runs where vLLM is not installed (e.g. the GPU
benchmarks). Not here: how the bytes travel (`weights/shm.py`, vLLM's NCCL engine).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn


PEFT_PREFIX = "base_model.model."


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_adapter")


def is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def vllm_name(name: str, peft: bool) -> str | None:
    """The name vLLM loads for trainer parameter `name`; `None` for parameters vLLM does not hold (LoRA factors)."""
    if not peft:
        return name
    if "lora_" in name or ".original_module." in name:
        return None
    name = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    return name


class ParamMeta(NamedTuple):
    """Name, dtype and full shape of one parameter (what vLLM's `ParamMeta` holds)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


def layer_groups(names: list[str]) -> list[list[str]]:
    """Split names into: everything before the first numbered block, one group per block index, everything after.

    The block index is the first all-digit dotted segment (`model.layers.3.mlp...` → block 3), so any
    architecture's decoder stack splits per layer without a table of names.
    """
    head: list[str] = []
    tail: list[str] = []
    blocks: dict[tuple[str, int], list[str]] = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if index is None:
            (tail if blocks else head).append(name)
        else:
            blocks.setdefault((".".join(parts[:index]), int(parts[index])), []).append(name)
    return [g for g in [head, *blocks.values(), tail] if g]


class ModelWeights:
    """The trainer model's weights as vLLM names them (plain, PEFT-merged or ZeRO-3-gathered).

    Use inside `with source.prepared():` (merges LoRA adapters for the duration of the sync).
    """

    def __init__(self, model: nn.Module, rank: int = 0):
        self.model = model
        self.rank = rank
        self.peft = is_peft_model(model)
        self.params = [
            (target, param)
            for name, param in model.named_parameters()
            if (target := vllm_name(name, self.peft)) is not None
        ]
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no parameters to send")

    @contextlib.contextmanager
    def prepared(self):
        """Merge LoRA adapters into the base weights while the weights are read (no-op for other models)."""
        if not self.peft:
            yield self
            return
        self.model.merge_adapter()
        try:
            yield self
        finally:
            self.model.unmerge_adapter()

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for name, p in self.params]

    def held_names(self) -> None:
        return None  # every rank holds (a shard of) every parameter

    def groups(self) -> list[list[str]]:
        return layer_groups([name for name, _ in self.params])

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for names, tensors in self.iter_groups():
            yield from zip(names, tensors, strict=True)

    def iter_groups(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        by_name = dict(self.params)
        for group in self.groups():
            params = [by_name[n] for n in group]
            if any(is_zero3(p) for p in params):
                import deepspeed

                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    # copy out (on the device: NCCL sends from there) before the shards are released; only the
                    # sender needs the tensors
                    tensors = [p.detach().clone() if self.rank == 0 else None for p in params]
            else:
                tensors = [p.detach() for p in params]
            yield group, tensors

    def nbytes(self) -> int:
        return sum(m.dtype.itemsize * math.prod(m.shape) for m in self.metadata())
