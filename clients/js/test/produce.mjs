// Drives the producer for the server's tests (tests/producers.rs).
//
//   node produce.mjs run        a job: ten progress events and a message,
//                               completed by Rejoin.run; prints {"jobId"}
//                               once it exists, then {"seqs": [...]}
//   node produce.mjs worker     a BullMQ worker whose processor reports a
//                               step then throws (two attempts)
//   node produce.mjs enqueue    enqueues one job for it; prints {"jobId"}
//
// REJOIN_URL and REJOIN_TOKEN name the server; REDIS_URL and QUEUE the queue.

import { Queue, Worker } from 'bullmq';
import { Rejoin } from '@rejoin/client/producer';
import { enqueue, rejoinProcessor } from '@rejoin/client/bullmq';

// Quick retries: the tests lose answers on purpose.
const rejoin = new Rejoin({
  url: process.env.REJOIN_URL,
  token: process.env.REJOIN_TOKEN,
  backoff: { attempts: 10, baseMs: 10, capMs: 100 },
});
const say = (line) => console.log(JSON.stringify(line));
const redis = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/0');
const connection = { host: redis.hostname, port: Number(redis.port || 6379), db: Number(redis.pathname.slice(1) || 0) };
const queueName = process.env.QUEUE ?? 'rejoin-failing';

switch (process.argv[2]) {
  case 'run': {
    const seqs = [];
    await rejoin.run(
      async (job) => {
        say({ jobId: job.id });
        for (let step = 1; step <= 10; step++) seqs.push(await job.progress(step * 10, `step ${step} of 10`));
        seqs.push(await job.message('book_found', { isbn: '978-0' }));
      },
      { metadata: { producer: 'node' } },
    );
    say({ seqs });
    break;
  }
  case 'worker': {
    const processor = rejoinProcessor(rejoin, async (job) => {
      await job.updateProgress({ progress: 30, message: `attempt ${job.attemptsMade + 1}: step 3` });
      throw new Error('the shelf fell over');
    });
    new Worker(queueName, processor, { connection: { ...connection, maxRetriesPerRequest: null } });
    break;
  }
  case 'enqueue': {
    const queue = new Queue(queueName, { connection });
    const job = await enqueue(queue, rejoin, 'topple', {}, { attempts: 2 });
    say({ jobId: job.jobId, clientToken: job.clientToken });
    await queue.close();
    break;
  }
  default:
    console.error('usage: node produce.mjs run | worker | enqueue');
    process.exit(2);
}
