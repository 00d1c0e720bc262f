// rejoin.js: a dependency-free browser client for rejoin's resumable job
// progress sockets. Served by the server at /client/rejoin.js.
//
//   import { RejoinClient } from "/client/rejoin.js";
//   const client = new RejoinClient({ jobId, token });
//   client.addEventListener("event", (e) => render(e.detail));     // each job event, once, in order
//   client.addEventListener("state", (e) => show(e.detail.state));  // connecting, live, reconnecting, finished, ...
//   client.start();
//
// It keeps `lastSeq` and `epoch`, reconnects with full-jitter backoff after
// unexpected closes, on `online` and when the page becomes visible, detects a
// silent connection with an application ping, drops duplicate seqs, and stops
// for good when the job finishes or another connection takes over.
// See docs/CLIENT_JS.md.

/** Close reasons the server sends that mean "do not reconnect". */
export const JOB_FINISHED = "job finished";
export const REPLACED = "Client reconnecting";

/** Codes this client uses when it closes a socket itself. */
export const CLOSE_SILENT = 4000; // no message within pingTimeout
export const CLOSE_OFFLINE = 4001; // the browser went offline
export const CLOSE_STOPPED = 1000; // stop() was called

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** The states a client moves through. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  LIVE: "live",
  RECONNECTING: "reconnecting",
  FINISHED: "finished", // the job completed, failed or was cancelled
  REPLACED: "replaced", // our session was taken over by a newer socket of ours
  FAILED: "failed", // refused for good (403/404, or a protocol error)
  STOPPED: "stopped", // stop() was called
});

/** Full-jitter backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/progress`;
}

/** Seconds until a JWT expires (Infinity when it cannot be read). */
function secondsLeft(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return payload.exp - Date.now() / 1000;
  } catch {
    return Infinity;
  }
}

