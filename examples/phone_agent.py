"""A livekit-agents (1.8) app that answers phone calls, as a tenant would
write one: edgedispatch starts it on demand when a call's dispatch rule
names its agent (README, "A two-tenant phone set-up").

It joins the call's room, waits for the caller (the SIP participant), and
says whom it answered, and for whom, in its own participant attributes
(anyone with the tenant's key sees them with ListParticipants):
``answered.for`` (``$COMPANY``), ``answered.caller`` (the caller's
identity), ``answered.number`` (the number called).  It greets the caller's
room over data and stays until the call ends.

    AGENT_NAME  the agent name it registers (default "receptionist")
    COMPANY     whose agent it is (default "?")
    PORT        its health server's port (edgedispatch gives each agent
                server a free one; livekit-agents' own default is 8081)
"""

import os

from livekit import rtc
from livekit.agents import AgentServer, JobContext, cli

COMPANY = os.environ.get("COMPANY", "?")

# load_fnc: livekit-agents' default reads the whole machine's CPU and
# refuses jobs on a busy box.
server = AgentServer(
    load_fnc=lambda: 0.0, num_idle_processes=1, port=int(os.environ.get("PORT", 8081))
)


@server.rtc_session(agent_name=os.environ.get("AGENT_NAME", "receptionist"))
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    caller = await ctx.wait_for_participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP)
    await ctx.room.local_participant.set_attributes(
        {
            "answered.for": COMPANY,
            "answered.caller": caller.identity,
            "answered.number": caller.attributes.get("sip.trunkPhoneNumber", ""),
        }
    )
    await ctx.room.local_participant.publish_data(f"{COMPANY}, hello".encode(), topic="greeting")


if __name__ == "__main__":
    cli.run_app(server)
