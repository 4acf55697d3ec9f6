"""An agent server in a few lines, for the scale-up test: one FakeWorker
that registers with the LIVEKIT_* credentials it was given, takes every job
it is offered and holds it until it is stopped."""

import asyncio
import os

from edgedispatch._testbase.fake_worker import FakeWorker


async def main() -> None:
    worker = FakeWorker(
        os.environ["LIVEKIT_URL"],
        os.environ["LIVEKIT_API_KEY"],
        os.environ["LIVEKIT_API_SECRET"],
        agent_name=os.environ["EDT_AGENT"],
    )
    await worker.connect()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
