"""The tenants' SIP trunks and dispatch rules: what ``livekit.SIP`` manages
and what inbound calls are matched against.

Each trunk and rule belongs to one tenant (the tenant of the key that made
it); a tenant sees, changes and matches only its own, and another tenant's
id is one that does not exist.  Each tenant is a LiveKit project of its
own: conflicts between its rules are refused as LiveKit refuses them.  The
one check across tenants is the called number: a number routes a call to
one tenant, so an inbound trunk may not claim a number another tenant's
trunk takes (refused without naming that trunk).

Every change is written through to the store's key-value namespaces (one
record per id, with its tenant), so they survive a restart; they are read
back once, when the directory is made.  Sans-IO: the store, ids and the
wall clock are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import models
from livekit.protocol import sip as pb

from edgedispatch.errors import InvalidArgument, NoCallRoute, NotFound
from edgedispatch.sip import records
from edgedispatch.sip.routing import (
    Call,
    check_rule_conflicts,
    check_trunk_conflicts,
    match_trunk,
    normalize_number,
    select_rule,
)

INBOUND = "sip.inbound_trunks"
OUTBOUND = "sip.outbound_trunks"
RULES = "sip.dispatch_rules"
LEGACY = "sip.legacy_trunks"  #: made by the deprecated CreateSIPTrunk
TRUNK_PREFIX = "ST_"
RULE_PREFIX = "SDR_"

M = TypeVar("M", bound=Message)
#: A trunk of either direction (the code both share).
T = TypeVar("T", pb.SIPInboundTrunkInfo, pb.SIPOutboundTrunkInfo)


class KeyValue(Protocol):
    """The store's key-value namespaces (``store.Store``)."""

    def load(self, namespace: str) -> dict[str, Any]: ...

    def put(self, namespace: str, key: str, value: Any) -> None: ...

    def delete(self, namespace: str, key: str) -> None: ...


class _Table:
    """One kind of record (``cls``), by id, each with its tenant; written
    through to ``namespace``."""

    def __init__(self, kv: KeyValue, namespace: str, cls: type[Message]) -> None:
        self._kv = kv
        self._namespace = namespace
        self.rows: dict[str, tuple[str, Any]] = {}
        for key, value in kv.load(namespace).items():
            msg = cls()
            json_format.ParseDict(value["info"], msg, ignore_unknown_fields=True)
            self.rows[key] = (value["tenant"], msg)

    def of(self, tenant: str) -> list[Any]:
        """The tenant's records, in id order."""
        return [msg for key, (t, msg) in sorted(self.rows.items()) if t == tenant]

    def get(self, tenant: str, key: str) -> Any | None:
        row = self.rows.get(key)
        return row[1] if row is not None and row[0] == tenant else None

    def put(self, tenant: str, key: str, msg: Message) -> None:
        self.rows[key] = (tenant, msg)
        info = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        self._kv.put(self._namespace, key, {"tenant": tenant, "info": info})

    def delete(self, key: str) -> None:
        del self.rows[key]
        self._kv.delete(self._namespace, key)


def _stamp(msg: Any, wall: float, created: bool) -> None:
    ns = int(wall * 1e9)
    if created:
        msg.created_at.FromNanoseconds(ns)
    msg.updated_at.FromNanoseconds(ns)


def _copy(msg: M) -> M:
    new = type(msg)()
    new.CopyFrom(msg)
    return new


def _trunk(trunks: list[T], trunk_id: str) -> T:
    """The trunk ``trunk_id`` of these (a tenant's, one direction)."""
    if not trunk_id:
        raise InvalidArgument("trunk ID is required")
    for trunk in trunks:
        if trunk.sip_trunk_id == trunk_id:
            return trunk
    raise NotFound(f"SIP trunk {trunk_id!r} not found")


def _page(items: list[M], page: models.Pagination, key: Callable[[M], str]) -> list[M]:
    """LiveKit's pagination: ids after ``after_id``, at most ``limit``."""
    if page.after_id:
        items = [x for x in items if key(x) > page.after_id]
    return items[: page.limit] if page.limit > 0 else items


