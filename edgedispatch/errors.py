"""The one exception hierarchy of edgedispatch.

Every error derives from ``EdgeDispatchError`` and carries what its catcher
needs to answer a client of any protocol: a Twirp code (``twirp_code``) and
a SIP status (``sip_status``).  An HTTP status follows from the Twirp code
(``wire.twirp.STATUS``); a WebSocket close reason is the message.

The domain raises the generic kinds (``InvalidArgument``, ``NotFound``,
``AlreadyExists``, ``FailedPrecondition``, ``PermissionDenied``,
``Unavailable``...), never a protocol's error: so a SIP INVITE routed to a
room that has just closed gets a 404, not a 500, and a Twirp call the same
error as a Twirp code.  This module is plain Python with no imports, so that
the compiled core and the zygote can raise these too.
"""

from __future__ import annotations


class EdgeDispatchError(Exception):
    """Root of every error edgedispatch raises on purpose."""

    twirp_code: str = "internal"
    sip_status: int = 500

    def __init__(self, msg: str = "", **meta: str) -> None:
        super().__init__(msg)
        self.msg = msg
        self.meta = meta


# The generic kinds: what went wrong, in terms every protocol can answer.


class InvalidArgument(EdgeDispatchError):
    """The request is well-formed but a value in it is not acceptable."""

    twirp_code = "invalid_argument"
    sip_status = 400


class Malformed(EdgeDispatchError):
    """The request could not be parsed at all."""

    twirp_code = "malformed"
    sip_status = 400


class TooLarge(EdgeDispatchError):
    """A request, body or frame is over its configured size."""

    twirp_code = "resource_exhausted"
    sip_status = 413


class NotFound(EdgeDispatchError, LookupError):
    """What the request names does not exist (any more)."""

    twirp_code = "not_found"
    sip_status = 404


class AlreadyExists(EdgeDispatchError):
    twirp_code = "already_exists"
    sip_status = 400  # SIP has no "conflict"; the request is refused as it is


class FailedPrecondition(EdgeDispatchError):
    """The request does not apply to the object's current state."""

    twirp_code = "failed_precondition"
    sip_status = 400


class NoCallRoute(FailedPrecondition):
    """No SIP trunk or dispatch rule takes an inbound call: LiveKit's
    ``failed_precondition``, and a 404 to the caller, as livekit/sip
    answers it ("Does not match any SIP Trunks")."""

    sip_status = 404


class Unauthenticated(EdgeDispatchError):
    """The caller presented no valid credentials."""

    twirp_code = "unauthenticated"
    sip_status = 401


class PermissionDenied(EdgeDispatchError):
    """Valid credentials that lack the permission this request needs."""

    twirp_code = "permission_denied"
    sip_status = 403


class Unavailable(EdgeDispatchError):
    """The server cannot take this now (draining, say); it may later."""

    twirp_code = "unavailable"
    sip_status = 503


class StoreUnavailable(Unavailable):
    """The store cannot open or commit (a full disk, a newer schema): no new
    work is taken, and nothing already taken is lost."""


class ResourceExhausted(EdgeDispatchError):
    """A limit or quota is reached."""

    twirp_code = "resource_exhausted"
    sip_status = 486  # Busy Here


class InternalError(EdgeDispatchError):
    """An invariant of ours does not hold: a bug."""


# Configuration.


class ConfigError(InvalidArgument, ValueError):
    """The configuration is invalid.  ``key`` names the offending setting."""

    def __init__(self, msg: str, key: str = "") -> None:
        super().__init__(f"{key}: {msg}" if key else msg)
        self.key = key


# The scheduling core's events (raised by ``edgedispatch._core``).


class InvalidEvent(InvalidArgument, ValueError):
    """An event for the scheduling core is malformed (a NaN load, a load
    outside 0..1, a slot cap below 1...).  The core's state is unchanged."""


class UnknownId(InvalidEvent, NotFound):
    """An event names a worker or job the core does not know."""


class UnknownWorker(UnknownId):
    pass


class UnknownJob(UnknownId):
    pass


class DuplicateId(InvalidEvent, AlreadyExists):
    """An event tries to create a worker or job whose id is already taken."""


class InvalidTransition(InvalidEvent, FailedPrecondition):
    """The event does not apply to the object's current state (for example,
    claiming back a job that is not orphaned)."""


# Errors that name a Twirp code directly (routing, protocol framing).

#: Twirp error code -> SIP status, for errors made from a code.
SIP_STATUS = {
    "canceled": 487,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 400,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 486,
    "failed_precondition": 400,
    "aborted": 500,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
    "unknown": 500,
}


class TwirpError(EdgeDispatchError):
    """An error answered with the Twirp ``code`` given (``bad_route``, say,
    which no generic kind stands for)."""

    def __init__(self, code: str, msg: str, **meta: str) -> None:
        if code not in SIP_STATUS:
            raise ValueError(f"not a Twirp error code: {code}")
        super().__init__(msg, **meta)
        self.twirp_code = code
        self.sip_status = SIP_STATUS[code]
