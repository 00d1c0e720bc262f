// Types of producer.js: rejoin's producer for Node.js.

/** The server refused a request; never tried again. */
export declare class RejoinError extends Error {
  readonly status: number;
  /** The error's code: `job_finished`, `idempotency_key_reused`, `not_found`, ... */
  readonly code: string;
}

/** Every attempt failed; `last` says how the last one did. */
export declare class Unavailable extends Error {
  readonly attempts: number;
  readonly last: string;
}

export interface Backoff {
  /** Attempts in all, the first included (8). */
  attempts?: number;
  /** Attempt n waits a random time up to min(capMs, baseMs * 2^n) (250, 10000). */
  baseMs?: number;
  capMs?: number;
}

export interface RejoinOptions {
  /** The server, `http://host:port`. */
  url: string;
  /** A service token. */
  token: string;
  backoff?: Backoff;
  /** Each attempt's limit (30000). */
  timeoutMs?: number;
  fetch?: typeof globalThis.fetch;
}

export interface CreateJobOptions {
  /** Adopt this job when it exists (a new UUID when absent). */
  jobId?: string;
  metadata?: Record<string, unknown>;
  clientTokenTtlSecs?: number;
  stallAfterSecs?: number;
  timeoutSecs?: number;
  notify?: "unwatched" | "always" | "never";
  /** Prefix of the idempotency keys derived for the job's events (its id). */
  scope?: string;
}

export interface JobInfo {
  jobId: string;
  clientToken?: string;
  clientTokenExpiresAt?: string;
  websocketUrl?: string;
}

export interface EventOptions {
  /** The Idempotency-Key (derived from the event when absent). */
  key?: string;
}

export type JobEventBody =
  | { type: "progress"; progress: number; message?: string; data?: unknown }
  | { type: "message"; name: string; data?: unknown }
  | { type: "completed"; result?: unknown }
  | { type: "failed"; error: { code: string; message: string } }
  | { type: "cancelled"; reason?: string };

/** Derives Idempotency-Keys: `SCOPE:DIGEST:N`. */
export declare class Keys {
  constructor(scope: string);
  readonly scope: string;
  derive(body: JobEventBody): Promise<string>;
}

/** A service's connection to a rejoin server. */
export declare class Rejoin {
  constructor(options: RejoinOptions);
  readonly url: string;
  /** One request, tried again on connection errors, 408, 429, 502, 503, 504. */
  send(method: string, path: string, body?: unknown, key?: string): Promise<any>;
  /** Creates the job, or adopts it when `jobId` names one. */
  createJob(options?: CreateJobOptions): Promise<Job>;
  /** A job that exists (no request made). */
  adopt(jobId: string, options?: { scope?: string }): Job;
  /** Creates (or adopts) a job, runs `work`, completes the job with its
   * result or fails it with the error (thrown again). */
  run<T>(work: (job: Job) => Promise<T>, options?: CreateJobOptions): Promise<T>;
}

/** One job's events; each call answers the event's seq. */
export declare class Job {
  readonly rejoin: Rejoin;
  readonly info: JobInfo;
  readonly keys: Keys;
  /** A terminal event was posted through this object. */
  readonly finished: boolean;
  readonly id: string;
  post(body: JobEventBody, key?: string): Promise<number>;
  progress(pct: number, message?: string, options?: EventOptions & { data?: unknown }): Promise<number>;
  message(name: string, data?: unknown, options?: EventOptions): Promise<number>;
  complete(result?: unknown, options?: EventOptions): Promise<number>;
  fail(message: string, code?: string, options?: EventOptions): Promise<number>;
  cancel(reason?: string, options?: EventOptions): Promise<number>;
  clientToken(ttlSecs?: number): Promise<{ jobId: string; clientToken: string; clientTokenExpiresAt: string }>;
  state(): Promise<{ status: string; progress: number; lastSeq: number; [k: string]: unknown }>;
}

/** The `failed` event for an error: its name as the code, its message. */
export declare function failureOf(error: unknown): JobEventBody;

export declare const finishedStatuses: ReadonlySet<string>;
