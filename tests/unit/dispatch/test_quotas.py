"""Per-tenant quotas on the domain, on a fake clock: each refuses what
would pass it with resource_exhausted naming it, and touches no other
tenant."""

from __future__ import annotations

import pytest

from edgedispatch.config import DispatchConfig, RoomConfig, TenantConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.quotas import QuotaDesk
from edgedispatch.dispatch.specs import AgentSpec, DispatchSpec, RoomSpec
from edgedispatch.errors import ResourceExhausted


def domain_with(**quota: float) -> Domain:
    domain = Domain(DispatchConfig(), RoomConfig())
    domain.rooms.quotas = QuotaDesk([TenantConfig("acme", **quota)])  # type: ignore[arg-type]
    return domain


def dispatch(domain: Domain, tenant: str, room: str, now: float = 0.0) -> None:
    domain.create_dispatch(tenant, DispatchSpec(room, AgentSpec("a")), now)
    domain.step(now)


def test_queued_jobs_are_capped_per_tenant() -> None:
    domain = domain_with(max_queued=3)
    for i in range(3):
        dispatch(domain, "acme", f"r{i}")  # no worker: they queue
    with pytest.raises(ResourceExhausted, match="max_queued = 3"):
        dispatch(domain, "acme", "r9")
    for i in range(10):
        dispatch(domain, "globex", f"r{i}")  # another tenant: not its quota
    assert len(domain.jobs.jobs) == 13


def test_jobs_not_ended_are_capped_per_tenant() -> None:
    domain = domain_with(max_jobs=2)
    dispatch(domain, "acme", "r1")
    dispatch(domain, "acme", "r2")
    with pytest.raises(ResourceExhausted, match="max_jobs = 2"):
        dispatch(domain, "acme", "r3")
    domain.delete_room("acme", "r1", now=1.0)  # one ends: room for another
    domain.step(1.0)
    dispatch(domain, "acme", "r3", now=1.0)


def test_rooms_are_capped_per_tenant_however_they_are_made() -> None:
    domain = domain_with(max_rooms=2)
    domain.create_room("acme", RoomSpec("r1"), 0.0)
    dispatch(domain, "acme", "r2")  # made by a dispatch
    with pytest.raises(ResourceExhausted, match="max_rooms = 2"):
        domain.create_room("acme", RoomSpec("r3"), 0.0)
    with pytest.raises(ResourceExhausted, match="max_rooms"):
        dispatch(domain, "acme", "r3")
    dispatch(domain, "acme", "r1")  # an open room takes more dispatches
    assert len(domain.rooms.rooms) == 2


def test_the_dispatch_rate_refills_with_time() -> None:
    domain = domain_with(max_dispatch_rate=5)
    for _ in range(5):  # a burst of one second's worth
        dispatch(domain, "acme", "r", now=0.0)
    with pytest.raises(ResourceExhausted, match="max_dispatch_rate = 5"):
        dispatch(domain, "acme", "r", now=0.0)
    dispatch(domain, "acme", "r", now=0.2)  # 0.2 s: one more token
    with pytest.raises(ResourceExhausted):
        dispatch(domain, "acme", "r", now=0.2)
