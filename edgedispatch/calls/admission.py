"""Whether a new call may start now: INVITEs per source address, and
concurrent calls per tenant and in all.  Sans-IO (``now`` is given).

Two steps, because they are known at different times:
- ``arrived(source_ip, now)``, before anything else is done for an INVITE:
  a token bucket per source address.  It runs before the trunk lookup and
  the digest check so that a flood of calls to numbers no trunk takes (what
  SIP scanners send) costs a token each, and nothing more.
- ``admit(tenant, call_id)``, once the trunk has named the tenant: the
  call counts against its tenant's and the server's concurrent calls from
  then until ``ended(call_id)``.

Refusals, as a trunk should read them:
- the server's limit: 503 with Retry-After (try another server, or later);
- the tenant's limit: 486 Busy Here (this tenant's lines are busy: other
  tenants are unaffected, and a proxy does not fail over on a 486);
- a source over its rate: 503 with Retry-After, the time its bucket needs
  to allow one INVITE again.  A source that goes on sending is in debt: each
  INVITE it sends while refused takes a token it does not have, so it is
  refused until it slows down.  Past ``burst`` INVITEs of debt it is
  dropped without an answer (``Refusal.drop``), over UDP only: an answer
  to a datagram goes to an address anyone can forge, so a flood would
  make us reflect it at a victim; over TCP the handshake proved the
  address and the 503 goes out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgedispatch.config import Config, SipConfig

#: Source addresses tracked at most.  An address untouched for
#: ``burst / rate`` seconds has a full bucket, the same as none, so the
#: least recently seen one goes first when the table is full.
MAX_SOURCES = 10_000
#: Seconds a caller is told to wait when the whole server is full.
BUSY_RETRY_AFTER = 5
_DEFAULTS = SipConfig()


@dataclass(frozen=True)
class Refusal:
    status: int  #: 486 or 503
    reason: str
    retry_after: int = 0  #: seconds (0: no Retry-After)
    drop: bool = False  #: answer nothing (over UDP), see the module's note

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after))] if self.retry_after else []


@dataclass
class _Bucket:
    tokens: float
    at: float


class Admission:
    """:param max_calls: concurrent calls in all (0: no limit).
    :param max_calls_per_tenant: concurrent calls of one tenant (0: no limit).
    :param rate: INVITEs per second one source address may send (0: no limit).
    :param burst: INVITEs it may send at once; also the debt past which
        it is dropped.
    :param tenant_max_calls: tenant -> its own limit, in place of
        ``max_calls_per_tenant`` (0: no limit)."""

    def __init__(
        self,
        max_calls: int = _DEFAULTS.max_calls,
        max_calls_per_tenant: int = _DEFAULTS.max_calls_per_tenant,
        rate: float = _DEFAULTS.invite_rate,
        burst: int = _DEFAULTS.invite_burst,
        max_sources: int = MAX_SOURCES,
        tenant_max_calls: dict[str, int] | None = None,
    ) -> None:
        self.max_calls = max_calls
        self.max_calls_per_tenant = max_calls_per_tenant
        self.tenant_max_calls = dict(tenant_max_calls or {})
        self.rate = rate
        self.burst = max(burst, 1)
        self.max_sources = max_sources
        self._sources: dict[str, _Bucket] = {}  # least recently seen first
        self._calls: dict[str, str] = {}  # Call-ID -> tenant, of counted calls
        self._per_tenant: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> Admission:
        sip = cfg.sip
        own = {t.name: t.max_calls for t in cfg.tenants if t.max_calls is not None}
        return cls(
            sip.max_calls, sip.max_calls_per_tenant, sip.invite_rate, sip.invite_burst,
            tenant_max_calls=own,
        )  # fmt: skip

    # -- per source --------------------------------------------------------

    def arrived(self, source_ip: str, now: float) -> Refusal | None:
        """An INVITE from ``source_ip``: takes a token from its bucket."""
        if self.rate <= 0:
            return None
        bucket = self._sources.pop(source_ip, None)
        if bucket is None:
            if len(self._sources) >= self.max_sources:
                del self._sources[next(iter(self._sources))]
            bucket = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.at = now
        self._sources[source_ip] = bucket  # now the most recently seen
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        if bucket.tokens - 1.0 < -self.burst:  # its debt would pass the burst
            return Refusal(503, "too many calls from this address", drop=True)
        bucket.tokens -= 1.0
        wait = math.ceil((1.0 - bucket.tokens) / self.rate)
        return Refusal(503, "too many calls from this address", retry_after=max(wait, 1))

    # -- concurrent calls --------------------------------------------------

    def admit(self, tenant: str, call_id: str) -> Refusal | None:
        """A call of ``tenant``: counted until ``ended(call_id)``, unless refused."""
        if call_id in self._calls:
            return None  # counted already
        if self.max_calls and len(self._calls) >= self.max_calls:
            return Refusal(503, "the server takes no more calls now", BUSY_RETRY_AFTER)
        count = self._per_tenant.get(tenant, 0)
        limit = self.tenant_max_calls.get(tenant, self.max_calls_per_tenant)
        if limit and count >= limit:
            return Refusal(486, "the tenant's calls are all in use")
        self._calls[call_id] = tenant
        self._per_tenant[tenant] = count + 1
        return None

    def ended(self, call_id: str) -> None:
        """The call is over (whichever way: refused, cancelled, hung up).
        Safe to call for a call never counted, or twice."""
        tenant = self._calls.pop(call_id, None)
        if tenant is None:
            return
        left = self._per_tenant[tenant] - 1
        if left:
            self._per_tenant[tenant] = left
        else:
            del self._per_tenant[tenant]

    def calls(self, tenant: str | None = None) -> int:
        """Calls counted now: of ``tenant``, or in all."""
        return len(self._calls) if tenant is None else self._per_tenant.get(tenant, 0)

    def sources(self) -> int:
        return len(self._sources)
