"""The one exception hierarchy of edgedispatch.

Every error carries what its catcher needs to answer a client: a Twirp code
(``twirp_code``), a SIP status (``sip_status``) and whether the same request
may succeed later (``retryable``).

Local errors (our caller misused an API, or our own bug) are kept apart from
remote errors (a peer sent bytes that break a protocol): code inside a
protocol layer raises ``LocalProtocolError`` and the layer's single input
boundary re-raises it as ``RemoteProtocolError`` (h11's rule).
"""

from __future__ import annotations


class EdgeDispatchError(Exception):
    """Root of every error edgedispatch raises on purpose."""

    twirp_code: str = "internal"
    sip_status: int = 500
    retryable: bool = False

    def __init__(self, msg: str = "", **meta: str) -> None:
        super().__init__(msg)
        self.msg = msg
        self.meta = meta


class ConfigError(EdgeDispatchError, ValueError):
    """The configuration is invalid.  ``key`` names the offending setting."""

    twirp_code = "invalid_argument"
    sip_status = 400

    def __init__(self, msg: str, key: str = "") -> None:
        super().__init__(f"{key}: {msg}" if key else msg)
        self.key = key


class InvalidEvent(EdgeDispatchError, ValueError):
    """An event for the scheduling core is malformed (a NaN load, a load
    outside 0..1, a slot cap below 1...).  The core's state is unchanged."""

    twirp_code = "invalid_argument"
    sip_status = 400


class UnknownId(InvalidEvent, LookupError):
    """An event names a worker or job the core does not know."""

    twirp_code = "not_found"
    sip_status = 404


class UnknownWorker(UnknownId):
    pass


class UnknownJob(UnknownId):
    pass


class DuplicateId(InvalidEvent):
    """An event tries to create a worker or job whose id is already taken."""

    twirp_code = "already_exists"
    sip_status = 409


class InvalidTransition(InvalidEvent):
    """The event does not apply to the object's current state (for example,
    claiming back a job that is not orphaned)."""

    twirp_code = "failed_precondition"
    sip_status = 409


class CapacityError(EdgeDispatchError):
    """No room for the request now; it may succeed later."""

    twirp_code = "resource_exhausted"
    sip_status = 503
    retryable = True


class ProtocolError(EdgeDispatchError):
    """Abstract: a protocol was broken.  Raise one of the two subclasses."""

    twirp_code = "malformed"
    sip_status = 400

    def __init__(self, msg: str = "", **meta: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        super().__init__(msg, **meta)


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (our bug or our caller's misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class InternalError(EdgeDispatchError):
    """An invariant of ours does not hold: a bug."""
