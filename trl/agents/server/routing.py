"""Which replica serves a request: sticky least-loaded routing over healthy replicas.

A new session goes to the healthy replica with the fewest live sessions (ties: fewest requests in flight) and stays
there, so its prefix cache is reused. Unrecorded requests go to the healthy replica with the fewest requests in
flight. A replica is marked down when a connection to it is refused or fails, or after `TIMEOUTS_TO_DOWN`
health checks in a row time out (a saturated CPU replica answers slowly but is alive), and up again when its health
check passes; sessions pinned to a down replica get a 503 naming it, while the other replicas keep serving.

Not here: process management (`process.py`) or HTTP forwarding (`gateway.py`).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

from .http1 import Http1Client


TIMEOUTS_TO_DOWN = 3


class NoReplicaAvailable(RuntimeError):
    """Every replica is down."""


@dataclass
class ReplicaHandle:
    """The gateway's view of one replica."""

    name: str
    url: str
    healthy: bool = True
    reason: str = ""
    inflight: int = 0
    sessions: int = 0
    slow_checks: int = 0
    quarantined: str = ""  # why it must not serve until a weight sync completes on it (see weight_sync.py)

    @property
    def serving(self) -> bool:
        return self.healthy and not self.quarantined

    @property
    def down_reason(self) -> str:
        """Why it is not serving ("" when it is)."""
        return "" if self.serving else (self.reason or self.quarantined)

    def mark_down(self, reason: str) -> None:
        self.healthy, self.reason = False, reason

    def mark_up(self) -> None:
        self.healthy, self.reason, self.slow_checks = True, "", 0


class Router:
    """Sticky least-loaded assignment of sessions to replicas."""

    def __init__(self, replicas: list[ReplicaHandle]):
        if not replicas:
            raise ValueError("Router needs at least one replica")
        self.replicas = replicas
        self._by_name = {r.name: r for r in replicas}

    def by_name(self, name: str) -> ReplicaHandle:
        return self._by_name[name]

    def _healthy(self) -> list[ReplicaHandle]:
        healthy = [r for r in self.replicas if r.serving]
        if not healthy:
            reasons = "; ".join(f"{r.name}: {r.down_reason}" for r in self.replicas)
            raise NoReplicaAvailable(f"no healthy replica ({reasons})")
        return healthy

    def assign_session(self) -> ReplicaHandle:
        """Pick the replica for a new session and count the session on it."""
        replica = min(self._healthy(), key=lambda r: (r.sessions, r.inflight))
        replica.sessions += 1
        return replica

    def adopt_session(self, session_id: str, name: str) -> str:
        """Count a session that was pinned to replica `name` before a restart; return the replica it is on now.

        A name this router does not know (the replicas were renamed or fewer were started) maps to a replica by a
        stable hash of the session id, so the same journal always lands the same way.
        """
        replica = self._by_name.get(name) or self.replicas[zlib.crc32(session_id.encode()) % len(self.replicas)]
        replica.sessions += 1
        return replica.name

    def release_session(self, name: str) -> None:
        replica = self._by_name.get(name)
        if replica is not None and replica.sessions > 0:
            replica.sessions -= 1

    def pick(self) -> ReplicaHandle:
        """Pick the replica for an unrecorded request."""
        return min(self._healthy(), key=lambda r: r.inflight)

    async def check_health(self, client: Http1Client, timeout: float = 5.0, extra: list[ReplicaHandle] = ()) -> None:
        """Poll every replica's (and every `extra` server's) `/health` once and update its state."""

        async def check(replica: ReplicaHandle) -> None:
            try:
                async with client.request("GET", f"{replica.url}/health", None, timeout) as r:
                    status = r.status
                    await r.read()
            except (TimeoutError, asyncio.TimeoutError):
                replica.slow_checks += 1
                if replica.slow_checks >= TIMEOUTS_TO_DOWN:
                    replica.mark_down(f"{replica.slow_checks} health checks in a row took over {timeout:.0f} s")
                return
            except OSError as exc:
                replica.mark_down(f"health check failed: {type(exc).__name__}: {exc}")
                return
            if status == 200:
                replica.mark_up()
            else:
                replica.mark_down(f"/health answered {status}")

        await asyncio.gather(*(check(r) for r in [*self.replicas, *extra]))
