"""NCCL weight sync on two GPUs: our trainer side through a real gateway into a replica's receive code, against the
floor (a raw NCCL broadcast of the same bytes between the same two GPUs, in the same run).

What runs (2 GPUs, no vLLM install: vLLM's pure-Python files are enough for its NCCL path):
* trainer, GPU 0, this process: a randomly initialised Qwen3-0.6B- or 1.7B-shaped model in bf16 and
  `ServerClient(gateway, transfer="nccl").update_weights(model)`, which opens the group with the layout the gateway
  gives (`trl/agents/weights/nccl.py`) and sends with vLLM's `NCCLTrainerWeightTransferEngine` (packed broadcast);
* the gateway, a real process (`trl.agents.testing.standin_replica.gateway_process`): pause, start, update, finish, resume fanned
  out over HTTP as for any replica;
* the receiver, GPU 1: `python -m trl.agents.testing.standin_replica --device cuda`, a stand-in for the vLLM server that cannot be
  installed there. It answers the replica routes the gateway calls and receives with vLLM's worker-side code
  (`StatelessProcessGroup` + `PyNcclCommunicator` at the rank the gateway assigned, `packed_nccl_broadcast_consumer`),
  but loads nothing into a model (a real replica also runs vLLM's layerwise reload, not timed here).

Per shape: the first sync (which opens the group), then `--syncs` timed syncs (seconds per phase from
`ServerClient.last_sync`: waits on the gateway's start / update / finish; update overlaps the broadcast), then
`--syncs` raw broadcasts of the same number of bytes on the same communicator (the floor). The received tensors are
checked byte for byte (SHA-256 per tensor) against the trainer's. Then a fault: the receiver fails its next
`/update_weights` before receiving, so rank 0's broadcast has nobody to send to; the sync must fail within the
gateway's deadline (`--sync-timeout`) by name, and the next one succeed in a fresh group.

Run on the GPU machine with vLLM's files on PYTHONPATH and the NCCL shim (see `gpu_run.sh nccl`):
`python3 benchmarks/bench_nccl_sync.py --models 0.6b 1.7b --out results/nccl_sync.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_trainer import SHAPES, build_model  # a sibling script (this folder is on the path of a script)

from trl.agents import ServerClient
from trl.agents.server.process import free_port
from trl.agents.testing.standin_replica import gateway_process, wait_http


def digests(model) -> dict[str, str]:
    import torch

    return {
        name: hashlib.sha256(p.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest()
        for name, p in model.named_parameters()
    }


def floor(client: ServerClient, model, receiver: str, nbytes: int, reps: int) -> list[float]:
    """Seconds of `reps` raw broadcasts of `nbytes` from GPU 0 on the group the sync used (the receiver joins each)."""
    import httpx
    import torch

    group = client._engines[id(model)].model_update_group
    flat = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    answer: dict = {}
    thread = threading.Thread(
        target=lambda: answer.update(
            r=httpx.post(f"{receiver}/standin/floor", json={"nbytes": nbytes, "reps": reps + 1}, timeout=120)
        )
    )
    thread.start()
    times = []
    for rep in range(reps + 1):  # the first one waits for the receiver's call to arrive: not timed
        torch.cuda.synchronize()
        start = time.perf_counter()
        group.broadcast(flat, src=0)
        torch.cuda.synchronize()
        if rep:
            times.append(time.perf_counter() - start)
    thread.join(120)
    if answer["r"].status_code != 200:
        raise RuntimeError(f"the receiver's floor broadcast failed: {answer['r'].text}")
    return times


def receiver_fails(client: ServerClient, model, receiver: str) -> dict:
    """The receiver answers its next `/update_weights` with an error before receiving anything: rank 0's broadcast
    then has nobody to send to. The sync must fail within the gateway's deadline, naming the replica, and the next
    sync must succeed in a fresh group."""
    import httpx

    from trl.agents import ServerError

    httpx.post(f"{receiver}/standin/fail", json={"path": "/update_weights", "times": 1}, timeout=10)
    start = time.perf_counter()
    try:
        client.update_weights(model)
        error = None
    except ServerError as exc:
        error = str(exc)
    failed_after = time.perf_counter() - start
    start = time.perf_counter()
    try:
        client.update_weights(model)
        recovered = None
    except ServerError as exc:
        recovered = str(exc)
    return {
        "error": error,
        "failed_after_seconds": failed_after,
        "next_sync_error": recovered,
        "next_sync_seconds": time.perf_counter() - start,
        "quarantined_after": client.weight_status()["quarantined"],
    }


def run_shape(name: str, gateway: str, receiver: str, syncs: int, port: int, with_fault: bool) -> dict:
    import httpx
    import torch

    model = build_model(name, "cuda", torch.bfloat16)
    with ServerClient(gateway, transfer="nccl", master_address="127.0.0.1", master_port=port) as client:
        start = time.perf_counter()
        client.update_weights(model)
        first = time.perf_counter() - start
        rows = []
        for _ in range(syncs):
            client.update_weights(model)
            rows.append(dict(client.last_sync))
        nbytes = int(rows[0]["bytes"])
        floors = floor(client, model, receiver, nbytes, syncs)
        received = httpx.get(f"{receiver}/standin/checksums", timeout=300).json()
        sent = digests(model)
        fault = receiver_fails(client, model, receiver) if with_fault else None
    seconds = statistics.median(r["seconds"] for r in rows)
    result = {
        "model": name,
        "bytes": nbytes,
        "tensors": len(sent),
        "first_sync_seconds": first,
        "sync_seconds": seconds,
        "sync_seconds_all": [r["seconds"] for r in rows],
        **{k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0] if k.endswith("_seconds")},
        "floor_seconds": statistics.median(floors),
        "floor_seconds_all": floors,
        "identical": received == sent,
        "mismatched": sorted(k for k in sent if received.get(k) != sent[k])[:5],
        "fault": fault,
    }
    result["ratio"] = seconds / result["floor_seconds"]
    result["overhead_seconds"] = seconds - result["floor_seconds"]
    del model
    torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["0.6b", "1.7b"], choices=sorted(SHAPES))
    parser.add_argument("--syncs", type=int, default=5, help="timed syncs (and floor broadcasts) per model")
    parser.add_argument("--receiver-gpu", default="1")
    parser.add_argument("--sync-timeout", type=float, default=20.0, help="the gateway's --weight-sync-timeout")
    parser.add_argument("--no-fault", action="store_true", help="skip the failing-receiver check")
    parser.add_argument("--out", default="results/nccl_sync.json")
    parser.add_argument("--log-dir", default="/tmp/nccl-sync-logs")
    args = parser.parse_args()

    import os

    import torch

    torch.cuda.set_device(0)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    receiver_port, gateway_port = free_port(), free_port()
    receiver_url, gateway_url = f"http://127.0.0.1:{receiver_port}", f"http://127.0.0.1:{gateway_port}"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": args.receiver_gpu}
    processes = []
    with open(logs / "receiver.log", "wb") as receiver_log, open(logs / "gateway.log", "wb") as gateway_log:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "trl.agents.testing.standin_replica", "--port", str(receiver_port),
             "--device", "cuda", "--workers", "1", "--store-timeout", "60"],
            stdout=receiver_log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        processes.append(receiver)
        try:
            wait_http(f"{receiver_url}/health", 120, receiver)
            processes.append(
                gateway_process([receiver_url], gateway_port, args.sync_timeout, gateway_log, health_interval=2.0)
            )
            wait_http(f"{gateway_url}/health", 120, processes[-1])
            results = []
            for name in args.models:
                results.append(run_shape(name, gateway_url, receiver_url, args.syncs, free_port(), not args.no_fault))
                print(json.dumps(results[-1]), flush=True)
        finally:
            for process in processes:
                process.kill()
                process.wait(30)
    out = {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(
        f"{'model':>6} {'GB':>6} {'ours ms':>8} {'floor ms':>9} {'ratio':>6} {'start':>6} {'update':>7} {'finish':>7} ok"
    )
    for r in results:
        print(
            f"{r['model']:>6} {r['bytes'] / 1e9:6.2f} {r['sync_seconds'] * 1e3:8.1f} {r['floor_seconds'] * 1e3:9.2f} "
            f"{r['ratio']:6.1f} {r['start_seconds'] * 1e3:6.1f} {r['update_seconds'] * 1e3:7.1f} "
            f"{r['finish_seconds'] * 1e3:7.1f} {r['identical']}"
        )
    for r in results:
        if r["fault"]:
            print(f"{r['model']}: failing receiver -> {r['fault']}")
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
