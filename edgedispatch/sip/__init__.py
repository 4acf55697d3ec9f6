"""SIP, sans-IO (RFC 3261): messages, transactions and the UAS core, and
LiveKit's trunks and dispatch rules (which trunk and rule take a call, and
what the rule does with it).  Bytes or datagrams in, events out; time is
passed in; the asyncio adapter that owns the sockets lives in ``net``."""
