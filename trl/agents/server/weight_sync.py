"""Weight updates fanned out to every replica: one version everywhere, or the replica is taken out of service.

The trainer drives vLLM's own weight-transfer phases through the gateway (`ServerClient` implements vLLM's
`VLLMWeightSyncClient` protocol against these routes), so any vLLM backend works unchanged: NCCL on GPUs, this
project's `trl_agents_shm` on the CPU build.

A sync, step by step:

1. `start`: new turns wait at the gateway, turns in flight finish on the old weights (so every recorded turn has one
   policy version), every replica pauses with its prefix cache cleared (no reuse of old-version KV), then runs
   `start_weight_update`.
2. `update` (once per chunk): `update_weights` on every replica still in the sync.
3. `finish`: `finish_weight_update` everywhere, the policy version goes up, waiting turns go ahead, replicas resume.

Each call has a deadline, and the whole sync has one (`SyncConfig.total_timeout`): a trainer that dies mid-sync
cannot leave the gateway paused. A replica that fails or misses a deadline in any phase is *quarantined*: it stops
receiving sessions (its own sessions get a 503 naming it) until a later sync completes on it, because after
`start_weight_update` its model holds a mix of old and new tensors. The trainer gets an error naming it; the other
replicas finish the sync and serve the new version. An aborted sync quarantines every replica it started on.

Group backends (vLLM's NCCL, and any backend whose init carries `rank_offset` and `world_size`) put the trainer's
sender and every inference worker of every replica in one group. vLLM's trainer engine sends one init body with
`rank_offset=1`; the gateway rewrites it per replica (`GroupLayout`): replica i gets 1 + the workers (TP x PP, from its
`/get_world_size`) of the replicas before it, and the trainer is told the layout first (`GET /weights/layout`), so its
`world_size` is checked before any rendezvous and nobody does rank arithmetic. Why rewrite rather than start the
replicas as vLLM data-parallel ranks (`--data-parallel-rank i`, where vLLM computes the offsets itself): replicas
attached from other nodes (`--replica`) are independent servers started by hand, possibly with different TP sizes, and
a replica that restarts must not need the others to restart with it. An NCCL group cannot gain or lose a member, so
when a member goes down or is quarantined, or a replica outside the group is healthy, the group is *stale*: syncs are
refused (409) until the trainer opens a fresh group over the replicas healthy then (`ServerClient` does it at its next
sync), which is how a quarantined replica that comes back rejoins.

Adapter-only LoRA (`load_lora`) loads a saved adapter on every replica with vLLM's LoRA API under one name, which the
gateway then substitutes for the base model in recorded turns.

Not here: the routes (`routes/weights.py`), the transport (`weights/shm.py` or vLLM's engines).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .http1 import Http1Client
from .routing import ReplicaHandle, Router
from .upstream import GatewayError, ReplicaUnreachable, UpstreamError, get_json, post_json


logger = logging.getLogger("trl.agents.weight_sync")


class Policy(NamedTuple):
    """What a turn samples with: the policy version and, after an adapter-only sync, the LoRA name to request."""

    version: int
    lora_name: str | None = None


class SyncError(GatewayError):
    """A weight-sync call failed."""


@dataclass
class GroupLayout:
    """Ranks of one weight-transfer group: the trainer's ranks first, then each replica's workers in router order."""

    trainer_ranks: int
    members: list[tuple[str, int]]  # (replica name, workers), in rank order

    @property
    def world_size(self) -> int:
        return self.trainer_ranks + sum(workers for _, workers in self.members)

    def offsets(self) -> dict[str, int]:
        """The `rank_offset` of each replica: its first worker's rank in the group."""
        offsets, rank = {}, self.trainer_ranks
        for name, workers in self.members:
            offsets[name], rank = rank, rank + workers
        return offsets

    def describe(self) -> str:
        offsets = self.offsets()
        trainer = "rank 0" if self.trainer_ranks == 1 else f"ranks 0-{self.trainer_ranks - 1}"
        parts = [f"trainer {trainer}"] + [
            f"{name} rank{'s' if n > 1 else ''} {offsets[name]}{f'-{offsets[name] + n - 1}' if n > 1 else ''}"
            f" ({n} worker{'s' if n > 1 else ''})"
            for name, n in self.members
        ]
        return f"{', '.join(parts)}; world_size {self.world_size}"

    def to_dict(self) -> dict[str, Any]:
        offsets = self.offsets()
        return {
            "world_size": self.world_size,
            "trainer_ranks": self.trainer_ranks,
            "replicas": [{"name": n, "workers": w, "rank_offset": offsets[n]} for n, w in self.members],
            "description": self.describe(),
        }


