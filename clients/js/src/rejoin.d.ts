// Types of rejoin.js. The message shapes follow the server's protocol schema
// (docs/protocol.schema.json, served at /protocol.schema.json).

export declare const JOB_FINISHED: "job finished";
export declare const REPLACED: "Client reconnecting";
export declare const CLOSE_SILENT: 4000;
export declare const CLOSE_OFFLINE: 4001;
export declare const CLOSE_STOPPED: 1000;

export declare const State: Readonly<{
  IDLE: "idle";
  CONNECTING: "connecting";
  LIVE: "live";
  RECONNECTING: "reconnecting";
  FINISHED: "finished";
  REPLACED: "replaced";
  FAILED: "failed";
  STOPPED: "stopped";
}>;
export type ClientState = (typeof State)[keyof typeof State];

export type JobStatus = "pending" | "running" | "completed" | "failed" | "cancelled";

/** `connected` or `reconnected`: the job as the log has it now. */
export interface Hello {
  type: "connected" | "reconnected";
  jobId: string;
  sessionId: string;
  epoch: string;
  /** `reconnected` only: the session continued (within its grace window). */
  resumed?: boolean;
  status: JobStatus;
  progress: number;
  message: string | null;
  lastUpdate: string | null;
  lastSeq: number;
  /** `reconnected` only: how many missed job events follow. */
  missed?: number;
}

interface Base {
  seq: number;
  at: string;
}
export interface Progress extends Base {
  type: "progress";
  progress: number;
  message: string | null;
  data: unknown;
}
export interface Message extends Base {
  type: "message";
  name: string;
  data: unknown;
}
export interface Completed extends Base {
  type: "completed";
  result: unknown;
}
export interface Failed extends Base {
  type: "failed";
  error: { code: string; message: string };
}
export interface Cancelled extends Base {
  type: "cancelled";
  reason: string | null;
}
/** Not terminal: the job went quiet; the next job event clears it. */
export interface Stalled extends Base {
  type: "stalled";
  since: string;
}
export type JobEvent = Progress | Message | Completed | Failed | Cancelled | Stalled;

export interface RejoinOptions {
  jobId: string;
  /** The job's client token. */
  token: string;
  /** ws(s)://host/ws/progress (default: this page's host). */
  url?: string;
  /** Base for HTTP calls (default: derived from url). */
  httpBase?: string;
  /** Returns a fresh token; default: POST /v1/jobs/{id}/token with the current one. */
  refreshToken?: () => Promise<string>;
  baseDelayMs?: number;
  maxDelayMs?: number;
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  ackIntervalMs?: number;
  /** Renew the token this long before it expires (default 60). */
  refreshBeforeSecs?: number;
  /** Send the token as a subprotocol rather than in the URL (default true). */
  tokenInProtocol?: boolean;
  /** "auto" (default): WebSocket, Server-Sent Events when upgrades cannot get through. */
  transport?: "auto" | "websocket" | "sse";
  /** Refused upgrades (while the server would accept them) before "auto" falls back (default 2). */
  sseAfterFailures?: number;
  /** Resume from a stored position (after a reload). */
  lastSeq?: number;
  epoch?: string;
  sessionId?: string;
  /** Implementations to use instead of the globals (tests, old runtimes). */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

export interface StateDetail {
  state: ClientState;
  resumed?: boolean;
  missed?: number;
  transport?: "websocket" | "sse";
  /** When a retry is scheduled: in how long. */
  retryInMs?: number;
  /** When refused for good: the HTTP status or close code, and why. */
  code?: number;
  reason?: string;
}

export interface RejoinEventMap {
  state: CustomEvent<StateDetail>;
  hello: CustomEvent<Hello>;
  event: CustomEvent<JobEvent>;
  fallback: CustomEvent<{ transport: "sse" }>;
  error: CustomEvent<{ where: string; error: unknown }>;
}

export declare class RejoinClient extends EventTarget {
  constructor(options: RejoinOptions);
  readonly jobId: string;
  token: string;
  lastSeq: number | null;
  epoch: string | null;
  sessionId: string | null;
  readonly state: ClientState;
  readonly transport: "websocket" | "sse";
  readonly reconnectScheduled: boolean;
  start(): void;
  stop(): void;
  /** Reconnect now if not live (app foregrounded, network changed). */
  wake(): void;
  addEventListener<K extends keyof RejoinEventMap>(
    type: K,
    listener: (event: RejoinEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
}

export declare function backoffDelay(
  attempt: number,
  baseMs: number,
  capMs: number,
  random?: () => number,
): number;
export declare function isTerminal(event: { type: string }): boolean;
export declare function secondsLeft(token: string, now?: number): number;
/** The longest wait a Retry-After is followed for, in seconds (3600). */
export declare const MAX_RETRY_AFTER_SECS: number;
/** Seconds a Retry-After value asks for (seconds or an HTTP date), clamped
 * to [0, MAX_RETRY_AFTER_SECS]; null when absent or unreadable. */
export declare function retryAfterSecs(value: string | null | undefined, now?: number): number | null;
/** The wait before coming back after close code 1012: a random 0–1 s. */
export declare function restartDelayMs(random?: () => number): number;
