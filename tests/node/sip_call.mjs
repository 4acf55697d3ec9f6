// The Node server SDK's SipClient.createSipParticipant against edgedispatch:
// a call to CALLEE_PORT (a sipp UAS) through a new outbound trunk, with a
// custom header, waiting until answered.  Prints one JSON object: the
// participant, or the error.
import { SipClient } from 'livekit-server-sdk';

const sip = new SipClient(
  process.env.LIVEKIT_URL,
  process.env.LIVEKIT_API_KEY,
  process.env.LIVEKIT_API_SECRET,
);
const trunk = await sip.createSipOutboundTrunk(
  'node carrier',
  `127.0.0.1:${process.env.CALLEE_PORT}`,
  ['+15550100'],
);
const out = {};
try {
  const info = await sip.createSipParticipant(trunk.sipTrunkId, '+15550123', 'node-call', {
    participantIdentity: 'node-callee',
    headers: { 'X-Campaign': 'spring' },
    waitUntilAnswered: true,
  });
  out.info = { identity: info.participantIdentity, room: info.roomName, callId: info.sipCallId };
} catch (e) {
  out.error = { code: e.code ?? null, status: e.status ?? null, metadata: e.metadata ?? null };
}
console.log(JSON.stringify(out));
