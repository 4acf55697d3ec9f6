"""Per-tenant quotas (``[[tenants]]`` in config): a multi-tenant appliance
must not let one customer take what the others need.

Each quota refuses the call that would pass it with ``resource_exhausted``
naming the quota; nothing already running is touched.  The dispatch rate
is a token bucket (bursts up to one second's worth), on the ``now`` the
caller passes.  0 means no limit, for each.
"""

from __future__ import annotations

import msgspec

from edgedispatch.errors import ResourceExhausted


class Quota(msgspec.Struct, frozen=True):
    max_jobs: int = 0  #: jobs not ended (queued, offered, running)
    max_queued: int = 0  #: jobs waiting for a worker
    max_rooms: int = 0  #: rooms open at once
    max_dispatch_rate: float = 0.0  #: CreateDispatch calls per second


class QuotaDesk:
    def __init__(self, quotas: dict[str, Quota] | None = None) -> None:
        self.quotas = quotas or {}
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def check_dispatch(self, tenant: str, live: int, queued: int, now: float) -> None:
        """A new dispatch for ``tenant``, which has ``live`` jobs not ended,
        ``queued`` of them waiting.  Raises if a quota would be passed; the
        rate's token is taken only when the call goes through."""
        quota = self.quotas.get(tenant)
        if quota is None:
            return
        if quota.max_jobs and live >= quota.max_jobs:
            raise _exhausted(tenant, "max_jobs", quota.max_jobs, "jobs not ended")
        if quota.max_queued and queued >= quota.max_queued:
            raise _exhausted(tenant, "max_queued", quota.max_queued, "jobs waiting")
        rate = quota.max_dispatch_rate
        if rate > 0:
            burst = max(1.0, rate)
            tokens, at = self._buckets.get(tenant, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < 1.0:
                raise _exhausted(tenant, "max_dispatch_rate", rate, "dispatches per second")
            self._buckets[tenant] = (tokens - 1.0, now)

    def check_room(self, tenant: str, rooms: int) -> None:
        """A new room for ``tenant``, which has ``rooms`` open."""
        quota = self.quotas.get(tenant)
        if quota is not None and quota.max_rooms and rooms >= quota.max_rooms:
            raise _exhausted(tenant, "max_rooms", quota.max_rooms, "rooms open")


def _exhausted(tenant: str, name: str, limit: float, what: str) -> ResourceExhausted:
    return ResourceExhausted(f"tenant {tenant!r} is at its quota {name} = {limit:g} ({what})")
