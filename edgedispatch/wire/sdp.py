"""What the media adapter reads from a client's SDP offer, as text."""

from __future__ import annotations


def offer_track_ids(sdp: str) -> dict[str, str]:
    """mid -> the msid track id of each m-line of an offer that sends a
    track (its msid and its direction, in any order within its section).
    An unpublished track keeps its msid but stops sending."""
    found: dict[str, str] = {}
    for section in sdp.split("\nm=")[1:]:
        mid = track = ""
        sends = True  # sendrecv when no direction is given
        for line in section.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=msid:"):
                bits = line[7:].split()
                track = bits[1] if len(bits) == 2 else ""
            elif line in ("a=recvonly", "a=inactive"):
                sends = False
        if mid and track and sends:
            found[mid] = track
    return found


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def offer_directions(sdp: str) -> dict[str, str]:
    """mid -> the direction of each m-line of an offer (sendrecv when none
    is given), as the client sees it."""
    found: dict[str, str] = {}
    for section in sdp.split("\nm=")[1:]:
        mid, direction = "", "sendrecv"
        for line in section.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line[2:] in DIRECTIONS and line.startswith("a="):
                direction = line[2:]
        if mid:
            found[mid] = direction
    return found
