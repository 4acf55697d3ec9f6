"""TransferSIPParticipant: a bridged call (inbound or placed) transferred
by REFER (``sip.refer``), sans-IO, with LiveKit's answers.

The RPC is answered once the transfer's outcome is known: a 2xx sipfrag
(or the far side hanging up once it accepted the REFER, as livekit/sip
counts it) is a success, ``TransferSIPParticipantResponse`` with
STS_TRANSFER_SUCCESSFUL; the far side then hangs up, or we do a second
later, and the participant leaves (``sip.callStatus`` "hangup": LiveKit
has no status of its own for a transfer).  A refused REFER is LiveKit's
mapping of its SIP status (``calls.outbound.twirp_error_of``); a failed
sipfrag the same, except that what maps to ``internal`` or
``unavailable`` is ``internal`` for a 5xx and ``invalid_argument`` for
the rest (livekit/sip's ``handleReferNotify``); the call stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from google.protobuf.message import Message
from livekit.protocol import sip as pb

from edgedispatch.calls.bridge import CallServices
from edgedispatch.calls.outbound import twirp_error_of
from edgedispatch.errors import EdgeDispatchError, InvalidArgument, NotFound, TwirpError
from edgedispatch.sip.refer import Event, TransferAccepted, TransferEnded
from edgedispatch.sip.uas import UserAgentServer

log = logging.getLogger("edgedispatch.sip")

Done = Callable[[Message | EdgeDispatchError], None]


def transfer_error(ended: TransferEnded, transfer_id: str) -> TwirpError:
    """A transfer that failed, as LiveKit answers it."""
    error = twirp_error_of(ended.status, ended.reason)
    code = error.twirp_code
    if ended.status == 408 and not ended.refused:
        code, why = "deadline_exceeded", "STR_RINGING_TIMEOUT"
    elif ended.refused:
        why = "STR_REJECTED"
    else:
        why = "STR_REJECTED"
        if code in ("internal", "unavailable"):
            code = "internal" if 500 <= ended.status < 600 else "invalid_argument"
    meta = dict(error.meta)
    meta.update(sip_transfer_reason=why, sip_transfer_id=transfer_id)
    return TwirpError(code, f"call transfer failed: {error.msg}", **meta)


class _Pending:
    def __init__(self, transfer_id: str, refer_to: str, done: Done) -> None:
        self.transfer_id = transfer_id
        self.refer_to = refer_to
        self.done = [done]
        self.accepted = False

    def settle(self, result: Message | EdgeDispatchError) -> None:
        done, self.done = self.done, []
        for fn in done:
            fn(result)


class Transfers:
    """:param ua: the SIP listener's user agent (None while SIP is not up);
    :param new_id: a fresh random token (transfer ids)."""

    def __init__(
        self,
        services: CallServices,
        ua: Callable[[], UserAgentServer | None],
        new_id: Callable[[], str],
    ) -> None:
        self.services = services
        self._ua = ua
        self._new_id = new_id
        self._pending: dict[str, _Pending] = {}

    def transfer(
        self,
        tenant: str,
        session: object,
        call_id: str,
        refer_to: str,
        timeout: float,
        now: float,
        done: Done,
        dialtone: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """REFER the call of ``session`` (the SIP participant, whose
        ``sip.callID`` is ``call_id``); ``done`` gets the outcome.  Raises
        what refuses it at once.  ``dialtone``: until the outcome, the
        caller hears the ringing tone instead of the room (livekit/sip's
        ``play_dialtone``); on success, until the call ends.  ``headers``:
        the request's, sent with the REFER (and the trunk's mapped
        attributes)."""
        call = self.services.calls.get(call_id)
        if call is None or call.tenant != tenant or call.session is not session:
            raise NotFound("no SIP call of this participant is up here")
        pending = self._pending.get(call_id)
        if pending is not None:  # asked again (a retried RPC): the same answer
            if pending.refer_to != refer_to:
                raise InvalidArgument("call already being transferred elsewhere")
            pending.done.append(done)
            return
        ua = self._ua()
        if ua is None:
            raise TwirpError("unavailable", "SIP is not listening")
        extra = call.sip_headers(headers or {})
        ua.transfer(call_id, refer_to, now, timeout, extra)  # raises if the call is not up
        transfer_id = f"STR_{self._new_id()}"
        self._pending[call_id] = _Pending(transfer_id, refer_to, done)
        if dialtone:
            call.media.ring_caller(True)
        log.info("call %s: transfer %s to %s", call_id, transfer_id, refer_to, extra=call.fields())
        self.services.flush(now)

    def on_event(self, event: Event, now: float) -> None:
        pending = self._pending.get(event.call_id)
        if pending is None:
            return
        if isinstance(event, TransferAccepted):
            pending.accepted = True
            return
        assert isinstance(event, TransferEnded)
        del self._pending[event.call_id]
        call = self.services.calls.get(event.call_id)
        extra = call.fields() if call is not None else {"call": event.call_id}
        if 200 <= event.status < 300:
            log.info("call %s transferred", event.call_id, extra=extra)
            pending.settle(self._success(pending, event.status, event.reason))
            return
        log.info(
            "call %s: transfer failed: %d %s", event.call_id, event.status, event.reason,
            extra=extra,
        )  # fmt: skip
        if call is not None:
            call.media.ring_caller(False)  # back to the room (if it rang)
        pending.settle(transfer_error(event, pending.transfer_id))

    def call_ended(self, call_id: str) -> None:
        """The call ended while being transferred: once the REFER was
        accepted that is the transfer done (livekit/sip), else it failed."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        if pending.accepted:
            pending.settle(self._success(pending, 200, "OK"))
        else:
            error = TwirpError(
                "aborted", "the call ended before the transfer was accepted",
                sip_transfer_reason="STR_CALL_ENDED", sip_transfer_id=pending.transfer_id,
            )  # fmt: skip
            pending.settle(error)

    def _success(self, pending: _Pending, status: int, reason: str) -> Message:
        return pb.TransferSIPParticipantResponse(
            transfer_id=pending.transfer_id,
            status=pb.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL,
            reason=pb.SIPTransferReason.STR_COMPLETED,
            sip_status=pb.SIPStatus(code=status, status=reason),  # type: ignore[arg-type]
        )
