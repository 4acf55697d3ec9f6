"""SIP, sans-IO (RFC 3261): messages, transactions, the user agents (the
server side for calls in, the client side for calls out), SDP and RTP; and
LiveKit's trunks and dispatch rules (which trunk and rule take a call, and
what the rule does with it).  Bytes or datagrams in, events out; time is
passed in; the asyncio adapter that owns the sockets lives in ``net``."""
