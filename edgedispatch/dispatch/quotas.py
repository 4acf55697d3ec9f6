"""Per-tenant quotas (``[[tenants]]`` in config): a multi-tenant appliance
must not let one customer take what the others need.

Each quota refuses the call that would pass it with ``resource_exhausted``
naming the quota; nothing already running is touched.  The dispatch rate
is a token bucket (bursts up to one second's worth), on the ``now`` the
caller passes.  0 means no limit, for each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edgedispatch.config import TenantConfig
from edgedispatch.errors import ResourceExhausted


class QuotaDesk:
    """:param tenants: the tenants' configs, whose ``max_*`` fields are
    their quotas; a tenant with none set costs a dispatch nothing."""

    def __init__(self, tenants: Iterable[TenantConfig] = ()) -> None:
        self.quotas = {
            t.name: t
            for t in tenants
            if t.max_jobs or t.max_queued or t.max_rooms or t.max_dispatch_rate
        }
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def check_dispatch(
        self, tenant: str, jobs: Callable[[str], tuple[int, int]], now: float
    ) -> None:
        """A new dispatch for ``tenant``; ``jobs(tenant)`` counts its jobs
        not ended, and of those the queued ones (asked only of a tenant
        with quotas).  Raises if a quota would be passed; the rate's token
        is taken only when the call goes through."""
        quota = self.quotas.get(tenant)
        if quota is None:
            return
        live, queued = jobs(tenant)
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