class Directory:
    """:param new_id: makes an id with the given prefix (``dispatch.ids.new``)."""

    def __init__(self, kv: KeyValue, new_id: Callable[[str], str]) -> None:
        self._new_id = new_id
        self._inbound = _Table(kv, INBOUND, pb.SIPInboundTrunkInfo)
        self._outbound = _Table(kv, OUTBOUND, pb.SIPOutboundTrunkInfo)
        self._rules = _Table(kv, RULES, pb.SIPDispatchRuleInfo)
        self._legacy = _Table(kv, LEGACY, pb.SIPTrunkInfo)

    def _inbound_rows(self) -> list[tuple[str, pb.SIPInboundTrunkInfo]]:
        """Every tenant's inbound trunks (the legacy ones as LiveKit reads
        them as inbound), in id order: (tenant, trunk)."""
        return self._rows(self._inbound, _inbound_of_legacy, pb.SIPTrunkInfo.TRUNK_OUTBOUND)

    def _outbound_rows(self) -> list[tuple[str, pb.SIPOutboundTrunkInfo]]:
        return self._rows(self._outbound, _outbound_of_legacy, pb.SIPTrunkInfo.TRUNK_INBOUND)

    def _rows(
        self, table: _Table, of_legacy: Callable[[pb.SIPTrunkInfo], T], other_kind: int
    ) -> list[tuple[str, T]]:
        """One direction's trunks and the legacy trunks not of the other
        kind, read as that direction, in id order: (tenant, trunk)."""
        rows = [(key, t, msg) for key, (t, msg) in table.rows.items()]
        rows += [
            (key, t, of_legacy(msg))
            for key, (t, msg) in self._legacy.rows.items()
            if msg.kind != other_kind
        ]
        return [(t, msg) for _, t, msg in sorted(rows, key=lambda row: row[0])]

    def _not_legacy(self, tenant: str, trunk_id: str) -> None:
        if self._legacy.get(tenant, trunk_id) is not None:
            raise InvalidArgument(
                f"SIP trunk {trunk_id!r} was made by the deprecated CreateSIPTrunk and cannot be "
                "updated: delete it, and create an inbound or outbound trunk instead"
            )

    # Inbound trunks ---------------------------------------------------------

    def inbound_trunks(self, tenant: str) -> list[pb.SIPInboundTrunkInfo]:
        return [msg for t, msg in self._inbound_rows() if t == tenant]

    def inbound_trunk(self, tenant: str, trunk_id: str) -> pb.SIPInboundTrunkInfo:
        return _trunk(self.inbound_trunks(tenant), trunk_id)

    def _check_inbound_conflicts(self, tenant: str, trunk: pb.SIPInboundTrunkInfo) -> None:
        rows = self._inbound_rows()
        mine = [m for t, m in rows if t == tenant and m.sip_trunk_id != trunk.sip_trunk_id]
        check_trunk_conflicts([*mine, trunk])
        try:
            check_trunk_conflicts([*(m for t, m in rows if t != tenant), trunk])
        except InvalidArgument:
            raise InvalidArgument(
                f"a number of {sorted(trunk.numbers) or '(any)'} is already taken by another "
                "tenant's inbound trunk for the same callers"
            ) from None

    def create_inbound(
        self, tenant: str, trunk: pb.SIPInboundTrunkInfo, wall: float
    ) -> pb.SIPInboundTrunkInfo:
        return self._create_trunk(
            tenant, self._inbound, trunk, records.check_inbound, wall, self._check_inbound_conflicts
        )

    def update_inbound(
        self, tenant: str, req: pb.UpdateSIPInboundTrunkRequest, wall: float
    ) -> pb.SIPInboundTrunkInfo:
        return self._update_trunk(
            tenant, self._inbound, req, self.inbound_trunk, records.check_inbound,
            records.apply_inbound_update, wall, self._check_inbound_conflicts,
        )  # fmt: skip

    def list_inbound(
        self, tenant: str, req: pb.ListSIPInboundTrunkRequest
    ) -> list[pb.SIPInboundTrunkInfo]:
        wanted = set(req.trunk_ids)
        numbers = set(req.numbers) | {normalize_number(n) for n in req.numbers}
        items = [
            t
            for t in self.inbound_trunks(tenant)
            if (not wanted or t.sip_trunk_id in wanted)
            and (
                not numbers
                or not t.numbers
                or any(n in numbers or normalize_number(n) in numbers for n in t.numbers)
            )
        ]
        return _page(items, req.page, lambda t: t.sip_trunk_id)

    # Outbound trunks --------------------------------------------------------

    def outbound_trunks(self, tenant: str) -> list[pb.SIPOutboundTrunkInfo]:
        return [msg for t, msg in self._outbound_rows() if t == tenant]

    def outbound_trunk(self, tenant: str, trunk_id: str) -> pb.SIPOutboundTrunkInfo:
        return _trunk(self.outbound_trunks(tenant), trunk_id)

    def create_outbound(
        self, tenant: str, trunk: pb.SIPOutboundTrunkInfo, wall: float
    ) -> pb.SIPOutboundTrunkInfo:
        return self._create_trunk(tenant, self._outbound, trunk, records.check_outbound, wall)

    def update_outbound(
        self, tenant: str, req: pb.UpdateSIPOutboundTrunkRequest, wall: float
    ) -> pb.SIPOutboundTrunkInfo:
        return self._update_trunk(
            tenant, self._outbound, req, self.outbound_trunk, records.check_outbound,
            records.apply_outbound_update, wall,
        )  # fmt: skip

    # Either direction -------------------------------------------------------

    def _create_trunk(
        self,
        tenant: str,
        table: _Table,
        trunk: T,
        check: Callable[[T], None],
        wall: float,
        conflicts: Callable[[str, T], None] | None = None,
    ) -> T:
        if trunk.sip_trunk_id:
            raise InvalidArgument("trunk id must not be set")
        check(trunk)
        trunk = _copy(trunk)
        if conflicts is not None:
            conflicts(tenant, trunk)
        trunk.sip_trunk_id = self._new_id(TRUNK_PREFIX)
        _stamp(trunk, wall, created=True)
        table.put(tenant, trunk.sip_trunk_id, trunk)
        return trunk

    def _update_trunk(
        self,
        tenant: str,
        table: _Table,
        req: Any,
        find: Callable[[str, str], T],
        check: Callable[[T], None],
        apply: Callable[[T, Any], T],
        wall: float,
        conflicts: Callable[[str, T], None] | None = None,
    ) -> T:
        """UpdateSIPInboundTrunk/UpdateSIPOutboundTrunk: a whole ``replace``
        or field ``update``s, of the tenant's trunk ``req.sip_trunk_id``."""
        action = _action(req, req.sip_trunk_id, "trunk")
        if action == "replace" and req.replace.sip_trunk_id not in ("", req.sip_trunk_id):
            raise InvalidArgument(
                "trunk id in the info must be empty or match the id in the update"
            )
        old = find(tenant, req.sip_trunk_id)
        self._not_legacy(tenant, req.sip_trunk_id)
        new: T
        if action == "replace":
            new = _copy(req.replace)
            check(new)
            new.created_at.CopyFrom(old.created_at)
        else:
            new = apply(old, req.update)
        new.sip_trunk_id = old.sip_trunk_id
        if conflicts is not None:
            conflicts(tenant, new)
        _stamp(new, wall, created=False)
        table.put(tenant, new.sip_trunk_id, new)
        return new

    def list_outbound(
        self, tenant: str, req: pb.ListSIPOutboundTrunkRequest
    ) -> list[pb.SIPOutboundTrunkInfo]:
        wanted = set(req.trunk_ids)
        numbers = set(req.numbers)  # compared raw, as LiveKit does for outbound
        items = [
            t
            for t in self.outbound_trunks(tenant)
            if (not wanted or t.sip_trunk_id in wanted)
            and (not numbers or not t.numbers or any(n in numbers for n in t.numbers))
        ]
        return _page(items, req.page, lambda t: t.sip_trunk_id)

    # The deprecated trunks of both directions (the Node SDK's createSipTrunk).

    def create_legacy(
        self, tenant: str, req: pb.CreateSIPTrunkRequest, wall: float
    ) -> pb.SIPTrunkInfo:
        """A trunk of both directions; its inbound side is matched, and
        listed, as an inbound trunk, its outbound side as an outbound one."""
        if req.inbound_numbers_regex:
            raise InvalidArgument(
                "Trunks with InboundNumbersRegex are deprecated. Use InboundNumbers instead."
            )
        trunk = pb.SIPTrunkInfo(
            inbound_addresses=req.inbound_addresses,
            outbound_address=req.outbound_address,
            outbound_number=req.outbound_number,
            inbound_numbers=req.inbound_numbers,
            inbound_username=req.inbound_username,
            inbound_password=req.inbound_password,
            outbound_username=req.outbound_username,
            outbound_password=req.outbound_password,
            name=req.name,
            metadata=req.metadata,
        )
        self._check_inbound_conflicts(tenant, _inbound_of_legacy(trunk))
        trunk.sip_trunk_id = self._new_id(TRUNK_PREFIX)
        self._legacy.put(tenant, trunk.sip_trunk_id, trunk)
        return trunk

    def list_legacy(self, tenant: str, req: pb.ListSIPTrunkRequest) -> list[pb.SIPTrunkInfo]:
        """Every trunk as the deprecated ``SIPTrunkInfo``, in id order."""
        items = list(self._legacy.of(tenant))
        items += [_legacy_inbound(t) for t in self._inbound.of(tenant)]
        items += [_legacy_outbound(t) for t in self._outbound.of(tenant)]
        items.sort(key=lambda t: t.sip_trunk_id)
        return _page(items, req.page, lambda t: t.sip_trunk_id)

    def delete_trunk(self, tenant: str, trunk_id: str) -> pb.SIPTrunkInfo:
        """Deletes an inbound or outbound trunk.  An id that names none of
        the tenant's trunks is answered as LiveKit answers it: with the id,
        and nothing deleted (so a retried delete succeeds)."""
        if not trunk_id:
            raise InvalidArgument("trunk ID is required")
        for table in (self._inbound, self._outbound, self._legacy):
            if table.get(tenant, trunk_id) is not None:
                table.delete(trunk_id)
        return pb.SIPTrunkInfo(sip_trunk_id=trunk_id)

    # Dispatch rules ------------------------------------------------------------

    def rules(self, tenant: str) -> list[pb.SIPDispatchRuleInfo]:
        return self._rules.of(tenant)

    def rule(self, tenant: str, rule_id: str) -> pb.SIPDispatchRuleInfo:
        if not rule_id:
            raise InvalidArgument("dispatch rule ID is required")
        found = self._rules.get(tenant, rule_id)
        if found is None:
            raise NotFound(f"SIP dispatch rule {rule_id!r} not found")
        return found  # type: ignore[no-any-return]

    def create_rule(
        self, tenant: str, req: pb.CreateSIPDispatchRuleRequest, wall: float
    ) -> pb.SIPDispatchRuleInfo:
        rule = records.legacy_rule(req)
        records.check_rule(rule)
        check_rule_conflicts([*self.rules(tenant), rule])
        rule.sip_dispatch_rule_id = self._new_id(RULE_PREFIX)
        _stamp(rule, wall, created=True)
        self._rules.put(tenant, rule.sip_dispatch_rule_id, rule)
        return rule

    def update_rule(
        self, tenant: str, req: pb.UpdateSIPDispatchRuleRequest, wall: float
    ) -> pb.SIPDispatchRuleInfo:
        action = _action(req, req.sip_dispatch_rule_id, "rule")
        if action == "replace" and req.replace.sip_dispatch_rule_id not in (
            "",
            req.sip_dispatch_rule_id,
        ):
            raise InvalidArgument("rule id in the info must be empty or match the id in the update")
        old = self.rule(tenant, req.sip_dispatch_rule_id)
        if action == "replace":
            new = _copy(req.replace)
            records.check_rule(new)
            new.created_at.CopyFrom(old.created_at)
        else:
            new = records.apply_rule_update(old, req.update)
        new.sip_dispatch_rule_id = old.sip_dispatch_rule_id
        rule_id = old.sip_dispatch_rule_id
        others = [r for r in self.rules(tenant) if r.sip_dispatch_rule_id != rule_id]
        check_rule_conflicts([*others, new])
        _stamp(new, wall, created=False)
        self._rules.put(tenant, new.sip_dispatch_rule_id, new)
        return new

    def list_rules(
        self, tenant: str, req: pb.ListSIPDispatchRuleRequest
    ) -> list[pb.SIPDispatchRuleInfo]:
        wanted = set(req.dispatch_rule_ids)
        trunks = set(req.trunk_ids)
        items = [
            r
            for r in self.rules(tenant)
            if (not wanted or r.sip_dispatch_rule_id in wanted)
            # A rule for every trunk is a rule for the trunks asked about.
            and (not trunks or not r.trunk_ids or trunks.intersection(r.trunk_ids))
        ]
        return _page(items, req.page, lambda r: r.sip_dispatch_rule_id)

    def delete_rule(self, tenant: str, rule_id: str) -> pb.SIPDispatchRuleInfo:
        rule = self.rule(tenant, rule_id)
        self._rules.delete(rule_id)
        return rule

    # Calls ---------------------------------------------------------------------

    def route(self, call: Call) -> tuple[str, pb.SIPInboundTrunkInfo, pb.SIPDispatchRuleInfo]:
        """The tenant, trunk and rule that take an inbound call.

        The trunk is matched among every tenant's (their numbers are
        distinct), and the rule among the trunk's tenant's.  A call no
        trunk takes is refused: with tenants, a catch-all rule could not
        say whose it is (LiveKit, with one project, lets it through).

        :raises NoCallRoute: no trunk or no rule takes the call.
        :raises FailedPrecondition: trunks or rules are ambiguous.
        """
        rows = self._inbound_rows()
        trunk = match_trunk((msg for _, msg in rows), call)
        if trunk is None:
            raise NoCallRoute("Does not match any SIP Trunks")
        tenant = next(t for t, msg in rows if msg is trunk)
        return tenant, trunk, select_rule(trunk, self.rules(tenant), call)


