"""SIP server transactions (RFC 3261 §17.2, with RFC 6026's Accepted
state), sans-IO: requests in with ``now``, what to send out, and one
deadline for the shell to wake us at.

A transaction absorbs what the network repeats, so the layer above (the
UAS core) sees each request once:
- a retransmitted request gets the transaction's last response again;
- an INVITE answered 2xx stays ``ACCEPTED`` for Timer L, absorbing late
  copies of itself (RFC 6026: the UAS core, not the transaction,
  retransmits the 2xx);
- an INVITE answered 300-699 retransmits that answer on Timer G until its
  ACK, which the transaction swallows, and gives up on Timer H.

The states and the moves between them are tables (``MOVES``); a move that
is not in its table is a bug and raises.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass

from edgedispatch.errors import EdgeDispatchError
from edgedispatch.sip.message import Request, parse_via

T1 = 0.5  #: RTT estimate (s)
T2 = 4.0  #: the longest retransmit interval for non-INVITE requests and INVITE answers
T4 = 5.0  #: the longest a message stays in the network
MAGIC = "z9hG4bK"  #: RFC 3261's branch prefix


class State(enum.Enum):
    TRYING = "trying"  # non-INVITE, nothing sent yet
    PROCEEDING = "proceeding"  # a provisional answer sent
    ACCEPTED = "accepted"  # INVITE answered 2xx (RFC 6026)
    COMPLETED = "completed"  # a final answer sent (INVITE: 300-699)
    CONFIRMED = "confirmed"  # INVITE: its ACK came
    TERMINATED = "terminated"


S = State
#: (INVITE?, state) -> the states it may move to.
MOVES: dict[tuple[bool, State], frozenset[State]] = {
    (True, S.PROCEEDING): frozenset({S.PROCEEDING, S.ACCEPTED, S.COMPLETED, S.TERMINATED}),
    (True, S.ACCEPTED): frozenset({S.TERMINATED}),
    (True, S.COMPLETED): frozenset({S.CONFIRMED, S.TERMINATED}),
    (True, S.CONFIRMED): frozenset({S.TERMINATED}),
    (False, S.TRYING): frozenset({S.PROCEEDING, S.COMPLETED, S.TERMINATED}),
    (False, S.PROCEEDING): frozenset({S.PROCEEDING, S.COMPLETED, S.TERMINATED}),
    (False, S.COMPLETED): frozenset({S.TERMINATED}),
}


class BadTransition(EdgeDispatchError):
    """A response the transaction's state does not allow (a caller's bug)."""


Address = tuple[str, int]
Key = tuple[str, ...]


def key_of(req: Request, source: Address) -> Key:
    """What matches a request to its transaction (§17.2.3): the top Via's
    branch and sent-by, and the method (an ACK or CANCEL names its INVITE's
    branch; a CANCEL has a transaction of its own).  An RFC 2543 peer's
    branch lacks the magic cookie: then the Call-ID, CSeq number, From tag
    and source stand in for it."""
    via = parse_via(req.headers.get("via"))
    method = "INVITE" if req.method == "ACK" else req.method
    if via.branch.startswith(MAGIC):
        return (via.branch, via.host, str(via.port), method)
    number, _ = req.cseq
    tag = req.headers.get("from").rpartition("tag=")[2]
    return (req.call_id, str(number), tag, f"{source[0]}:{source[1]}", method)


@dataclass
class ServerTransaction:
    key: Key
    invite: bool
    reliable: bool  #: TCP/TLS: nothing to retransmit, no wait to absorb copies
    peer: Address  #: where its answers go
    state: State
    last: bytes = b""  #: the last answer sent, sent again on a retransmission
    timer: float | None = None  #: when ``on_timer`` has work for it
    interval: float = T1  #: Timer G's current interval
    give_up: float = 0.0  #: Timer H: no ACK by then
    acked: bool = False
    origin: tuple[str, str, int] | None = None  #: an INVITE's, see ``_origin``

    def move(self, to: State) -> None:
        if to not in MOVES.get((self.invite, self.state), frozenset()):
            raise BadTransition(f"{self.state.value} -> {to.value}")
        self.state = to


class ServerTransactions:
    """Every server transaction of one transport, and what they send.

    The shell calls ``receive`` for each request, ``respond`` for each answer
    the UAS core makes, ``on_timer`` at ``next_deadline()``, and sends
    ``take_outgoing()`` after each."""

    def __init__(self) -> None:
        self._by_key: dict[Key, ServerTransaction] = {}
        # (Call-ID, From tag, CSeq number) -> the key of the INVITE
        # transaction that came first with them: a copy by another path
        # (a new branch) is a merged request (§8.2.2.2), not a new call.
        self._invites: dict[tuple[str, str, int], Key] = {}
        self._out: list[tuple[bytes, Address]] = []
        # (when, order, key): a transaction's timer is the entry that still
        # matches its ``timer``; the others are stale and skipped.
        self._timers: list[tuple[float, int, Key]] = []
        self._order = itertools.count()
        self.timed_out: list[ServerTransaction] = []  #: INVITEs whose ACK never came

    def __len__(self) -> int:
        return len(self._by_key)

    def receive(self, req: Request, source: Address, reliable: bool, now: float) -> bool:
        """Whether ``req`` is new to the UAS core (False: absorbed here).
        An ACK is new unless it acknowledges a 300-699 answer."""
        key = key_of(req, source)
        txn = self._by_key.get(key)
        if req.method == "ACK":
            if txn is None or txn.state is not S.COMPLETED:
                return txn is None or txn.state is S.ACCEPTED  # a 2xx's ACK: the core's
            txn.move(S.CONFIRMED)
            txn.acked = True
            self._arm(txn, now + (0.0 if txn.reliable else T4))  # Timer I
            return False
        if txn is not None:
            if txn.last and txn.state in (S.PROCEEDING, S.COMPLETED):
                self._out.append((txn.last, txn.peer))  # the answer again
            return False
        invite = req.method == "INVITE"
        txn = ServerTransaction(key, invite, reliable, source, S.PROCEEDING if invite else S.TRYING)
        self._by_key[key] = txn
        if invite:
            txn.origin = _origin(req)
            self._invites.setdefault(txn.origin, key)
        return True

    def merged(self, req: Request, source: Address) -> bool:
        """Whether the INVITE ``req`` is a copy, by another path, of one
        whose transaction is still going (answered or not)."""
        first = self._invites.get(_origin(req))
        return first is not None and first != key_of(req, source)

    def reliable(self, req: Request, source: Address) -> bool:
        txn = self._by_key.get(key_of(req, source))
        return txn is not None and txn.reliable

    def forget(self, req: Request, source: Address) -> None:
        """End ``req``'s transaction without an answer (a dropped request:
        a copy of it is a new request again)."""
        txn = self._by_key.get(key_of(req, source))
        if txn is not None:
            txn.state = S.TERMINATED
            self._remove(txn)

    def respond(self, req: Request, source: Address, status: int, data: bytes, now: float) -> None:
        """Send an answer to ``req`` through its transaction."""
        txn = self._by_key.get(key_of(req, source))
        if txn is None:
            raise BadTransition(f"no transaction for {req.method} {req.call_id}")
        self._out.append((data, txn.peer))
        txn.last = data
        if status < 200:
            txn.move(S.PROCEEDING)
        elif txn.invite and status < 300:
            txn.move(S.ACCEPTED)
            self._arm(txn, now + 64 * T1)  # Timer L
        elif txn.invite:
            txn.move(S.COMPLETED)
            txn.give_up = now + 64 * T1  # Timer H
            txn.interval = T1
            self._arm(txn, now + (64 * T1 if txn.reliable else T1))  # Timer G
        else:
            txn.move(S.COMPLETED)
            self._arm(txn, now + (0.0 if txn.reliable else 64 * T1))  # Timer J

    def state(self, req: Request, source: Address) -> State | None:
        txn = self._by_key.get(key_of(req, source))
        return None if txn is None else txn.state

    def next_deadline(self) -> float | None:
        heap = self._timers
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _live(self, entry: tuple[float, int, Key]) -> bool:
        txn = self._by_key.get(entry[2])
        return txn is not None and txn.timer == entry[0]

    def on_timer(self, now: float) -> None:
        heap = self._timers
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            txn = self._by_key[entry[2]]
            txn.timer = None
            if txn.state is S.COMPLETED and txn.invite and not txn.acked:
                if now >= txn.give_up:  # Timer H: the ACK never came
                    self.timed_out.append(txn)
                    self._end(txn)
                    continue
                self._out.append((txn.last, txn.peer))  # Timer G
                txn.interval = min(2 * txn.interval, T2)
                self._arm(txn, min(now + txn.interval, txn.give_up))
            else:  # Timers I, J, L: the transaction's time is over
                self._end(txn)

    def take_outgoing(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def _arm(self, txn: ServerTransaction, at: float) -> None:
        txn.timer = at
        heapq.heappush(self._timers, (at, next(self._order), txn.key))

    def _end(self, txn: ServerTransaction) -> None:
        txn.move(S.TERMINATED)
        self._remove(txn)

    def _remove(self, txn: ServerTransaction) -> None:
        txn.timer = None
        del self._by_key[txn.key]
        if txn.origin is not None and self._invites.get(txn.origin) == txn.key:
            del self._invites[txn.origin]


def _origin(req: Request) -> tuple[str, str, int]:
    """What an INVITE and its merged copies share (§8.2.2.2)."""
    tag = req.headers.get("from").rpartition("tag=")[2].split(";", 1)[0].strip()
    return (req.call_id, tag, req.cseq[0])
