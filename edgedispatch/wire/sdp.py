"""What the media adapter reads from a client's SDP offer, as text."""

from __future__ import annotations

from typing import NamedTuple

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class Section(NamedTuple):
    direction: str  #: as the client sees it (sendrecv when none is given)
    track: str  #: the msid track id, "" when none


def offer_sections(sdp: str) -> dict[str, Section]:
    """mid -> the direction and msid track id of each m-line of an offer
    (in any order within its section)."""
    found: dict[str, Section] = {}
    for section in sdp.split("\nm=")[1:]:
        mid, track, direction = "", "", "sendrecv"
        for line in section.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=msid:"):
                bits = line[7:].split()
                track = bits[1] if len(bits) == 2 else ""
            elif line.startswith("a=") and line[2:] in DIRECTIONS:
                direction = line[2:]
        if mid:
            found[mid] = Section(direction, track)
    return found


def sent_tracks(sections: dict[str, Section]) -> dict[str, str]:
    """mid -> the msid track id of each m-line that sends a track.  An
    unpublished track keeps its msid but stops sending."""
    return {
        mid: s.track
        for mid, s in sections.items()
        if s.track and s.direction in ("sendrecv", "sendonly")
    }


def offer_track_ids(sdp: str) -> dict[str, str]:
    """``sent_tracks`` of an offer's text."""
    return sent_tracks(offer_sections(sdp))
