"""NCCL weight-transfer groups through a real gateway process: each replica gets its own ranks, bad layouts and
unreachable trainers fail within the deadline by name, and replicas that leave or come back get a fresh group.

vLLM's NCCL backend needs a GPU, so the replicas here are `trl.agents.testing.standin_replica` servers: each simulated worker joins
the group's rendezvous for real (vLLM's `StatelessProcessGroup` at the rank the gateway gave it) and records what it
received; the test plays the trainer's rank 0 exactly as vLLM's `NCCLTrainerWeightTransferEngine.trainer_init` does
(it sends one init body with `rank_offset=1`). Before the gateway assigned offsets, both replicas received
`rank_offset=1` and the rendezvous timed out on every replica. Tests run in file order and share the servers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from vllm.distributed.utils import StatelessProcessGroup
from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo, worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from trl.agents import ServerClient, ServerError
from trl.agents.server.process import free_port
from trl.agents.testing.standin_replica import gateway_process, wait_http


STANDIN = ["-m", "trl.agents.testing.standin_replica"]
SYNC_TIMEOUT = 10.0  # the gateway's --weight-sync-timeout: each replica call gets half
EMPTY_UPDATE = {"update_info": {"names": [], "dtype_names": [], "shapes": []}}


class StandIn:
    def __init__(self, workers: int, port: int | None = None):
        self.workers, self.port = workers, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> StandIn:
        command = [sys.executable, *STANDIN, "--port", str(self.port), "--workers", str(self.workers)]
        self.process = subprocess.Popen([*command, "--store-timeout", "20"])
        wait_http(f"{self.url}/health")
        return self

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def inits(self) -> list[dict]:
        received = httpx.get(f"{self.url}/standin/received", timeout=10).json()["received"]
        return [r["body"]["init_info"] for r in received if r["path"] == "/init_weight_transfer_engine"]


@pytest.fixture(scope="module")
def replicas():
    stand_ins = [StandIn(workers=1).start(), StandIn(workers=2).start()]  # replica-0: 1 worker, replica-1: TP 2
    yield stand_ins
    for stand_in in stand_ins:
        stand_in.stop()


@pytest.fixture(scope="module")
def gateway(replicas, tmp_path_factory):
    """A real gateway process over the stand-ins (named replica-0 and replica-1, in that order)."""
    port = free_port()
    with open(tmp_path_factory.mktemp("gateway") / "gateway.log", "wb") as log:
        process = gateway_process([r.url for r in replicas], port, SYNC_TIMEOUT, log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health")
            yield url
        finally:
            process.kill()
            process.wait(10)


def open_group(gateway: str, world_size: int, port: int | None = None, join: bool = True):
    """Rank 0 of a new group, as vLLM's trainer engine opens it: its one init body (`rank_offset=1`) goes to the
    gateway while rank 0 waits at the rendezvous. Returns the gateway's answer and the ranks that gathered."""
    port = port or free_port()
    info = NCCLWeightTransferInitInfo(
        master_address="127.0.0.1", master_port=port, rank_offset=1, world_size=world_size
    )
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            httpx.post, f"{gateway}/weights/init", json={"init_info": worker_init_payload(info)}, timeout=60
        )
        gathered = None
        if join:
            group = StatelessProcessGroup.create("127.0.0.1", port, rank=0, world_size=world_size, store_timeout=20)
            gathered = sorted(group.all_gather_obj(0))
        return answer.result(), gathered


def sync(gateway: str) -> httpx.Response:
    """One weight sync through the gateway's phases (no tensors: the stand-ins have no NCCL data plane on CPU)."""
    for path, body in [("/weights/start", {}), ("/weights/update", EMPTY_UPDATE)]:
        answer = httpx.post(f"{gateway}{path}", json=body, timeout=60)
        if answer.status_code != 200:
            return answer
    return httpx.post(f"{gateway}/weights/finish", json={}, timeout=60)


def weights(gateway: str) -> dict:
    return httpx.get(f"{gateway}/weights", timeout=10).json()


