// rejoin's producer for Node.js (and any runtime with fetch and Web
// Crypto): create jobs and report their progress from the services that
// run them. Every call is tried again on connection errors, 408, 429, 502,
// 503 and 504 (honouring Retry-After) with full-jitter backoff, and every
// event carries an Idempotency-Key, so a retry never appends twice.

/** Answers tried again: the request may not have been served, or the
 * server asks to be asked later. Everything else is final. */
const RETRIED_STATUSES = new Set([408, 429, 502, 503, 504]);
/** The longest Retry-After honoured, in milliseconds. */
const MAX_RETRY_AFTER_MS = 60_000;
const FINISHED = new Set(['completed', 'failed', 'cancelled']);

/** The server refused a request; never tried again. */
export class RejoinError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.name = 'RejoinError';
    this.status = status;
    this.code = code;
  }
}

/** Every attempt failed; `last` says how the last one did. */
export class Unavailable extends Error {
  constructor(attempts, last) {
    super(`rejoin unavailable after ${attempts} attempts: ${last}`);
    this.name = 'Unavailable';
    this.attempts = attempts;
    this.last = last;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Attempt `n` (from 0) waits a random time up to `min(cap, base * 2^n)`,
 * and at least what a Retry-After asked for. */
function delayMs({ baseMs, capMs }, attempt, retryAfterMs) {
  const jitter = Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
  return retryAfterMs == null ? jitter : Math.max(jitter, Math.min(retryAfterMs, MAX_RETRY_AFTER_MS));
}

function retryAfterMs(value) {
  const secs = value == null || value.trim() === '' ? NaN : Number(value);
  return Number.isFinite(secs) ? Math.max(0, secs) * 1000 : null;
}

function refusal(status, text) {
  let code = 'http_error';
  let message = text.slice(0, 500);
  try {
    const error = JSON.parse(text).error;
    if (error && typeof error.code === 'string') {
      code = error.code;
      message = String(error.message);
    }
  } catch {
    // not JSON: the text is the message
  }
  return new RejoinError(status, code, message);
}

/** JSON with its object keys sorted, for a digest that ignores key order. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

async function sha256Hex(text) {
  const bytes = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Derives each event's Idempotency-Key: `SCOPE:DIGEST:N`, where DIGEST is
 * a digest of the event and N counts the same event posted before in this
 * run. A rerun of the same work (a BullMQ retry, a restarted script) derives
 * the same keys for the same events, whatever else it did in between. */
export class Keys {
  constructor(scope) {
    this.scope = scope;
    this.seen = new Map();
  }

  /** Counted at the call, so the order of calls decides N. */
  async derive(body) {
    const text = canonical(body);
    const n = (this.seen.get(text) ?? 0) + 1;
    this.seen.set(text, n);
    return `${this.scope}:${(await sha256Hex(text)).slice(0, 24)}:${n}`;
  }
}

/** A service's connection to a rejoin server. */
export class Rejoin {
  /**
   * @param {object} options
   * @param {string} options.url the server, `http://host:port`
   * @param {string} options.token a service token
   */
  constructor({ url, token, backoff = {}, timeoutMs = 30_000, fetch = globalThis.fetch }) {
    if (!url || !token) throw new TypeError('rejoin: a url and a service token are needed');
    this.url = url.replace(/\/+$/, '');
    this.token = token;
    this.backoff = { attempts: 8, baseMs: 250, capMs: 10_000, ...backoff };
    this.timeoutMs = timeoutMs;
    this.fetch = fetch;
  }

  /** Sends one request, tried again as `backoff` says; its JSON answer. */
  async send(method, path, body, key) {
    const headers = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (key !== undefined) headers['idempotency-key'] = key;
    for (let made = 1; ; made++) {
      let why;
      let wait = null;
      try {
        const res = await this.fetch(this.url + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        const text = await res.text();
        if (res.ok) return text ? JSON.parse(text) : {};
        if (!RETRIED_STATUSES.has(res.status)) throw refusal(res.status, text);
        why = `HTTP ${res.status}`;
        wait = retryAfterMs(res.headers.get('retry-after'));
      } catch (error) {
        if (error instanceof RejoinError) throw error;
        why = `${error?.name ?? 'Error'}: ${error?.cause?.code ?? error?.message ?? error}`;
      }
      if (made >= this.backoff.attempts) throw new Unavailable(made, why);
      await sleep(delayMs(this.backoff, made - 1, wait));
    }
  }

  /** Creates the job, or adopts it when `jobId` names one that exists.
   * `scope` prefixes the idempotency keys derived for its events (the
   * job's id when not given). */
  async createJob({ jobId, metadata, clientTokenTtlSecs, stallAfterSecs, timeoutSecs, notify, scope } = {}) {
    // The id is chosen here, so a retried creation finds the job the first
    // attempt made.
    const body = omitUndefined({
      jobId: jobId ?? crypto.randomUUID(),
      metadata,
      clientTokenTtlSecs,
      stallAfterSecs,
      timeoutSecs,
      notify,
    });
    const info = await this.send('POST', '/v1/jobs', body);
    return new Job(this, info, scope);
  }

  /** A job that exists, for posting its events (no request made). */
  adopt(jobId, { scope } = {}) {
    return new Job(this, { jobId }, scope);
  }

  /** Creates (or adopts) a job, runs `work(job)`, then completes the job
   * with its result, or fails it with the error's name and message and
   * throws the error again. */
  async run(work, options = {}) {
    const job = await this.createJob(options);
    let result;
    try {
      result = await work(job);
    } catch (error) {
      if (!job.finished) await job.post(failureOf(error));
      throw error;
    }
    if (!job.finished) await job.complete(result);
    return result;
  }
}

/** The `failed` event for an error: its name as the code, its message. */
export function failureOf(error) {
  const code = (error && error.name) || 'Error';
  const message = (error && error.message) || String(error) || code;
  return { type: 'failed', error: { code, message: message.slice(0, 2000) } };
}

/** One job's events. */
export class Job {
  constructor(rejoin, info, scope) {
    this.rejoin = rejoin;
    /** `{jobId, clientToken?, clientTokenExpiresAt?, websocketUrl?}` */
    this.info = info;
    this.keys = new Keys(scope ?? info.jobId);
    this.finished = false;
  }

  get id() {
    return this.info.jobId;
  }

  /** Appends one event (an Idempotency-Key derived when `key` is not
   * given); its seq. */
  async post(body, key) {
    const derived = key === undefined ? this.keys.derive(body) : Promise.resolve(key);
    const answer = await this.rejoin.send('POST', `/v1/jobs/${this.id}/events`, body, await derived);
    if (FINISHED.has(body.type)) this.finished = true;
    return answer.seq;
  }

  progress(pct, message, { data, key } = {}) {
    return this.post(omitUndefined({ type: 'progress', progress: pct, message, data }), key);
  }

  message(name, data, { key } = {}) {
    return this.post(omitUndefined({ type: 'message', name, data }), key);
  }

  complete(result, { key } = {}) {
    return this.post(omitUndefined({ type: 'completed', result }), key);
  }

  fail(message, code = 'error', { key } = {}) {
    return this.post({ type: 'failed', error: { code, message } }, key);
  }

  cancel(reason, { key } = {}) {
    return this.post(omitUndefined({ type: 'cancelled', reason }), key);
  }

  /** A fresh token for the job's watcher: `{clientToken, clientTokenExpiresAt}`. */
  clientToken(ttlSecs) {
    return this.rejoin.send('POST', `/v1/jobs/${this.id}/token`, ttlSecs === undefined ? {} : { ttlSecs });
  }

  /** The job's state as the server folds it (`status`, `progress`, ...). */
  state() {
    return this.rejoin.send('GET', `/v1/jobs/${this.id}`);
  }
}

function omitUndefined(body) {
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return body;
}

export const finishedStatuses = FINISHED;
