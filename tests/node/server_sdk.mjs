// The official Node server SDK against edgedispatch, over Twirp JSON.
// Prints one JSON object with what each call returned.
import { AgentDispatchClient, RoomServiceClient } from 'livekit-server-sdk';

import { errorOf } from './twirp_errors.mjs';

const url = process.env.LIVEKIT_URL;
const key = process.env.LIVEKIT_API_KEY;
const secret = process.env.LIVEKIT_API_SECRET;
const dispatches = new AgentDispatchClient(url, key, secret);
const rooms = new RoomServiceClient(url, key, secret);
const out = {};

const room = await rooms.createRoom({ name: 'node-room', emptyTimeout: 120, metadata: 'rm' });
out.room = { sid: room.sid, name: room.name, emptyTimeout: room.emptyTimeout };
const d = await dispatches.createDispatch('node-room', 'node-agent', {
  metadata: '{"from":"node"}',
});
out.created = { id: d.id, agentName: d.agentName, room: d.room, metadata: d.metadata };
const listed = await dispatches.listDispatch('node-room');
out.listed = listed.map((x) => ({ id: x.id, jobs: x.state?.jobs?.map((j) => j.id) ?? [] }));
out.got = (await dispatches.getDispatch(d.id, 'node-room'))?.id ?? null;
out.rooms = (await rooms.listRooms()).map((r) => r.name);
// The Node SDK's deleteDispatch resolves to nothing.
out.deleted = (await dispatches.deleteDispatch(d.id, 'node-room')) ?? null;
out.listedAfterDelete = (await dispatches.listDispatch('node-room')).length;
out.deleteAgain = await errorOf(dispatches.deleteDispatch(d.id, 'node-room'));
out.wrongSecret = await errorOf(
  new RoomServiceClient(url, key, 'not-the-secret').listRooms(),
);
await rooms.deleteRoom('node-room');
out.roomsAfterDelete = (await rooms.listRooms()).length;
console.log(JSON.stringify(out));