def wait_for(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")


def test_each_replica_gets_its_own_ranks_in_one_group(gateway, replicas):
    layout = httpx.get(f"{gateway}/weights/layout", timeout=10).json()
    assert layout["world_size"] == 4
    assert [(r["name"], r["workers"], r["rank_offset"]) for r in layout["replicas"]] == [
        ("replica-0", 1, 1),
        ("replica-1", 2, 2),
    ]
    answer, gathered = open_group(gateway, world_size=4)
    assert answer.status_code == 200, answer.text
    assert gathered == [0, 1, 2, 3]  # every rank held exactly once: the rendezvous a real NCCL group needs
    received = [stand_in.inits()[-1] for stand_in in replicas]
    assert [(r["rank_offset"], r["world_size"]) for r in received] == [(1, 4), (2, 4)]
    assert all(r["master_port"] == received[0]["master_port"] for r in received)
    assert sync(gateway).json()["version"] == 1


def test_a_wrong_world_size_is_refused_with_the_layout_before_any_rendezvous(gateway, replicas):
    before = [len(stand_in.inits()) for stand_in in replicas]
    start = time.monotonic()
    answer, _ = open_group(gateway, world_size=3, join=False)
    assert time.monotonic() - start < SYNC_TIMEOUT / 2
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "world_size is 3" in message and "replica-1 ranks 2-3 (2 workers); world_size 4" in message
    assert [len(stand_in.inits()) for stand_in in replicas] == before  # no replica was asked to join
    assert sync(gateway).json()["version"] == 2  # the group that formed before is still in use

    client = ServerClient(
        gateway, transfer=NCCLTrainerInitInfo(master_address="127.0.0.1", master_port=1, world_size=2, rank=0)
    )
    with pytest.raises(ServerError, match=r"world_size is 2, but .* group of 4: trainer rank 0, replica-0 rank 1"):
        client.update_weights(torch.nn.Linear(2, 2))


def test_a_trainer_the_replicas_cannot_reach_fails_within_the_deadline_by_name(gateway, replicas):
    start = time.monotonic()
    answer, _ = open_group(gateway, world_size=4, join=False)  # nobody listens at the trainer's address
    elapsed = time.monotonic() - start
    assert answer.status_code == 502 and elapsed < SYNC_TIMEOUT
    message = answer.json()["error"]["message"]
    assert "replica-0" in message and "replica-1" in message and "no answer to /init_weight_transfer_engine" in message
    assert "Expected layout: trainer rank 0, replica-0 rank 1 (1 worker), replica-1 ranks 2-3" in message
    status = weights(gateway)
    assert set(status["quarantined"]) == {"replica-0", "replica-1"}
    assert "no weight-transfer group has formed" in status["group"]["stale"]
    assert sync(gateway).status_code == 409  # no sync into a group that did not form
    assert httpx.get(f"{gateway}/health", timeout=10).status_code == 503  # quarantined replicas are reported
    answer, gathered = open_group(gateway, world_size=4)  # a reachable trainer: a fresh group, both back
    assert answer.status_code == 200 and gathered == [0, 1, 2, 3]
    assert sync(gateway).status_code == 200
    assert weights(gateway)["quarantined"] == {}


def test_a_quarantined_replica_rejoins_in_a_fresh_group(gateway, replicas):
    version = weights(gateway)["version"]
    httpx.post(f"{replicas[1].url}/standin/fail", json={"path": "/update_weights"}, timeout=10)
    failed = sync(gateway)
    assert failed.status_code == 502 and "replica-1" in failed.json()["error"]["message"]
    status = weights(gateway)
    assert status["version"] == version + 1 and list(status["quarantined"]) == ["replica-1"]  # replica-0 serves it
    assert status["group"]["stale"].startswith("replica-1 is quarantined")
    refused = httpx.post(f"{gateway}/weights/start", json={}, timeout=10)
    assert refused.status_code == 409 and "stale: replica-1 is quarantined" in refused.json()["error"]["message"]
    answer, gathered = open_group(gateway, world_size=4)
    assert answer.status_code == 200 and gathered == [0, 1, 2, 3]
    assert [stand_in.inits()[-1]["rank_offset"] for stand_in in replicas] == [1, 2]
    assert sync(gateway).status_code == 200
    status = weights(gateway)
    assert status["quarantined"] == {} and status["group"]["stale"] == "" and status["version"] == version + 2


def test_a_replica_that_goes_down_leaves_the_group_and_rejoins_when_back(gateway, replicas):
    replicas[0].stop()
    try:
        stale = wait_for(lambda: weights(gateway)["group"]["stale"], what="the group going stale")
        assert stale.startswith("replica-0 is down")
        layout = httpx.get(f"{gateway}/weights/layout", timeout=10).json()
        assert layout["world_size"] == 3 and [r["rank_offset"] for r in layout["replicas"]] == [1]
        answer, gathered = open_group(gateway, world_size=3)
        assert answer.status_code == 200 and gathered == [0, 1, 2]
        assert replicas[1].inits()[-1]["rank_offset"] == 1  # replica-1 moved up to the first offset
        assert sync(gateway).json()["replicas"] == ["replica-1"]
    finally:
        replicas[0].start()  # same port: the gateway sees replica-0 come back
    stale = wait_for(lambda: weights(gateway)["group"]["stale"], what="the returning replica to be noticed")
    assert stale == "replica-0 is up but not in the group"
    answer, gathered = open_group(gateway, world_size=4)
    assert answer.status_code == 200 and gathered == [0, 1, 2, 3]
    assert sync(gateway).json()["replicas"] == ["replica-0", "replica-1"]


def test_client_arguments_and_a_trainer_without_cuda(gateway):
    with pytest.raises(ValueError, match="transfer must be one of"):
        ServerClient(gateway, transfer="tcp")
    with pytest.raises(ValueError, match="go with transfer='nccl'"):
        ServerClient(gateway, transfer="shm", master_port=29600)
    with ServerClient(gateway, transfer="nccl", master_address="127.0.0.1") as client:
        assert client.weight_layout()["world_size"] == 4
        with pytest.raises(ServerError, match="needs a CUDA device on the trainer"):
            client.update_weights(torch.nn.Linear(2, 2))
    with ServerClient(gateway) as client:  # no transfer given: the replicas' backend, which the gateway reports
        assert client.weight_status()["backend"] == "nccl"
        with pytest.raises(ServerError, match="needs a CUDA device on the trainer"):
            client.update_weights(torch.nn.Linear(2, 2))
        assert client.transfer == "nccl"