GROUP_INIT_FAILED = "weight-transfer group init failed"  # how a failed rendezvous quarantines a replica


def is_group_init(init_info: Any) -> bool:
    """True for the init of a group backend (vLLM's NCCL and sparse NCCL): one rank per worker, offsets to assign."""
    return isinstance(init_info, dict) and "rank_offset" in init_info and "world_size" in init_info


@dataclass
class SyncConfig:
    """Deadlines of a weight sync, in seconds."""

    total_timeout: float = 120.0
    drain_timeout: float = 60.0  # turns in flight must finish within this
    call_timeout: float = 60.0  # any single call to a replica

    @classmethod
    def from_total(cls, total: float) -> SyncConfig:
        """A config whose whole sync takes at most `total` seconds; draining and each replica call get half."""
        return cls(total_timeout=total, drain_timeout=total / 2, call_timeout=total / 2)


@dataclass
class _Sync:
    started: float
    replicas: list[ReplicaHandle]
    failed: dict[str, str] = field(default_factory=dict)
    touches_weights: bool = False  # after start_weight_update a replica's model may hold a mix of versions
    watchdog: asyncio.Task | None = None

    def alive(self) -> list[ReplicaHandle]:
        return [r for r in self.replicas if r.name not in self.failed]


class WeightSync:
    """Policy version, the gate in front of new turns, and the fan-out of weight updates."""

    def __init__(self, router: Router, config: SyncConfig | None = None, backend: str | None = None):
        self.router = router
        self.config = config or SyncConfig()
        self.backend = backend  # the replicas' weight-transfer backend, when the launcher knows it
        self.version = 0
        self.lora_name: str | None = None
        self.client: Http1Client | None = None
        self._ready = asyncio.Event()
        self._ready.set()
        self._active_turns = 0
        self._idle = asyncio.Condition()
        self._lock = asyncio.Lock()
        self._sync: _Sync | None = None
        self._init_info: dict | list | None = (
            None  # the trainer's last transfer-engine init, for replicas that missed it
        )
        self._initialized: set[str] = set()
        self._init_failed: dict[str, str] = {}
        self.group: GroupLayout | None = None  # the group the trainer's last group init formed
        self._group_mode = False  # the last init was a group init (then `group` is None until one forms)
        self._group_broken = ""  # why the group cannot take another sync (a member failed a sync, or one aborted)
        self.last_sync_seconds = 0.0
        self.syncs = 0
        self.failures = 0

    # -- turns -------------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self):
        """Admit one turn: wait while a sync runs, then yield the `Policy` the turn is sampled with."""
        await self._ready.wait()
        self._active_turns += 1
        try:
            yield Policy(self.version, self.lora_name)
        finally:
            self._active_turns -= 1
            if self._active_turns == 0:
                async with self._idle:
                    self._idle.notify_all()

    @property
    def syncing(self) -> bool:
        return self._sync is not None

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "syncing": self.syncing,
            "lora_name": self.lora_name,
            "quarantined": {r.name: r.quarantined for r in self.router.replicas if r.quarantined},
            "syncs": self.syncs,
            "failures": self.failures,
            "last_sync_seconds": self.last_sync_seconds,
            "timeout": self.config.total_timeout,
            "backend": self.backend,
            "group": None if not self._group_mode else {
                **(self.group.to_dict() if self.group else {}), "stale": self.group_stale()
            },
        }  # fmt: skip

    def group_stale(self) -> str:
        """Why the current weight-transfer group can no longer take a sync ("" when it can)."""
        if self.group is None:
            return "no weight-transfer group has formed: call init" if self._group_mode else ""
        if self._group_broken:
            return self._group_broken
        members = {name for name, _ in self.group.members}
        for replica in self.router.replicas:
            if replica.name in members and not replica.healthy:
                return f"{replica.name} is down ({replica.reason})"
            if replica.name not in members and replica.healthy:
                return f"{replica.name} is up but not in the group"
        return ""

    async def layout(self, trainer_ranks: int = 1) -> GroupLayout:
        """The group a new init would form: every healthy replica, with its workers from `/get_world_size`."""
        replicas = [r for r in self.router.replicas if r.healthy]

        async def workers(replica: ReplicaHandle) -> int | str:
            try:
                answer = await get_json(self.client, replica, "/get_world_size", self.config.call_timeout)
                return int(answer["world_size"])
            except (UpstreamError, ReplicaUnreachable, KeyError, TypeError, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"

        answers = await asyncio.gather(*(workers(r) for r in replicas))
        failed = {r.name: a for r, a in zip(replicas, answers, strict=True) if isinstance(a, str)}
        members = [(r.name, a) for r, a in zip(replicas, answers, strict=True) if not isinstance(a, str)]
        if not members:
            raise SyncError(503, "no replica answered /get_world_size: " + (_describe(failed) or "none is healthy"))
        if failed:
            logger.warning("left out of the weight-transfer group: %s", _describe(failed))
        return GroupLayout(trainer_ranks, members)

    # -- phases ------------------------------------------------------------------------------------------------

    async def init(self, init_info: dict | list) -> dict[str, Any]:
        """`init_weight_transfer_engine` on every reachable replica (a list gives each replica its own entry).

        A replica that fails is quarantined and left out of the next sync (which then names it); the sync after
        that initialises it again with the same `init_info`, so it can come back. Fails only if every replica
        fails. A group init (`is_group_init`) goes to `_init_group` instead."""
        if is_group_init(init_info):
            return await self._init_group(init_info)
        self._group_mode, self.group = False, None
        replicas = [r for r in self.router.replicas if r.healthy]
        self._init_info = init_info
        failed = await self._init_on(replicas)
        if len(failed) == len(replicas):
            raise SyncError(502, "init_weight_transfer_engine failed on " + _describe(failed))
        return {"replicas": [r.name for r in replicas if r.name not in failed], "failed": failed}

    async def _init_group(self, init_info: dict) -> dict[str, Any]:
        """Give each replica of the layout its own `rank_offset` in one group with the trainer, and wait until every
        worker has joined. Any failure fails the whole init (the group cannot form without every rank): the replicas
        that failed or missed the deadline are quarantined and named, with the layout they were asked to join."""
        if self._sync is not None:
            raise SyncError(409, "a weight sync is running: a new weight-transfer group can be opened after it")
        layout = await self.layout(trainer_ranks=int(init_info["rank_offset"]))
        if int(init_info["world_size"]) != layout.world_size:
            raise SyncError(
                400,
                f"init_info.world_size is {init_info['world_size']} but the replicas make a group of "
                f"{layout.world_size}: {layout.describe()} (ask GET /weights/layout before opening the group)",
            )
        self._group_mode, self.group, self._init_info = True, None, None  # the old group is given up from here
        offsets = layout.offsets()
        replicas = [self.router.by_name(name) for name, _ in layout.members]
        bodies = [{"init_info": {**init_info, "rank_offset": offsets[r.name]}} for r in replicas]
        failed = await self._fan_out(replicas, "/init_weight_transfer_engine", bodies, self.config.call_timeout)
        for name, reason in failed.items():
            self.router.by_name(name).quarantined = f"{GROUP_INIT_FAILED}: {reason}"
        if failed:
            raise SyncError(
                502,
                f"the weight-transfer group did not form: {_describe(failed)}. Expected layout: {layout.describe()}; "
                f"every replica must reach the trainer at {init_info.get('master_address')}:"
                f"{init_info.get('master_port')} within {self.config.call_timeout:.0f} s",
            )
        self.group, self._group_broken = layout, ""
        for replica in replicas:
            if replica.quarantined.startswith(GROUP_INIT_FAILED):
                replica.quarantined = ""  # only the rendezvous failed, its weights were never touched: it serves again
        return {"replicas": [r.name for r in replicas], "failed": {}, "layout": layout.to_dict()}

    async def _init_on(self, replicas: list[ReplicaHandle]) -> dict[str, str]:
        bodies = self._bodies(replicas, {"init_info": self._init_info}, "init_info")
        failed = await self._fan_out(replicas, "/init_weight_transfer_engine", bodies, self.config.call_timeout)
        for replica in replicas:
            if replica.name in failed:
                self._initialized.discard(replica.name)
                self._init_failed[replica.name] = f"/init_weight_transfer_engine: {failed[replica.name]}"
                replica.quarantined = f"weight sync failed in {self._init_failed[replica.name]}"
            else:
                self._initialized.add(replica.name)
        return failed

    async def _leave_out_uninitialised(self, sync: _Sync) -> None:
        """Before a full-weight sync: replicas whose transfer-engine init just failed sit this sync out (named in its
        result); replicas that missed an earlier init (down at the time) are initialised now. (Group backends have no
        per-replica init: `start` refuses a stale group instead.)"""
        if self._init_info is None:
            return
        retry = [r for r in sync.replicas if r.name not in self._initialized and r.name not in self._init_failed]
        if retry:
            await self._init_on(retry)
        sync.failed.update(self._init_failed)  # failed at `init` or just now: out of this sync, retried at the next
        self._init_failed = {}
        if not sync.alive():
            raise SyncError(502, f"weight sync failed on every replica: {_describe(sync.failed)}")

    async def start(self, start_update: bool = True) -> dict[str, Any]:
        """Hold new turns, drain those in flight, pause every replica, then (unless `start_update` is false)
        `start_weight_update` on each."""
        async with self._lock:
            if self._sync is not None:
                raise SyncError(409, "a weight sync is already running: finish or abort it first")
            replicas = [r for r in self.router.replicas if r.healthy]
            if not replicas:
                raise SyncError(503, "no reachable replica to update")
            if start_update and self._group_mode and (stale := self.group_stale()):
                raise SyncError(
                    409, f"the weight-transfer group is stale: {stale}. Open a new group over the replicas up now "
                    "(GET /weights/layout, then init; ServerClient does this by itself at its next sync)",
                )  # fmt: skip
            sync = self._sync = _Sync(time.monotonic(), replicas)
            self._ready.clear()
            sync.watchdog = asyncio.create_task(self._watchdog(sync))
        try:
            if start_update:
                await self._leave_out_uninitialised(sync)
            await self._drain()
            await self._phase(sync, "/pause?mode=wait&clear_cache=true", {})
            if start_update:
                sync.touches_weights = True
                await self._phase(sync, "/start_weight_update", {})
        except BaseException:
            await self.abort("start failed")
            raise
        return {"version": self.version + 1, "replicas": [r.name for r in sync.alive()], "failed": sync.failed}

    async def update(self, update_info: dict | list) -> dict[str, Any]:
        sync = self._require_sync()
        await self._phase(sync, "/update_weights", {"update_info": update_info}, per_replica="update_info")
        return {"replicas": [r.name for r in sync.alive()], "failed": sync.failed}

    async def finish(self) -> dict[str, Any]:
        sync = self._require_sync()
        new_version = self.version + 1
        await self._phase(sync, "/finish_weight_update", {"weight_version": str(new_version)})
        self.lora_name = None  # full weights replace the policy: a loaded adapter no longer describes it
        return await self._complete(sync, new_version)

    async def load_lora(self, lora_path: str, lora_name: str) -> dict[str, Any]:
        """Adapter-only update: load the adapter saved at `lora_path` on every replica under `lora_name`."""
        await self.start(start_update=False)
        sync = self._require_sync()
        body = {"lora_name": lora_name, "lora_path": lora_path, "load_inplace": True}
        await self._phase(sync, "/v1/load_lora_adapter", body)
        self.lora_name = lora_name
        return await self._complete(sync, self.version + 1)

    async def abort(self, reason: str) -> dict[str, Any]:
        """End the running sync without a new version; replicas it reached are quarantined."""
        sync = self._sync
        if sync is None:
            return {"aborted": False}
        quarantined = sync.replicas if sync.touches_weights else []
        for replica in quarantined:
            replica.quarantined = replica.quarantined or f"weight sync aborted ({reason}): weights may be partial"
        if self.group is not None and sync.touches_weights:
            self._group_broken = f"a sync was aborted ({reason}): transfers may be left half-done in the group"
        self.failures += 1
        await self._release(sync)
        logger.error("weight sync aborted: %s", reason)
        return {"aborted": True, "reason": reason, "quarantined": [r.name for r in quarantined]}

    # -- helpers -----------------------------------------------------------------------------------------------

    def _require_sync(self) -> _Sync:
        if self._sync is None:
            raise SyncError(409, "no weight sync is running: call start first (or it was aborted after its deadline)")
        return self._sync

    async def _complete(self, sync: _Sync, new_version: int) -> dict[str, Any]:
        for replica in sync.alive():
            replica.quarantined = ""
        self.version = new_version
        self.last_sync_seconds = time.monotonic() - sync.started
        self.syncs += 1
        failed = dict(sync.failed)
        await self._release(sync)
        result = {"version": new_version, "replicas": [r.name for r in sync.alive()], "failed": failed}
        if failed:
            self.failures += 1
            raise SyncError(502, f"version {new_version} is served by {result['replicas']}; " + _describe(failed))
        return result

    async def _release(self, sync: _Sync) -> None:
        if sync.watchdog is not None and sync.watchdog is not asyncio.current_task():
            sync.watchdog.cancel()
        # a replica that failed stays paused (and quarantined) until a later sync: it may not answer at all
        reachable = [r for r in sync.alive() if r.healthy]
        await self._fan_out(reachable, "/resume", [{}] * len(reachable), self.config.call_timeout)
        self._sync = None
        self._ready.set()

    async def _drain(self) -> None:
        async def idle() -> None:
            async with self._idle:
                await self._idle.wait_for(lambda: self._active_turns == 0)

        try:
            await asyncio.wait_for(idle(), min(self.config.drain_timeout, self._remaining()))
        except asyncio.TimeoutError as exc:
            raise SyncError(
                504, f"{self._active_turns} turns still running after {self.config.drain_timeout:.0f} s"
            ) from exc

    def _remaining(self) -> float:
        sync = self._sync
        if sync is None:
            return self.config.total_timeout
        return max(0.1, self.config.total_timeout - (time.monotonic() - sync.started))

    def _bodies(self, replicas: list[ReplicaHandle], body: dict, per_replica: str | None) -> list[dict]:
        """`body` for each of `replicas`; if `body[per_replica]` is a list, it holds one entry per replica of the
        router, in order, and each replica gets its own."""
        value = body.get(per_replica) if per_replica else None
        if not isinstance(value, list):
            return [body] * len(replicas)
        if len(value) != len(self.router.replicas):
            raise SyncError(400, f"`{per_replica}` has {len(value)} entries for {len(self.router.replicas)} replicas")
        return [{**body, per_replica: value[self.router.replicas.index(r)]} for r in replicas]

    async def _phase(self, sync: _Sync, path: str, body: dict, per_replica: str | None = None) -> None:
        """Run one call on every replica still in the sync; failures quarantine the replica. When every replica
        fails, the sync is aborted and `SyncError` raised."""
        replicas = sync.alive()
        bodies = self._bodies(replicas, body, per_replica)
        failed = await self._fan_out(replicas, path, bodies, min(self.config.call_timeout, self._remaining()))
        for name, reason in failed.items():
            sync.failed[name] = f"{path.split('?')[0]}: {reason}"
            self.router.by_name(name).quarantined = f"weight sync failed in {sync.failed[name]}"
            if self.group is not None:  # its end of the group is in an unknown state
                self._group_broken = self._group_broken or f"{name} is quarantined ({sync.failed[name]})"
        if not sync.alive():
            await self.abort(f"every replica failed {path}")
            raise SyncError(502, f"weight sync failed on every replica: {_describe(sync.failed)}")

    async def _fan_out(self, replicas: list[ReplicaHandle], path: str, bodies: list, timeout: float) -> dict[str, str]:
        async def call(replica: ReplicaHandle, body: dict) -> str | None:
            try:
                await post_json(self.client, replica, path, body, timeout)
            except (UpstreamError, ReplicaUnreachable) as exc:
                return str(exc)
            return None

        results = await asyncio.gather(*(call(r, b) for r, b in zip(replicas, bodies, strict=True)))
        return {r.name: e for r, e in zip(replicas, results, strict=True) if e is not None}

    async def _watchdog(self, sync: _Sync) -> None:
        await asyncio.sleep(self.config.total_timeout)
        if self._sync is sync:
            await self.abort(f"not finished within {self.config.total_timeout:.0f} s")


def _describe(failed: dict[str, str]) -> str:
    return "; ".join(f"{name} failed: {reason}" for name, reason in failed.items())
