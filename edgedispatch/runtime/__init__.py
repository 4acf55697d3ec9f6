"""Agents the server runs itself.

The native runtime: ``native`` (the server's asyncio side of a warm pool of
job processes), ``zygote`` (the process the pool forks from, and the code
each job process runs) and ``messages`` (their wire format).  Agent code
imports only ``edgedispatch.agent``.
"""