def _action(req: Any, record_id: str, what: str) -> str:
    """Which of ``replace`` and ``update`` an update request carries."""
    if not record_id:
        raise InvalidArgument(f"{what} id must be set")
    action = req.WhichOneof("action")
    if action is None:
        raise InvalidArgument("missing or unsupported update action")
    return str(action)


def _inbound_of_legacy(t: pb.SIPTrunkInfo) -> pb.SIPInboundTrunkInfo:
    return pb.SIPInboundTrunkInfo(
        sip_trunk_id=t.sip_trunk_id,
        name=t.name,
        metadata=t.metadata,
        numbers=[t.outbound_number] if t.outbound_number else [],
        allowed_addresses=t.inbound_addresses,
        allowed_numbers=t.inbound_numbers,
        auth_username=t.inbound_username,
        auth_password=t.inbound_password,
    )


def _outbound_of_legacy(t: pb.SIPTrunkInfo) -> pb.SIPOutboundTrunkInfo:
    return pb.SIPOutboundTrunkInfo(
        sip_trunk_id=t.sip_trunk_id,
        name=t.name,
        metadata=t.metadata,
        address=t.outbound_address,
        transport=t.transport,
        numbers=[t.outbound_number] if t.outbound_number else [],
        auth_username=t.outbound_username,
        auth_password=t.outbound_password,
    )


def _legacy_inbound(t: pb.SIPInboundTrunkInfo) -> pb.SIPTrunkInfo:
    return pb.SIPTrunkInfo(
        sip_trunk_id=t.sip_trunk_id,
        kind=pb.SIPTrunkInfo.TRUNK_INBOUND,
        name=t.name,
        metadata=t.metadata,
        outbound_number=t.numbers[0] if t.numbers else "",
        inbound_addresses=t.allowed_addresses,
        inbound_numbers=t.allowed_numbers,
        inbound_username=t.auth_username,
        inbound_password=t.auth_password,
    )


def _legacy_outbound(t: pb.SIPOutboundTrunkInfo) -> pb.SIPTrunkInfo:
    return pb.SIPTrunkInfo(
        sip_trunk_id=t.sip_trunk_id,
        kind=pb.SIPTrunkInfo.TRUNK_OUTBOUND,
        name=t.name,
        metadata=t.metadata,
        outbound_address=t.address,
        transport=t.transport,
        outbound_number=t.numbers[0] if t.numbers else "",
        outbound_username=t.auth_username,
        outbound_password=t.auth_password,
    )
