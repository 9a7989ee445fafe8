"""Trainer-side weight export: gather and pack the full weights for transfer, against the copy floor, in one run.

Setup:  a GPU machine with torch, transformers, peft (deepspeed for --zero3); `make install` for the CPU smoke run
Usage:  python benchmarks/bench_weight_export.py [--models 0.6b,1.7b] [--out export.json]
        torchrun --nproc_per_node 2 benchmarks/bench_weight_export.py --zero3 [--models 0.6b,1.7b]
        python benchmarks/bench_weight_export.py --tiny      # CPU smoke run

"Export" is what the trainer does before bytes go on the wire: read every parameter under the name vLLM loads
(`trl.agents.weights.sources.ModelWeights`: plain, LoRA merged for the duration, or ZeRO-3 gathered one decoder
layer at a time) and pack the tensors into flat 1 GiB buffers on the GPU, the buffers NCCL broadcasts to the
inference engines. Two packers are timed: one `copy_` per tensor, and one `torch.cat(..., out=buffer)` per buffer.

The floor, measured in the same run on the same bytes:
* one GPU: a single device-to-device copy of a buffer the size of the whole model (the least any packing can cost);
* `--zero3` on 2 GPUs: a NCCL broadcast of the same bytes from rank 0 to rank 1 (what sending them costs at best).

Models are randomly initialised Qwen3-0.6B / 1.7B shapes in bf16 (`bench_trainer.SHAPES`). Times are medians of
`--repeats` runs after a warm-up, with the device synchronised around each. The table prints last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from bench_trainer import COMMON, SHAPES, build_model  # a sibling script (this folder is on the path of a script)

from trl.agents.weights.sources import ModelWeights


BUFFER_BYTES = 1 << 30  # vLLM's default packed-broadcast buffer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export_seconds(source: ModelWeights, packer, device: torch.device, repeats: int, barrier=None) -> float:
    """Median time to read `source` (merging LoRA for the duration) and pack every tensor."""

    def export():
        with source.prepared():
            packer.pack(source)
        if barrier is not None:
            barrier()

    return median_seconds(export, device, repeats)


def copy_floor(nbytes: int, device: torch.device, repeats: int) -> float:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return median_seconds(lambda: dst.copy_(src), device, repeats)


def broadcast_floor(nbytes: int, device: torch.device, repeats: int, rank: int) -> float:
    import torch.distributed as dist

    payload = torch.empty(nbytes, dtype=torch.uint8, device=device)
    if rank == 0:
        payload.random_(0, 255)
    return median_seconds(lambda: dist.broadcast(payload, src=0), device, repeats)


class Packer:
    """Packs named tensors into reusable flat byte buffers (two, used in turn, as a double-buffered sender would)."""

    def __init__(self, device: torch.device, buffer_bytes: int, fused: bool):
        self.buffers = [torch.empty(buffer_bytes, dtype=torch.uint8, device=device) for _ in range(2)]
        self.fused = fused
        self.packed_bytes = 0

    def pack(self, source) -> int:
        """Pack everything `source.iter_groups()` yields; return the number of buffers filled."""
        pending: list[torch.Tensor] = []
        size, filled, self.packed_bytes = 0, 0, 0
        for _, tensors in source.iter_groups():
            for tensor in tensors:
                if tensor is None:  # ZeRO-3 on a rank that does not send
                    continue
                view = tensor.detach().reshape(-1).view(torch.uint8)
                if size + view.numel() > self.buffers[0].numel() and pending:
                    self._flush(pending, filled)
                    filled, pending, size = filled + 1, [], 0
                pending.append(view)
                size += view.numel()
        if pending:
            self._flush(pending, filled)
            filled += 1
        return filled

    def _flush(self, views: list[torch.Tensor], index: int) -> None:
        buffer = self.buffers[index % 2]
        n = sum(v.numel() for v in views)
        if self.fused:
            torch.cat(views, out=buffer[:n])
        else:
            offset = 0
            for v in views:
                buffer[offset : offset + v.numel()].copy_(v)
                offset += v.numel()
        self.packed_bytes += n


def single(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    rows = []
    for name in args.models.split(","):
        model = build_model(name, device, dtype)
        nbytes = ModelWeights(model).nbytes()
        floor = copy_floor(nbytes, device, args.repeats)
        cases = {"plain": model}
        from peft import LoraConfig, get_peft_model

        cases["lora r=32 merged"] = get_peft_model(
            build_model(name, device, dtype), LoraConfig(r=32, target_modules="all-linear")
        )
        for case, m in cases.items():
            for fused in (False, True):
                packer = Packer(device, min(BUFFER_BYTES, nbytes), fused)
                source = ModelWeights(m)
                seconds = export_seconds(source, packer, device, args.repeats)
                assert packer.packed_bytes == nbytes, (packer.packed_bytes, nbytes)
                rows.append({"model": name, "case": case, "packer": "cat" if fused else "copy per tensor",
                             "bytes": nbytes, "tensors": len(source.params), "export_s": seconds,
                             "floor": "device-to-device copy", "floor_s": floor, "ratio": seconds / floor})  # fmt: skip
                print(_row(rows[-1]), flush=True)
            del packer
        del model, cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def zero3(args) -> list[dict]:
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed()
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    rows = []
    for name in args.models.split(","):
        from transformers import Qwen3Config, Qwen3ForCausalLM

        with deepspeed.zero.Init(config_dict_or_path=config, dtype=torch.bfloat16):
            model = Qwen3ForCausalLM(Qwen3Config(**{**COMMON, **SHAPES[name]}))
        engine, *_ = deepspeed.initialize(model=model, config=config,
                                          optimizer=torch.optim.AdamW(model.parameters(), lr=1e-6))  # fmt: skip
        source = ModelWeights(engine.module, rank=rank)
        nbytes = source.nbytes()
        floor = broadcast_floor(nbytes, device, args.repeats, rank)
        for fused in (False, True):
            packer = Packer(device, min(BUFFER_BYTES, nbytes), fused)
            seconds = export_seconds(source, packer, device, args.repeats, barrier=dist.barrier)
            if rank == 0:
                assert packer.packed_bytes == nbytes, (packer.packed_bytes, nbytes)
                rows.append({"model": name, "case": "zero3 gathered per layer", "packer": "cat" if fused else "copy per tensor",
                             "bytes": nbytes, "tensors": len(source.params), "export_s": seconds,
                             "floor": "NCCL broadcast rank0->rank1", "floor_s": floor, "ratio": seconds / floor})  # fmt: skip
                print(_row(rows[-1]), flush=True)
            del packer
        del engine, model, source
        torch.cuda.empty_cache()
    return rows


def _row(r: dict) -> str:
    return (f"{r['model']:5} {r['case']:25} {r['packer']:16} {r['bytes'] / 2**30:6.2f} GiB {r['tensors']:5} "
            f"{r['export_s'] * 1e3:9.1f} ms  floor {r['floor_s'] * 1e3:8.1f} ms ({r['floor']})  x{r['ratio']:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="0.6b,1.7b")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--zero3", action="store_true", help="ZeRO-3 over the processes torchrun started")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny shape")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.tiny:
        args.models, args.repeats = "tiny", 2
    if args.zero3:
        rows = zero3(args)
    else:
        cuda = torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        rows = single(args, device, torch.bfloat16 if cuda else torch.float32)
    if not rows:  # ranks other than 0 under --zero3
        return
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    header = f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {device_name}, torch {torch.__version__}"
    if args.out:
        args.out.write_text(json.dumps({"environment": header, "rows": rows}, indent=1))
    print(f"\n{header}")
    for r in rows:
        print(_row(r))


if __name__ == "__main__":
    main()
