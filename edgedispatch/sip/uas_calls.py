"""The calls a UAS (``sip.uas``) keeps, and the events it reports about
them; the reason phrases of the statuses it sends."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from edgedispatch.sip.message import Request
from edgedispatch.sip.transaction import T1, Address

REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
    500: "Server Internal Error", 503: "Service Unavailable", 505: "Version Not Supported",
    513: "Message Too Large",
}  # fmt: skip


class CallState(enum.Enum):
    OFFERED = "offered"  # INVITE received, no final answer yet
    ANSWERED = "answered"  # 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"  # ACK received: the call is up
    ENDED = "ended"


@dataclass
class IncomingCall:
    call_id: str
    invite: Request
    source: Address


@dataclass
class CallEnded:
    call_id: str
    #: "bye" (the caller hung up), "cancel", "no ack", "hung up", "rejected", "dropped"
    why: str


@dataclass
class CallConfirmed:
    call_id: str


@dataclass
class Dtmf:
    call_id: str
    digit: str


Event = IncomingCall | CallEnded | CallConfirmed | Dtmf


@dataclass
class Call:
    call_id: str
    invite: Request
    source: Address
    local_tag: str
    state: CallState = CallState.OFFERED
    answer: bytes = b""  #: the 2xx, sent again until ACK
    answer_sdp: bytes = b""  #: our session, offered again to a re-INVITE
    rang: bool = False  #: a provisional answer went out
    resend_at: float | None = None
    interval: float = T1
    give_up: float = 0.0
    bye: bytes = b""  #: a BYE we sent, repeated until answered
    bye_cseq: int = 0
    local_cseq: int = 0  #: the CSeq of our last request in the dialog (REFER, BYE)
    remote_cseq: int = 0
    extra: dict[str, str] = field(default_factory=dict)
