// The Node server SDK's SipClient against edgedispatch (Twirp JSON).
// Prints one JSON object with what each call returned.
import { RoomAgentDispatch, RoomConfiguration, SipClient } from 'livekit-server-sdk';

import { errorOf } from './twirp_errors.mjs';

const sip = new SipClient(
  process.env.LIVEKIT_URL,
  process.env.LIVEKIT_API_KEY,
  process.env.LIVEKIT_API_SECRET,
);
const out = {};

const inbound = await sip.createSipInboundTrunk('node in', ['+15550300'], {
  allowedAddresses: ['127.0.0.1'],
});
out.inbound = { sipTrunkId: inbound.sipTrunkId, numbers: inbound.numbers };
out.listed = (await sip.listSipInboundTrunk()).map((t) => t.sipTrunkId);
const roomConfig = new RoomConfiguration({
  agents: [new RoomAgentDispatch({ agentName: 'node-agent' })],
});
const options = { name: 'node rule', trunkIds: [inbound.sipTrunkId], roomConfig };
const rule = await sip.createSipDispatchRule({ type: 'individual', roomPrefix: 'node' }, options);
out.rule = {
  id: rule.sipDispatchRuleId,
  roomPrefix: rule.rule?.rule?.value?.roomPrefix,
  agents: rule.roomConfig?.agents?.map((a) => a.agentName) ?? [],
};
out.rules = (await sip.listSipDispatchRule()).map((r) => r.sipDispatchRuleId);
const legacy = await sip.createSipTrunk('+15550400', { name: 'node legacy' });
out.legacy = (await sip.listSipTrunk()).map((t) => t.sipTrunkId);
out.legacyInbound = (await sip.listSipInboundTrunk()).map((t) => t.sipTrunkId);
await sip.deleteSipTrunk(legacy.sipTrunkId);
out.conflict = await errorOf(
  sip.createSipDispatchRule({ type: 'individual', roomPrefix: 'again' }, options),
);
await sip.deleteSipDispatchRule(rule.sipDispatchRuleId);
await sip.deleteSipTrunk(inbound.sipTrunkId);
out.deleted = {
  inbound: (await sip.listSipInboundTrunk()).length,
  rules: (await sip.listSipDispatchRule()).length,
};
console.log(JSON.stringify(out));
