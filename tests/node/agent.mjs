// An unmodified @livekit/agents worker, as a user would write one.
// EDT_OUT: folder where each job writes <job id>.json with what it saw.
// EDT_AGENT: agent name.  EDT_MODE: "record" (default), "sleep" (run until
// terminated; writes <job id>.terminated when the shutdown request arrives)
// or "connect" (join the room with ctx.connect(), greet it over data, and
// stay until the room is gone).
import { cli, defineAgent, ServerOptions } from '@livekit/agents';
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const out = process.env.EDT_OUT ?? '.';

export default defineAgent({
  entry: async (ctx) => {
    const job = ctx.job;
    const record = {
      job_id: job.id,
      dispatch_id: job.dispatchId,
      agent_name: job.agentName,
      room: job.room?.name,
      metadata: job.metadata,
      attributes: job.attributes,
      pid: process.pid,
    };
    const tmp = join(out, `.${job.id}.tmp`);
    writeFileSync(tmp, JSON.stringify(record));
    renameSync(tmp, join(out, `${job.id}.json`));
    if (process.env.EDT_MODE === 'connect') {
      await ctx.connect();
      const greeting = new TextEncoder().encode(`hello from node ${job.id}`);
      await ctx.room.localParticipant.publishData(greeting, { reliable: true, topic: 'greeting' });
      await new Promise((resolve) => ctx.room.once('disconnected', resolve));
    }
    if (process.env.EDT_MODE === 'sleep') {
      ctx.addShutdownCallback(async () => {
        writeFileSync(join(out, `${job.id}.terminated`), 'yes');
      });
      await new Promise((resolve) => setTimeout(resolve, 3_600_000));
    }
    ctx.shutdown('done');
  },
});

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  cli.runApp(
    new ServerOptions({
      agent: fileURLToPath(import.meta.url),
      agentName: process.env.EDT_AGENT ?? 'node-agent',
      // Whole-machine CPU would make a busy test box look full.
      loadFunc: async () => 0,
      numIdleProcesses: 1,
      // Its health server: a free port the test picked (0 would mean 8081).
      port: Number(process.env.EDT_PORT ?? 0),
    }),
  );
}
