// Types of bullmq.js: rejoin for BullMQ processors. Structural, so that
// this package needs no bullmq types of its own.

import type { CreateJobOptions, Job, JobInfo, Rejoin } from "./producer.js";

/** What the wrapper uses of a BullMQ job. */
export interface BullJob {
  id?: string;
  name: string;
  queueName: string;
  data: any;
  opts: { attempts?: number };
  attemptsMade: number;
  updateProgress(value: any): Promise<void>;
}

/** What `enqueue` uses of a BullMQ queue. */
export interface BullQueue {
  name: string;
  add(name: string, data: any, opts?: any): Promise<unknown>;
}

/** The rejoin job a BullMQ job reports to when its data names none. */
export declare function jobIdFor(queueName: string, bullJobId: string): Promise<string>;

/** Creates the rejoin job, then adds the BullMQ job carrying its id. */
export declare function enqueue(
  queue: BullQueue,
  rejoin: Rejoin,
  name: string,
  data?: Record<string, unknown>,
  opts?: Record<string, unknown>,
  job?: CreateJobOptions,
): Promise<JobInfo>;

/** Wraps a BullMQ processor: the rejoin job mirrors the BullMQ job. */
export declare function rejoinProcessor<J extends BullJob, R>(
  rejoin: Rejoin,
  processor: (job: J, token: string | undefined, rejoinJob: Job) => Promise<R>,
): (job: J, token?: string) => Promise<R | undefined>;
