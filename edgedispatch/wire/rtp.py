"""RTP's wrapping counters, unwrapped (sequence numbers wrap at 2**16,
timestamps at 2**32): for forwarding, which must order packets and keep
presentation times growing across a wrap."""

from __future__ import annotations


class Unwrapper:
    """Each value of a ``bits``-bit counter placed nearest the highest one
    seen so far (RFC 3550 A.1's idea).  The first is placed one wrap up, so
    that values from just before it stay positive."""

    __slots__ = ("_span", "high", "first")

    def __init__(self, bits: int) -> None:
        self._span = 1 << bits
        self.high: int | None = None  #: the highest unwrapped value so far
        self.first: int | None = None  #: the first value, unwrapped

    def __call__(self, value: int) -> int:
        span, high = self._span, self.high
        if high is None:
            ext = self.first = value + span
        else:
            delta = (value - high) % span
            ext = high + delta if delta < span // 2 else high + delta - span
        if high is None or ext > high:
            self.high = ext
        return ext
