"""Agents the server runs itself.

The native runtime: ``native`` (the server's asyncio side of a warm pool of
job processes), ``zygote`` (the process the pool forks from, and the code
each job process runs) and ``messages`` (their wire format).  The pool's
decisions are sans-IO, in ``pool_states`` (its state tables) and
``pool_policy`` (when to fork); ``pool_conn``, ``pool_jobs`` and
``zygote_process`` are the rest of its shell.  Agent code imports only
``edgedispatch.agent``.
"""
