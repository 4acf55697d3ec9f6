"""How the media adapter reads a client's offer: which m-line sends which
AddTrack'ed track (its msid), and when it stopped sending."""

from __future__ import annotations

from edgedispatch.net.media import private_attributes_missing
from edgedispatch.wire.sdp import offer_track_ids

OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=msid:- mic-1\r\na=mid:0\r\na=sendonly\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=msid:stream mic-2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=msid:- gone\r\na=recvonly\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n"
)


def test_sending_m_lines_are_mapped_to_their_msid_track() -> None:
    # msid before or after the mid; no direction means sendrecv; a section
    # that kept its msid but receives only was unpublished.
    assert offer_track_ids(OFFER) == {"0": "mic-1", "2": "mic-2"}


def test_the_private_aiortc_attributes_the_tap_needs_are_there() -> None:
    # aiortc is pinned exactly; this fails first if an upgrade moves them.
    assert private_attributes_missing() == []


def test_offer_directions_read_each_section_as_the_client_sees_it() -> None:
    from edgedispatch.wire.sdp import offer_sections

    offer = (
        "v=0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\na=mid:1\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:3\r\na=inactive\r\n"
    )
    assert {mid: s.direction for mid, s in offer_sections(offer).items()} == {
        "0": "sendonly",
        "1": "recvonly",
        "2": "sendrecv",  # none given
        "3": "inactive",
    }