export class RejoinClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.jobId
   * @param {string} options.token            the job's client token
   * @param {string} [options.url]            ws(s)://host/ws/progress (default: this page's host)
   * @param {string} [options.httpBase]       base for HTTP calls (default: derived from url)
   * @param {() => Promise<string>} [options.refreshToken]  returns a fresh token; default: POST /v1/jobs/{id}/token
   * @param {number} [options.baseDelayMs=500]   backoff base
   * @param {number} [options.maxDelayMs=20000]  backoff cap
   * @param {number} [options.pingIntervalMs=15000]  application ping period while live
   * @param {number} [options.pingTimeoutMs=10000]   silence after a ping that counts as a dead connection
   * @param {number} [options.ackIntervalMs=1000]    at most one ack per this period
   * @param {boolean} [options.tokenInProtocol=true] send the token as a subprotocol, not in the URL
   * @param {number} [options.lastSeq]  resume from here (e.g. after a page reload)
   * @param {string} [options.epoch]
   * @param {string} [options.sessionId]  the session to resume (kept with lastSeq and epoch)
   */
  constructor(options) {
    super();
    if (!options || !options.jobId || !options.token) throw new TypeError("jobId and token are required");
    this.options = {
      baseDelayMs: 500,
      maxDelayMs: 20000,
      pingIntervalMs: 15000,
      pingTimeoutMs: 10000,
      ackIntervalMs: 1000,
      tokenInProtocol: true,
      ...options,
    };
    this.url = options.url || defaultUrl();
    this.httpBase = options.httpBase || this.url.replace(/^ws/, "http").replace(/\/ws\/progress.*$/, "");
    this.jobId = options.jobId;
    this.token = options.token;
    this.lastSeq = options.lastSeq ?? null;
    this.epoch = options.epoch ?? null;
    this.sessionId = options.sessionId ?? null;
    this.state = State.IDLE;
    this.attempt = 0; // consecutive failed attempts, for the backoff
    this.hasConnected = this.lastSeq !== null;
    this.socket = null;
    this._timer = null;
    this._pingTimer = null;
    this._silenceTimer = null;
    this._ackTimer = null;
    this._acked = null;
    this._onOnline = () => this._wake("online");
    this._onOffline = () => this._offline();
    this._onVisible = () => {
      if (document.visibilityState === "visible") this._wake("visible");
    };
  }

  /** True while a reconnect is scheduled. */
  get reconnectScheduled() {
    return this._timer !== null;
  }

  start() {
    if (this.state !== State.IDLE && this.state !== State.STOPPED) return;
    addEventListener("online", this._onOnline);
    addEventListener("offline", this._onOffline);
    document.addEventListener("visibilitychange", this._onVisible);
    this._connect();
  }

  /** Closes the socket and stops reconnecting. */
  stop() {
    this._end(State.STOPPED);
    if (this.socket) this.socket.close(CLOSE_STOPPED, "client stopped");
  }

  _setState(state, detail = {}) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  _final() {
    return [State.FINISHED, State.REPLACED, State.FAILED, State.STOPPED].includes(this.state);
  }

  _end(state, detail) {
    this._clearTimers();
    clearTimeout(this._timer);
    this._timer = null;
    removeEventListener("online", this._onOnline);
    removeEventListener("offline", this._onOffline);
    document.removeEventListener("visibilitychange", this._onVisible);
    this._setState(state, detail);
  }

  async _connect() {
    this._timer = null;
    if (this._final()) return;
    this._setState(this.hasConnected ? State.RECONNECTING : State.CONNECTING);
    if (secondsLeft(this.token) < 30) await this._refresh();
    const params = new URLSearchParams({ jobId: this.jobId });
    if (!this.options.tokenInProtocol) params.set("token", this.token);
    if (this.hasConnected) {
      params.set("reconnect", "true");
      // Name our own session: each tab or device watching the job has one,
      // and a resume continues ours without touching the others'.
      if (this.sessionId) params.set("sessionId", this.sessionId);
      if (this.lastSeq !== null) params.set("lastSeq", String(this.lastSeq));
      if (this.epoch) params.set("epoch", this.epoch);
    }
    const protocols = this.options.tokenInProtocol ? ["rejoin", `bearer.${this.token}`] : undefined;
    let socket;
    try {
      socket = new WebSocket(`${this.url}?${params}`, protocols);
    } catch (err) {
      this._emitError("connect", err);
      this._schedule();
      return;
    }
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
    };
    socket.onmessage = (msg) => this._message(socket, msg.data);
    socket.onclose = (close) => {
      if (this.socket === socket) this.socket = null;
      this._clearTimers();
      this._closed(close.code, close.reason, opened);
    };
  }

  _message(socket, data) {
    if (socket !== this.socket) return;
    this._heard();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    switch (msg.type) {
      case "connected":
      case "reconnected":
        // A different epoch means another log: our lastSeq means nothing there,
        // and the server replays from the start, so forget what we saw.
        if (this.epoch && msg.epoch !== this.epoch) this.lastSeq = null;
        this.epoch = msg.epoch;
        this.sessionId = msg.sessionId;
        this.hasConnected = true;
        this.attempt = 0;
        if (msg.type === "connected") this.lastSeq = Math.max(this.lastSeq ?? 0, msg.lastSeq);
        this.dispatchEvent(new CustomEvent("hello", { detail: msg }));
        this._setState(State.LIVE, { resumed: msg.resumed === true, missed: msg.missed ?? 0 });
        this._startPings();
        break;
      case "progress":
      case "message":
      case "completed":
      case "failed":
      case "cancelled":
      case "stalled":
        if (this.lastSeq !== null && msg.seq <= this.lastSeq) return; // seen before
        this.lastSeq = msg.seq;
        this.dispatchEvent(new CustomEvent("event", { detail: msg }));
        this._scheduleAck();
        break;
      case "pong":
        break;
      case "error":
        this._emitError("server", new Error(`${msg.code}: ${msg.message}`));
        break;
    }
  }

  _closed(code, reason, opened) {
    if (this._final()) return;
    if (code === 1000 && reason === JOB_FINISHED) return this._end(State.FINISHED);
    if (code === 1000 && reason === REPLACED) return this._end(State.REPLACED);
    if (code === 1003 || code === 1009) return this._end(State.FAILED, { code, reason });
    if (!opened) {
      // The handshake failed: the browser hides the HTTP status, so ask the API.
      this._probe();
      return;
    }
    this._schedule();
  }

  /** After a refused handshake: 401 refreshes the token, 403/404 stop. */
  async _probe() {
    try {
      const res = await fetch(`${this.httpBase}/v1/jobs/${this.jobId}`, {
        headers: { Authorization: `Bearer ${this.token}` },
      });
      if (res.status === 401) await this._refresh();
      else if (res.status === 403 || res.status === 404) {
        return this._end(State.FAILED, { code: res.status, reason: "refused" });
      }
    } catch {
      // Offline or unreachable: just back off.
    }
    this._schedule();
  }

  async _refresh() {
    try {
      if (this.options.refreshToken) {
        this.token = await this.options.refreshToken();
        return;
      }
      const res = await fetch(`${this.httpBase}/v1/jobs/${this.jobId}/token`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}` },
      });
      if (res.ok) this.token = (await res.json()).clientToken;
    } catch (err) {
      this._emitError("refresh", err);
    }
  }

  _schedule() {
    if (this._final() || this._timer !== null) return;
    this._setState(this.hasConnected ? State.RECONNECTING : State.CONNECTING);
    if (typeof navigator !== "undefined" && navigator.onLine === false) return; // wait for "online"
    const delay = backoffDelay(this.attempt, this.options.baseDelayMs, this.options.maxDelayMs);
    this.attempt += 1;
    this._timer = setTimeout(() => this._connect(), delay);
  }

  /** The network or the page came back: try now rather than after the backoff. */
  _wake(why) {
    if (this._final()) return;
    if (this.state === State.LIVE) {
      if (why === "visible") this._ping();
      return;
    }
    if (this.socket) return; // an attempt is under way
    clearTimeout(this._timer);
    this._timer = null;
    this.attempt = 0;
    this._connect();
  }

  _offline() {
    if (this._final()) return;
    clearTimeout(this._timer);
    this._timer = null;
    if (this.socket) this.socket.close(CLOSE_OFFLINE, "browser offline");
  }

  _startPings() {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._ping(), this.options.pingIntervalMs);
  }

  _ping() {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(JSON.stringify({ type: "ping" }));
    if (this._silenceTimer === null) {
      this._silenceTimer = setTimeout(() => {
        this._silenceTimer = null;
        if (this.socket) this.socket.close(CLOSE_SILENT, "no answer to ping");
      }, this.options.pingTimeoutMs);
    }
  }

  _heard() {
    clearTimeout(this._silenceTimer);
    this._silenceTimer = null;
  }

  _scheduleAck() {
    if (this._ackTimer !== null) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      if (this.socket && this.socket.readyState === WebSocket.OPEN && this.lastSeq !== this._acked) {
        this._acked = this.lastSeq;
        this.socket.send(JSON.stringify({ type: "ack", seq: this.lastSeq }));
      }
    }, this.options.ackIntervalMs);
  }

  _clearTimers() {
    clearInterval(this._pingTimer);
    clearTimeout(this._silenceTimer);
    clearTimeout(this._ackTimer);
    this._pingTimer = this._silenceTimer = this._ackTimer = null;
  }

  _emitError(where, error) {
    this.dispatchEvent(new CustomEvent("error", { detail: { where, error } }));
  }
}

/** True for the events after which nothing more comes. */
export function isTerminal(event) {
  return TERMINAL.has(event.type);
}
