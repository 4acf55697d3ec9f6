"""asyncio adapters: the only place where transports live."""
