"""`trl_agents_shm`: a vLLM weight-transfer backend that moves weights through shared-memory files on one host.

vLLM's own backends (NCCL, CUDA IPC, ...) all need GPUs. This one lets the CPU build run vLLM's native
weight-transfer phases (`start_weight_update` → `update_weights` per chunk → `finish_weight_update`) unchanged, so the
tests and the demo exercise the same control path as a GPU run with NCCL. It also works on a GPU host when trainer and
replicas share a machine (the bytes then go GPU → host → GPU).

The trainer packs a group-aligned chunk of parameters into one file under `/dev/shm` (or `TRL_AGENTS_SHM_DIR`) and
sends `{"path", "names", "dtype_names", "shapes", "offsets"}`; every worker maps the file and loads the tensors with
vLLM's layerwise reload. The sender removes each file once every replica has loaded it, so memory stays bounded by
`buffer_size_bytes` plus the largest parameter group.

Registered with vLLM through the `vllm.general_plugins` entry point (`register`), which vLLM calls in every process.
Not here: when to sync or what happens if a replica fails (`server/weight_sync.py`), which tensors to send
(`weights/sources.py`).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch


BACKEND = "trl_agents_shm"
DEFAULT_BUFFER_BYTES = 512 * 1024 * 1024


def shm_dir() -> Path:
    """Where chunk files are written: `TRL_AGENTS_SHM_DIR`, else `/dev/shm`, else the temp directory."""
    configured = os.environ.get("TRL_AGENTS_SHM_DIR")
    if configured:
        return Path(configured)
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- worker side (runs inside vLLM's worker processes) ---------------------------------------------------------------


@functools.cache
def _worker_info_classes():
    """The init and update messages of the worker engine (defined in a function: vLLM is imported only when used)."""
    from vllm.distributed.weight_transfer.base import WeightTransferInitInfo, WeightTransferUpdateInfo

    @dataclass
    class ShmInitInfo(WeightTransferInitInfo):
        """Nothing to rendezvous: the files carry everything."""

    @dataclass
    class ShmUpdateInfo(WeightTransferUpdateInfo):
        path: str
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        offsets: list[int]

        def __post_init__(self):
            n = len(self.names)
            if not (len(self.dtype_names) == len(self.shapes) == len(self.offsets) == n):
                raise ValueError(
                    f"names, dtype_names, shapes and offsets must have one entry per tensor: got {n}, "
                    f"{len(self.dtype_names)}, {len(self.shapes)}, {len(self.offsets)}"
                )

    return ShmInitInfo, ShmUpdateInfo


@functools.cache
def _worker_classes():
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    ShmInitInfo, ShmUpdateInfo = _worker_info_classes()

    class ShmWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
        """Loads chunks the trainer wrote to shared-memory files, with vLLM's layerwise reload."""

        init_info_cls = ShmInitInfo
        update_info_cls = ShmUpdateInfo

        def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
            pass  # no data-plane connection to open

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
            refresh_tied_heads(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            self.receive_weights(self.parse_update_info(update_info))
            if torch.accelerator.current_accelerator() is not None:
                torch.accelerator.synchronize()

        def receive_weights(self, update_info: ShmUpdateInfo) -> None:
            tensors = read_chunk(update_info)
            device = self.device if self.device.type != "cpu" else None
            self.model.load_weights([(n, t.to(device) if device else t) for n, t in tensors])

        def shutdown(self) -> None:
            pass

    return ShmWeightTransferEngine


def refresh_tied_heads(model: torch.nn.Module) -> None:
    """Re-run weight processing of an `lm_head` tied to the input embeddings.

    The tied head loads no weights of its own, so the layerwise reload leaves it alone; on the CPU build its
    processing packs a private copy of the weight for oneDNN, which would keep serving the old embeddings.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    embeddings = {
        m.weight.data_ptr()
        for m in model.modules()
        if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
    }
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and module.weight.data_ptr() in embeddings:
            module.quant_method.process_weights_after_loading(module)


def read_chunk(info: Any) -> list[tuple[str, torch.Tensor]]:
    """Map a chunk file and view its tensors (copy-on-write pages; nothing is copied until the model loads them)."""
    path = Path(info.path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = []
    for name, dtype_name, shape, offset in zip(info.names, info.dtype_names, info.shapes, info.offsets, strict=True):
        dtype = _dtype(dtype_name)
        nbytes = math.prod(int(dim) for dim in shape) * dtype.itemsize
        if offset < 0 or offset + nbytes > size:
            raise ValueError(f"{name}: bytes {offset}..{offset + nbytes} lie outside {path} ({size} bytes)")
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=nbytes, offset=offset) if nbytes else None
        tensor = flat.view(dtype).reshape(shape) if flat is not None else torch.empty(shape, dtype=dtype)
        out.append((name, tensor))
    return out


# -- trainer side ----------------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One chunk file and what it holds."""

    path: Path
    names: list[str] = field(default_factory=list)
    dtype_names: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    nbytes: int = 0

    def update_info(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "names": self.names,
            "dtype_names": self.dtype_names,
            "shapes": self.shapes,
            "offsets": self.offsets,
        }


def write_chunk(tensors: list[tuple[str, torch.Tensor]], directory: Path | None = None) -> Chunk:
    """Pack `tensors` into a new file (64-byte aligned) and describe it."""
    directory = directory or shm_dir()
    chunk = Chunk(directory / f"trl-agents-weights-{os.getpid()}-{uuid.uuid4().hex}.bin")
    offset = 0
    for name, tensor in tensors:
        offset = (offset + 63) // 64 * 64
        chunk.names.append(name)
        chunk.dtype_names.append(_dtype_name(tensor.dtype))
        chunk.shapes.append(list(tensor.shape))
        chunk.offsets.append(offset)
        offset += tensor.numel() * tensor.element_size()
    chunk.nbytes = offset
    with open(chunk.path, "w+b") as f:
        f.truncate(max(offset, 1))
        with mmap.mmap(f.fileno(), max(offset, 1)) as mapped:
            buffer = torch.frombuffer(mapped, dtype=torch.uint8)
            for (_, tensor), start in zip(tensors, chunk.offsets, strict=True):
                n = tensor.numel() * tensor.element_size()
                if n:
                    src = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                    buffer[start : start + n].copy_(src)
            del buffer
    return chunk


def cpu_batches(groups, buffer_size_bytes: int):
    """The tensors of `groups` (`(names, tensors)` pairs; `None` for a tensor this rank does not hold) copied to
    the CPU, in batches of at least `buffer_size_bytes` (the last one may hold less): what one chunk file holds."""
    pending: list[tuple[str, torch.Tensor]] = []
    pending_bytes = 0
    for names, tensors in groups:
        pending += [(n, t.detach().to("cpu")) for n, t in zip(names, tensors, strict=True) if t is not None]
        pending_bytes += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        if pending_bytes >= buffer_size_bytes:
            yield pending
            pending, pending_bytes = [], 0
    if pending:
        yield pending


@functools.cache  # one set of classes per process: vLLM's factory registers a backend once
def _trainer_info_class():
    from vllm.distributed.weight_transfer.base import TrainerInitInfo

    @dataclass
    class ShmTrainerInitInfo(TrainerInitInfo):
        """Trainer-side settings: how many bytes one chunk file may hold."""

        backend: ClassVar[str] = BACKEND
        buffer_size_bytes: int = DEFAULT_BUFFER_BYTES

    return ShmTrainerInitInfo


@functools.cache  # one set of classes per process: vLLM's factory registers a backend once
def _trainer_classes():
    from vllm.distributed.weight_transfer.base import TrainerWeightTransferEngine

    ShmTrainerInitInfo = _trainer_info_class()

    class ShmTrainerWeightTransferEngine(TrainerWeightTransferEngine[ShmTrainerInitInfo]):
        """Writes the source group by group into chunk files and has every replica load each one."""

        init_info_cls = ShmTrainerInitInfo

        def __init__(self, *, client, source, is_sender: bool = True, buffer_size_bytes: int = DEFAULT_BUFFER_BYTES):
            super().__init__(client=client, source=source, is_sender=is_sender)
            self.buffer_size_bytes = buffer_size_bytes
            self.bytes_sent = 0

        @classmethod
        def trainer_init(cls, init_info, *, client, source=None):
            if source is None:
                raise ValueError(f"{BACKEND} needs a WeightSource")
            engine = cls(
                client=client,
                source=source,
                is_sender=init_info.is_sender,
                buffer_size_bytes=init_info.buffer_size_bytes,
            )
            if engine.is_sender:
                client.init_weight_transfer_engine({})
            return engine

        def send_weights(self) -> None:
            """Every rank iterates the source (gathers are collective); only the sender writes and calls."""
            self.bytes_sent = 0
            if not self.is_sender:
                for _ in self.source.iter_groups():
                    pass
                return
            self.client.start_weight_update()
            for batch in cpu_batches(self.source.iter_groups(), self.buffer_size_bytes):
                self._ship(batch)
            self.client.finish_weight_update()

        def _ship(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
            chunk = write_chunk(tensors)
            try:
                self.client.update_weights(chunk.update_info())
                self.bytes_sent += chunk.nbytes
            finally:
                chunk.path.unlink(missing_ok=True)

    return ShmTrainerInitInfo, ShmTrainerWeightTransferEngine


def trainer_init_info(rank: int = 0, buffer_size_bytes: int = DEFAULT_BUFFER_BYTES):
    """The `TrainerInitInfo` that selects this backend (registers it with vLLM's trainer factory first)."""
    register()
    info_cls, _ = _trainer_classes()
    return info_cls(rank=rank, buffer_size_bytes=buffer_size_bytes)


def register() -> None:
    """vLLM plugin entry point: register the worker and trainer engines (safe to call more than once)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

    for factory, engine in [
        (WeightTransferEngineFactory, _worker_classes),
        (WeightTransferTrainerFactory, lambda: _trainer_classes()[1]),
    ]:
        try:
            factory.register_engine(BACKEND, engine())
        except ValueError as exc:  # registered already: vLLM loads plugins once per process, tests may call again
            if "already registered" not in str(exc):
                raise
