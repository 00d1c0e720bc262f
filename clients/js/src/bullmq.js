// BullMQ: a processor wrapper that mirrors a BullMQ job into a rejoin job.
//
//   const worker = new Worker('scan', rejoinProcessor(rejoin, async (job) => {
//     await job.updateProgress({ progress: 50, message: 'half way' });
//     return { books: 42 };
//   }), { connection });
//   const { jobId, clientToken } = await enqueue(queue, rejoin, 'scan', data);
//
// A run creates or adopts its rejoin job (the id `enqueue` put in the job's
// data as `rejoinJobId`, or one derived from the queue and the BullMQ job
// id), skips the work when that job has already finished, mirrors each
// `job.updateProgress` as a progress event, completes the job with the
// processor's result, and fails it with the error when BullMQ will not try
// again (attempts used up, or an UnrecoverableError). Every event's
// Idempotency-Key is scoped by the queue and the BullMQ job id, which BullMQ
// keeps across retries and stalled-job recovery, so a rerun posts nothing
// twice. Nothing here imports bullmq: it works on the job BullMQ hands over.

import { failureOf, finishedStatuses, RejoinError } from './producer.js';

/** Where a job id derived from a BullMQ job lives (a UUID v5 namespace). */
const NAMESPACE = '0e6f3a52-7c4d-4b8e-a1f9-5d2c8b7e6a30';

/** The rejoin job a BullMQ job reports to when its data names none. */
export async function jobIdFor(queueName, bullJobId) {
  const ns = NAMESPACE.replace(/-/g, '').match(/../g).map((h) => parseInt(h, 16));
  const name = new TextEncoder().encode(`${queueName}:${bullJobId}`);
  const hash = new Uint8Array(await crypto.subtle.digest('SHA-1', new Uint8Array([...ns, ...name])));
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = Array.from(hash.slice(0, 16), (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Creates the rejoin job, then adds the BullMQ job carrying its id;
 * the rejoin job's `{jobId, clientToken, clientTokenExpiresAt, websocketUrl}`. */
export async function enqueue(queue, rejoin, name, data = {}, opts = {}, job = {}) {
  const created = await rejoin.createJob({
    ...job,
    metadata: { bullmqQueue: queue.name, bullmqName: name, ...(job.metadata ?? {}) },
  });
  await queue.add(name, { ...data, rejoinJobId: created.id }, opts);
  return created.info;
}

/** Whether BullMQ will run the job again after `error`. */
function willRetry(job, error) {
  if (error && error.name === 'UnrecoverableError') return false;
  return job.attemptsMade + 1 < (job.opts?.attempts ?? 1);
}

/** A BullMQ progress value as a rejoin event: a number is a percentage;
 * `{progress, message?, data?}` too; anything else a `progress` message. */
function progressEvent(value) {
  if (typeof value === 'number') return { type: 'progress', progress: value };
  if (value && typeof value === 'object' && typeof value.progress === 'number') {
    const body = { type: 'progress', progress: value.progress };
    if (typeof value.message === 'string') body.message = value.message;
    if (value.data !== undefined) body.data = value.data;
    return body;
  }
  return { type: 'message', name: 'progress', data: { value } };
}

async function finish(job, body) {
  try {
    await job.post(body);
  } catch (error) {
    // An earlier run finished the job: its outcome stands.
    if (!(error instanceof RejoinError && error.code === 'job_finished')) throw error;
  }
}

/** Wraps a BullMQ processor `(job, token, rejoinJob) => result`. */
export function rejoinProcessor(rejoin, processor) {
  return async (job, token) => {
    const scope = `${job.queueName}:${job.id}`;
    const rejoinJob = await rejoin.createJob({
      jobId: job.data?.rejoinJobId ?? (await jobIdFor(job.queueName, job.id)),
      metadata: { bullmqQueue: job.queueName, bullmqName: job.name },
      scope,
    });
    const { status } = await rejoinJob.state();
    if (finishedStatuses.has(status)) return undefined;
    const updateProgress = job.updateProgress.bind(job);
    job.updateProgress = async (value) => {
      await updateProgress(value);
      await rejoinJob.post(progressEvent(value));
    };
    let result;
    try {
      result = await processor(job, token, rejoinJob);
    } catch (error) {
      if (!willRetry(job, error)) await finish(rejoinJob, failureOf(error));
      throw error;
    }
    await finish(rejoinJob, result === undefined ? { type: 'completed' } : { type: 'completed', result });
    return result;
  };
}
