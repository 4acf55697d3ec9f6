"""``/debug/state``: the server's state as one JSON document, for the status
page (``status.html``, served at ``/status``) and for operators' scripts.

It is built when asked, from the domain's records and the parts the
server has (``metrics.Sources``): rooms and their participants, workers
with their load, slots and version, jobs and why each waits, local agents
and their instances, SIP calls, and the store.  ``tenant`` scopes it: an
operator (a key of the default tenant) sees every tenant; a tenant's key
sees its own rooms, workers, jobs and agents, and nothing of the others'
or of the server's store.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from edgedispatch._core.codes import JobState
from edgedispatch.obs.metrics import Sources

#: The page is the same for everyone (the data comes with the viewer's token).
PAGE = "status.html"


def page() -> bytes:
    return resources.files(__package__).joinpath(PAGE).read_bytes()


def snapshot(sources: Sources, tenant: str | None, wall_ns: int) -> dict[str, Any]:
    """The state, all of it (``tenant`` None) or one tenant's; ``wall_ns``:
    now, for ages."""
    domain = sources.domain

    def mine(t: str) -> bool:
        return tenant is None or t == tenant

    rooms = [
        {
            "tenant": room.tenant,
            "name": room.name,
            "participants": [
                {"identity": p.identity, "kind": p.kind, "published": p.published}
                for p in room.participants.values()
            ],
            "dispatches": len(room.dispatch_ids),
        }
        for (t, _), room in sorted(domain.rooms.rooms.items())
        if mine(t)
    ]
    workers = []
    for view in domain.core.workers():
        link = domain.workers.links.get(view.worker_id)
        if link is None or not mine(link.tenant):
            continue
        workers.append(
            {
                "id": view.worker_id,
                "tenant": link.tenant,
                "agent": view.key.agent_name,
                "status": view.status.name,
                "load": round(view.load, 3),
                "predicted_load": round(view.predicted, 3),
                "slots": view.slots,
                "used": view.used,
                "version": link.version,
                "peer": link.peer,
            }
        )
    jobs = [
        {
            "id": rec.id,
            "tenant": rec.key.tenant,
            "agent": rec.key.agent_name,
            "room": rec.room,
            "state": rec.state.name,
            "waiting_for": rec.wait.name if rec.state == JobState.QUEUED else "",
            "worker": rec.worker_id,
            "reason": rec.reason.name,
            "age_s": round(max(0, wall_ns - rec.created_ns) / 1e9, 3) if rec.created_ns else None,
        }
        for rec in domain.jobs.jobs.values()
        if mine(rec.key.tenant) and not rec.state.terminal
    ]
    state: dict[str, Any] = {
        "scope": "all tenants" if tenant is None else f"tenant {tenant!r}",
        "draining": domain.draining,
        "rooms": rooms,
        "workers": sorted(workers, key=lambda w: (w["tenant"], w["agent"], w["id"])),
        "jobs": jobs,
        "agents": sources.agent_details(tenant) if sources.agent_details is not None else [],
        "sip_calls": sources.sip_calls(tenant) if sources.sip_calls is not None else [],
    }
    if tenant is None and sources.store_info is not None:
        state["store"] = sources.store_info()
    return state
