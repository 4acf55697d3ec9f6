"""SIP, sans-IO (RFC 3261): messages, and later transactions and dialogs.
Bytes or datagrams in, events out; time is passed in; the asyncio adapter
that owns the sockets lives in ``net``."""
