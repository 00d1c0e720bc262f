// A BullMQ processor that scans ten shelves and reports each to rejoin.
//
//   REJOIN_URL=http://127.0.0.1:8080 REJOIN_TOKEN=<service token> \
//     node bullmq-scan.mjs worker          # the worker
//   REJOIN_URL=... REJOIN_TOKEN=... node bullmq-scan.mjs enqueue
//   # {"jobId":"...","clientToken":"..."}
//   rejoin watch --url ws://127.0.0.1:8080 --job <jobId> --token <clientToken>
//
// Redis is REDIS_URL (default redis://127.0.0.1:6379/0) and the queue is
// QUEUE (default rejoin-scan). A worker killed mid-job loses its lock
// within LOCK_MS (default 4000) and the next worker takes the job up again;
// the rerun reports the steps already reported under the same idempotency
// keys, so a watcher sees each step once.

import { Queue, Worker } from 'bullmq';
import { Rejoin } from '@rejoin/client/producer';
import { enqueue, rejoinProcessor } from '@rejoin/client/bullmq';

const STEPS = 10;
const queueName = process.env.QUEUE ?? 'rejoin-scan';
const redis = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/0');
const connection = {
  host: redis.hostname,
  port: Number(redis.port || 6379),
  db: Number(redis.pathname.slice(1) || 0),
  maxRetriesPerRequest: null,
};
const rejoin = new Rejoin({ url: process.env.REJOIN_URL, token: process.env.REJOIN_TOKEN });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function scan(job) {
  for (let shelf = 1; shelf <= STEPS; shelf++) {
    await sleep(500); // the work of one shelf
    await job.updateProgress({ progress: (100 * shelf) / STEPS, message: `shelf ${shelf} of ${STEPS}` });
  }
  return { shelves: STEPS };
}

switch (process.argv[2]) {
  case 'worker': {
    const lockDuration = Number(process.env.LOCK_MS ?? 4000);
    const worker = new Worker(queueName, rejoinProcessor(rejoin, scan), {
      connection,
      lockDuration,
      stalledInterval: Math.max(500, lockDuration / 4),
    });
    worker.on('failed', (job, error) => console.error(`job ${job?.id} failed: ${error.message}`));
    const stop = async () => {
      await worker.close();
      process.exit(0);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    break;
  }
  case 'enqueue': {
    const queue = new Queue(queueName, { connection });
    const job = await enqueue(queue, rejoin, 'scan', {}, { attempts: 3 }, { metadata: { example: 'bullmq-scan' } });
    console.log(JSON.stringify({ jobId: job.jobId, clientToken: job.clientToken }));
    await queue.close();
    break;
  }
  default:
    console.error('usage: node bullmq-scan.mjs worker | enqueue');
    process.exit(2);
}
