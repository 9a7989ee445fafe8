"""The trainer's end of NCCL weight transfer: vLLM's own NCCL engine, in a group the gateway lays out, with deadlines.

vLLM's `NCCLTrainerWeightTransferEngine` does the work: rank 0 broadcasts the packed weights while the gateway runs
`/update_weights` on every replica. What this module adds around it:

* the group's size comes from the gateway (`GET /weights/layout`: every worker of every replica), and a
  `TrainerInitInfo` given by hand is checked against it before any rendezvous, so a wrong `world_size` fails at once
  with the expected layout instead of waiting at the rendezvous;
* the rendezvous has the gateway's deadline rather than vLLM's fixed 300 s store timeout (`trainer_init` takes none),
  so replicas that cannot reach the trainer fail the init within the sync deadline, each named by the gateway;
* the transfer has the gateway's deadline too (`send_with_deadline`): a receiver that stops taking part (killed, or
  its `/update_weights` failed before the broadcast) would leave rank 0 waiting inside NCCL for ever, so past the
  deadline the communicator is aborted (`ncclCommAbort`) and the error names what the gateway quarantined;
* a communicator that disabled itself (NCCL library not loaded, which vLLM only logs) is an error: every broadcast
  would silently do nothing;
* the default rendezvous address is the one this host uses to reach the gateway, the interface its replicas can
  most likely reach back.

Not here: which tensors are sent (`sources.py`), the per-replica rank offsets and stale groups
(`server/weight_sync.py`).
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit


def local_address(url: str) -> str:
    """The address of this host on the route to `url`'s host (no packet is sent)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return probe.getsockname()[0]


def trainer_init_info(client, layout: dict[str, Any] | None, rank: int):
    """The `NCCLTrainerInitInfo` for `client`'s settings, sized by the gateway's `layout` (on rank 0)."""
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    from ..client import ServerError

    if not isinstance(client.transfer, str):
        info = client.transfer
        if layout is not None and info.world_size != layout["world_size"]:
            raise ServerError(
                f"{type(info).__name__}.world_size is {info.world_size}, but the gateway's replicas make a group of "
                f"{layout['world_size']}: {layout['description']}. Pass transfer='nccl' to take the layout from the "
                "gateway."
            )
        return info
    address = client.master_address or local_address(client.base_url)
    world_size = layout["world_size"] if layout is not None else 0  # only rank 0 opens the group
    return NCCLTrainerInitInfo(
        master_address=address, master_port=client.master_port, world_size=world_size, rank=rank
    )


def open_trainer_group(client, source, rank: int):
    """vLLM's trainer-side NCCL engine for `source`; on rank 0 joined with every replica's workers in one group."""
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerWeightTransferEngine,
        NCCLWeightTransferInitInfo,
        worker_init_payload,
    )

    from ..client import ServerError, _SyncProtocol

    layout = client.weight_layout() if rank == 0 else None
    info = trainer_init_info(client, layout, rank)
    protocol = _SyncProtocol(client)
    engine = NCCLTrainerWeightTransferEngine(
        client=protocol,
        source=source,
        is_sender=info.is_sender,
        packed=info.packed,
        packed_buffer_size_bytes=info.packed_buffer_size_bytes,
        packed_num_buffers=info.packed_num_buffers,
    )
    if not info.is_sender:
        return engine  # other trainer ranks only take part in the gathers
    import torch

    if not torch.cuda.is_available():
        raise ServerError("transfer='nccl' needs a CUDA device on the trainer; on one host without GPUs use 'shm'")
    workers = NCCLWeightTransferInitInfo(
        master_address=info.master_address,
        master_port=info.master_port,
        rank_offset=1,  # the gateway moves each replica to its own offset
        world_size=info.world_size,
        packed=info.packed,
        packed_buffer_size_bytes=info.packed_buffer_size_bytes,
        packed_num_buffers=info.packed_num_buffers,
    )
    deadline = float(layout["init_timeout"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        replicas = pool.submit(protocol.init_weight_transfer_engine, worker_init_payload(workers))
        try:
            engine.model_update_group = _open_group(info, deadline)
        except Exception as exc:
            replicas_error = replicas.exception()  # the gateway's deadline is the same: its answer is due now
            reason = f"{replicas_error}" if replicas_error else f"{type(exc).__name__}: {exc}"
            raise ServerError(
                f"the NCCL group at {info.master_address}:{info.master_port} did not form within {deadline:.0f} s "
                f"({layout['description']}): {reason}. Check that every inference node reaches this address and port "
                "(set master_address to this node's address on their network, NCCL_SOCKET_IFNAME to its interface)"
            ) from exc
        replicas.result()
    return engine


def _open_group(info, timeout: float):
    """Rank 0 of the group (what vLLM's `trainer_init` does, with a deadline), on the current CUDA device."""
    import torch
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(
        host=info.master_address,
        port=info.master_port,
        rank=0,
        world_size=info.world_size,
        store_timeout=max(1, int(timeout)),
    )
    communicator = PyNcclCommunicator(group, device=torch.accelerator.current_device_index())
    if communicator.disabled:
        raise RuntimeError(
            "vLLM's PyNcclCommunicator disabled itself (the NCCL library did not load: set VLLM_NCCL_SO_PATH); "
            "every broadcast would silently send nothing"
        )
    return communicator


def send_with_deadline(engine, timeout: float) -> None:
    """`engine.send_weights()` (rank 0), aborting its communicator if it has not returned after `timeout` seconds."""
    from ..client import ServerError

    failure: list[BaseException] = []

    def send() -> None:
        try:
            engine.send_weights()
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=send, name="trl-agents-nccl-send", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        group = engine.model_update_group
        if group is not None:
            group.destroy()  # ncclCommAbort: the broadcast stuck on a missing receiver returns
        thread.join(10)
        quarantined = engine.client.client.weight_status().get("quarantined") or {}
        raise ServerError(
            f"the NCCL transfer did not finish within {timeout:.0f} s (the gateway's sync deadline); the group was "
            f"aborted. Replicas taken out: {quarantined or 'none named yet'}"
        )
    if failure:
        raise failure[0]
