"""Phone calls: what the server does with a call the SIP stack (``sip``)
reports, with the tenants' trunks and rules (``sip.directory``) and the
domain (rooms, agents)."""
