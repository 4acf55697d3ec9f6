"""A trunk's custom SIP headers, as livekit/sip uses them (``types.go``:
``HeadersToAttrs``, ``AttrsToHeaders``): pure functions over a message's
headers and a participant's attributes.

Into the room, a call's SIP participant gets attributes from the headers
of the INVITE (a call that comes in) or of the 200 (a call we placed):
- with ``include_headers``, every header (SIP_ALL_HEADERS) or every ``X-``
  header (SIP_X_HEADERS) as ``sip.h.<lower-case name>``;
- the headers of the carriers LiveKit knows (Twilio's call SID, Telnyx's
  call leg, Amazon Connect's contact) under LiveKit's names;
- the trunk's ``headers_to_attributes`` (header name -> attribute).
Out to the far end, the trunk's ``headers`` (and a placed call's own) go
with the INVITE or the 200, and its ``attributes_to_headers`` put the
participant's attributes, as they are at that moment, on our 200, BYE,
CANCEL and REFER.

Header names were checked when the trunk or the request was made
(``sip.records``), but LiveKit lets ``attributes_to_headers`` name any
header, the stack's own too (Call-ID, CSeq...): those are left out, as a
second copy would break the message.  Attribute values were not checked:
any participant with the grant can set them, so one with a control
character (a CR LF would start a header of its own choosing) is left out,
with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from edgedispatch.sip.message import LIST_HEADERS, Headers
from edgedispatch.sip.records import FORBIDDEN_HEADERS

log = logging.getLogger("edgedispatch.sip")

#: ``SIPHeaderOptions``: which headers become ``sip.h.*`` attributes.
NO_HEADERS, X_HEADERS, ALL_HEADERS = 0, 1, 2
HEADER_PREFIX = "sip.h."
CALL_ID_FULL = "sip.callIDFull"
CALL_TAG = "sip.callTag"
#: The carriers' headers LiveKit always maps (livekit/sip ``headerToAttr``),
#: by lower-case name.
CARRIER_ATTRIBUTES = {
    "x-twilio-accountsid": "sip.twilio.accountSid",
    "x-twilio-callsid": "sip.twilio.callSid",
    "x-call_leg_id": "sip.telnyx.callLegID",
    "x-call_session_id": "sip.telnyx.callSessionID",
    "x-amzn-connectcontactid": "sip.amazon.contactId",
    "x-amzn-connectinitialcontactid": "sip.amazon.initialContactId",
    "x-amzn-sourceaccount": "sip.amazon.sourceAccount",
    "x-amzn-sourcearn": "sip.amazon.sourceArn",
    "x-amzn-targetarn": "sip.amazon.targetArn",
}


def attributes_of(
    headers: Headers, to_attributes: Mapping[str, str], include: int
) -> dict[str, str]:
    """The attributes a message's ``headers`` give its participant."""
    values: dict[str, str] = {}
    for name, value in headers.items:
        if name in values and name in LIST_HEADERS:
            values[name] += ", " + value  # one item each when parsed
        elif name not in values:
            values[name] = value
    attributes: dict[str, str] = {}
    if include in (X_HEADERS, ALL_HEADERS):
        for name, value in values.items():
            if include == ALL_HEADERS or name.startswith("x-"):
                attributes[HEADER_PREFIX + name] = value
    for name, attribute in CARRIER_ATTRIBUTES.items():
        if name in values:
            attributes[attribute] = values[name]
    for name, attribute in to_attributes.items():
        found = values.get(name.lower())
        if found is not None and attribute:
            attributes[attribute] = found
    return attributes


def headers_of(
    fixed: Mapping[str, str],
    attributes: Mapping[str, str] | None = None,
    to_headers: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The headers we add: ``fixed`` (by name, in order, as livekit/sip
    sorts them), then ``to_headers`` (attribute -> header) of those of
    ``attributes`` that are set, each replacing a fixed one of its name."""
    out = {name.lower(): (name, value) for name, value in sorted(fixed.items())}
    for attribute, name in (to_headers or {}).items():
        value = (attributes or {}).get(attribute)
        if value is None or not name:
            continue
        if name.lower() in FORBIDDEN_HEADERS:  # the stack's own: a copy would break it
            log.warning("attribute %s not sent as header %s: the SIP stack sets it",
                        attribute, name)  # fmt: skip
            continue
        if not _printable(value):
            log.warning(
                "attribute %s not sent as header %s: it holds a control character",
                attribute, name,
            )  # fmt: skip
            continue
        out[name.lower()] = (name, value)
    return list(out.values())


def merged(*maps: Mapping[str, str]) -> dict[str, str]:
    """Header maps, a later one's names (in any case) replacing an earlier's."""
    out: dict[str, tuple[str, str]] = {}
    for headers in maps:
        for name, value in headers.items():
            out[name.lower()] = (name, value)
    return dict(out.values())


def _printable(value: str) -> bool:
    return all(ord(c) >= 128 or c == "\t" or " " <= c <= "~" for c in value)


class CallHeaders(NamedTuple):
    """A call's custom headers, as its trunk (and a placed call's request)
    set them."""

    #: Headers we add to the INVITE (a placed call) or to our 200.
    fixed: Mapping[str, str] = {}
    to_attributes: Mapping[str, str] = {}
    to_headers: Mapping[str, str] = {}
    include: int = NO_HEADERS

    @classmethod
    def of(cls, trunk: Any, extra: Mapping[str, str] | None = None) -> CallHeaders:
        """A trunk's (any of LiveKit's trunk messages; ``headers`` is
        optional), with ``extra`` headers replacing the trunk's."""
        fixed = dict(getattr(trunk, "headers", None) or {})
        return cls(
            merged(fixed, extra or {}),
            dict(trunk.headers_to_attributes),
            dict(trunk.attributes_to_headers),
            int(getattr(trunk, "include_headers", NO_HEADERS)),
        )

    def attributes(self, headers: Headers) -> dict[str, str]:
        return attributes_of(headers, self.to_attributes, self.include)


#: A call whose trunk adds and maps no headers.
NO_CALL_HEADERS = CallHeaders()
