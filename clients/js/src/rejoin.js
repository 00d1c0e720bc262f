// rejoin.js: a dependency-free client for rejoin's resumable job progress, for
// browsers and Node.js (22+, or 20 with --experimental-websocket). The package
// `@rejoin/client` (clients/js); the server also serves this file at
// /client/rejoin.js.
//
//   import { RejoinClient } from "@rejoin/client";   // or "/client/rejoin.js"
//   const client = new RejoinClient({ jobId, token, url: "wss://rejoin.example.com/ws/progress" });
//   client.addEventListener("event", (e) => render(e.detail));     // each job event, once, in order
//   client.addEventListener("state", (e) => show(e.detail.state));  // connecting, live, reconnecting, finished, ...
//   client.start();
//
// It keeps `lastSeq`, `epoch` and `sessionId`, reconnects with full-jitter
// backoff after unexpected closes (at once on `online` and when the page
// becomes visible), detects a silent connection with an application ping,
// drops duplicate seqs, honours Retry-After, refreshes its token before it
// expires, stops for good when the job finishes, another connection takes
// over, or the token cannot be renewed, and falls back to Server-Sent Events
// when WebSockets cannot get through. See docs/CLIENT_JS.md.

/** Close reasons the server sends that mean "do not reconnect". */
export const JOB_FINISHED = "job finished";
export const REPLACED = "Client reconnecting";

/** Codes this client uses when it closes a socket itself. */
export const CLOSE_SILENT = 4000; // no message within pingTimeout
export const CLOSE_OFFLINE = 4001; // the browser went offline
export const CLOSE_STOPPED = 1000; // stop() was called

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const JOB_EVENTS = new Set(["progress", "message", "completed", "failed", "cancelled", "stalled"]);

/** The states a client moves through. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  LIVE: "live",
  RECONNECTING: "reconnecting",
  FINISHED: "finished", // the job completed, failed or was cancelled
  REPLACED: "replaced", // our session was taken over by a newer socket of ours
  FAILED: "failed", // refused for good (401 after a failed refresh, 400, 403, 404, a protocol error)
  STOPPED: "stopped", // stop() was called
});

/** Full-jitter backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

/** True for the events after which nothing more comes. */
export function isTerminal(event) {
  return TERMINAL.has(event.type);
}

const hasWindow = typeof globalThis.addEventListener === "function";
const hasDocument = typeof globalThis.document !== "undefined";

function defaultUrl() {
  if (typeof globalThis.location === "undefined") {
    throw new TypeError("url is required outside a browser page");
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/progress`;
}

/** Seconds until a JWT expires (Infinity when it cannot be read). */
export function secondsLeft(token, now = Date.now()) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof payload.exp === "number" ? payload.exp - now / 1000 : Infinity;
  } catch {
    return Infinity;
  }
}

/** The longest wait a Retry-After is followed for, in seconds. */
export const MAX_RETRY_AFTER_SECS = 3600;

/** Seconds a Retry-After value asks for: a number of seconds or an HTTP
 * date, clamped to [0, MAX_RETRY_AFTER_SECS]; null when absent or
 * unreadable (including a number that is not finite). */
export function retryAfterSecs(value, now = Date.now()) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const text = String(value).trim();
  let secs = Number(text);
  if (!Number.isFinite(secs)) {
    if (/^[+-]?(inf|infinity|nan)$/i.test(text) || !Number.isNaN(secs)) return null;
    const at = Date.parse(text);
    if (Number.isNaN(at)) return null;
    secs = (at - now) / 1000;
  }
  return Math.min(MAX_RETRY_AFTER_SECS, Math.max(0, secs));
}

/** How long to wait before coming back after 1012 (the node restarted or
 * lost its lease): a random 0–1 s, so a node's clients do not all return
 * at one instant. */
export function restartDelayMs(random = Math.random) {
  return Math.floor(random() * 1000);
}

export class RejoinClient extends EventTarget {
  /** @param {object} options see RejoinOptions in rejoin.d.ts and docs/CLIENT_JS.md */
  constructor(options) {
    super();
    if (!options || !options.jobId || !options.token) throw new TypeError("jobId and token are required");
    this.options = {
      baseDelayMs: 500,
      maxDelayMs: 20000,
      pingIntervalMs: 15000,
      pingTimeoutMs: 10000,
      ackIntervalMs: 1000,
      refreshBeforeSecs: 60,
      tokenInProtocol: true,
      transport: "auto",
      sseAfterFailures: 2,
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
    /** "websocket" or "sse": what the next connection uses. */
    this.transport = this.options.transport === "sse" ? "sse" : "websocket";
    this.attempt = 0; // consecutive failed attempts, for the backoff
    this.hasConnected = this.lastSeq !== null;
    this.socket = null; // the open WebSocket, or { close } of the SSE stream
    this._upgradeFailures = 0; // handshakes refused although the probe said 426
    this._timer = null;
    this._pingTimer = null;
    this._silenceTimer = null;
    this._ackTimer = null;
    this._refreshTimer = null;
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
    if (hasWindow) {
      addEventListener("online", this._onOnline);
      addEventListener("offline", this._onOffline);
    }
    if (hasDocument) document.addEventListener("visibilitychange", this._onVisible);
    this._connect();
  }

  /** Closes the connection and stops reconnecting. */
  stop() {
    const socket = this.socket;
    this._end(State.STOPPED);
    if (socket) socket.close(CLOSE_STOPPED, "client stopped");
  }

  /**
   * Reconnect now if the connection is not live (the app came to the
   * foreground, the network changed): the backoff is reset.
   */
  wake() {
    this._wake("app");
  }

  _setState(state, detail = {}) {
    if (this.state === state && !detail.retryInMs) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  _final() {
    return [State.FINISHED, State.REPLACED, State.FAILED, State.STOPPED].includes(this.state);
  }

  _end(state, detail) {
    this._clearTimers();
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    this._timer = this._refreshTimer = null;
    if (hasWindow) {
      removeEventListener("online", this._onOnline);
      removeEventListener("offline", this._onOffline);
    }
    if (hasDocument) document.removeEventListener("visibilitychange", this._onVisible);
    this._setState(state, detail);
  }

  /** The resume parameters of the next connection. */
  _params() {
    const params = new URLSearchParams({ jobId: this.jobId });
    if (this.hasConnected) {
      params.set("reconnect", "true");
      // Name our own session: each tab or device watching the job has one,
      // and a resume continues ours without touching the others'.
      if (this.sessionId) params.set("sessionId", this.sessionId);
      if (this.lastSeq !== null) params.set("lastSeq", String(this.lastSeq));
      if (this.epoch) params.set("epoch", this.epoch);
    }
    return params;
  }

  async _connect() {
    this._timer = null;
    if (this._final()) return;
    this._setState(this.hasConnected ? State.RECONNECTING : State.CONNECTING);
    if (secondsLeft(this.token) < 30 && !(await this._refresh())) return;
    if (this._final()) return;
    const WS = this.options.WebSocket ?? globalThis.WebSocket;
    if (this.transport === "websocket" && typeof WS !== "function") this.transport = "sse";
    if (this.transport === "sse") return this._connectSse();
    const params = this._params();
    if (!this.options.tokenInProtocol) params.set("token", this.token);
    const protocols = this.options.tokenInProtocol ? ["rejoin", `bearer.${this.token}`] : undefined;
    let socket;
    try {
      socket = new WS(`${this.url}?${params}`, protocols);
    } catch (err) {
      this._emitError("connect", err);
      this._schedule();
      return;
    }
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this._upgradeFailures = 0;
    };
    socket.onmessage = (msg) => {
      if (typeof msg.data === "string") this._message(socket, msg.data);
    };
    let ended = false;
    const end = (code, reason) => {
      if (ended) return;
      ended = true;
      if (this.socket === socket) this.socket = null;
      this._clearTimers();
      this._closed(code, reason, opened);
    };
    socket.onclose = (close) => end(close.code, close.reason);
    // A connection given up for dead ends now: its closing handshake can
    // wait as long as the dead network does.
    socket.abandon = (code, reason) => end(code, reason);
    // Some runtimes (Node 20's) report a refused handshake only as an error.
    socket.onerror = () => {
      if (!opened) end(1006, "");
    };
  }

  /** The job's messages over Server-Sent Events, read with fetch (so the
   * token travels in a header, not the URL). */
  async _connectSse() {
    const abort = new AbortController();
    const stream = { close: () => abort.abort(), sse: true };
    this.socket = stream;
    const fetchFn = this.options.fetch ?? globalThis.fetch;
    let res;
    try {
      res = await fetchFn(`${this.httpBase}/v1/jobs/${this.jobId}/stream?${this._params()}`, {
        headers: { Authorization: `Bearer ${this.token}`, Accept: "text/event-stream" },
        signal: abort.signal,
      });
    } catch (err) {
      if (this.socket === stream) this.socket = null;
      if (!abort.signal.aborted) this._emitError("connect", err);
      if (!this._final()) this._schedule();
      return;
    }
    if (res.status === 204) {
      this.socket = null;
      return this._end(State.FINISHED); // resumed at the end: nothing more to come
    }
    if (!res.ok) {
      this.socket = null;
      return this._refused(res);
    }
    let closeFrame = null;
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      const reader = res.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
          }
          if (isCommentBlock(block)) {
            this._heard();
            continue;
          }
          if (event === "close") closeFrame = JSON.parse(data);
          else this._message(stream, data);
        }
      }
    } catch (err) {
      if (!abort.signal.aborted) this._emitError("stream", err);
    }
    if (this.socket === stream) this.socket = null;
    this._clearTimers();
    if (closeFrame) this._closed(closeFrame.code, closeFrame.reason, true);
    else this._closed(1006, "", true);
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
    if (JOB_EVENTS.has(msg.type)) {
      if (this.lastSeq !== null && msg.seq <= this.lastSeq) return; // seen before
      this.lastSeq = msg.seq;
      this.dispatchEvent(new CustomEvent("event", { detail: msg }));
      this._scheduleAck();
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
        this._setState(State.LIVE, {
          resumed: msg.resumed === true,
          missed: msg.missed ?? 0,
          transport: this.transport,
        });
        this._startPings();
        this._planRefresh();
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
    if (code === 1012) return this._scheduleIn(restartDelayMs());
    if (!opened) {
      // The handshake failed: the browser hides the HTTP status, so ask.
      this._probe();
      return;
    }
    this._schedule();
  }

  /**
   * After a refused handshake: the same URL as a plain GET answers with the
   * status the handshake got (426 when it would have been accepted).
   */
  async _probe() {
    const fetchFn = this.options.fetch ?? globalThis.fetch;
    let res;
    try {
      res = await fetchFn(`${this.httpBase}/ws/progress?${this._params()}`, {
        headers: { Authorization: `Bearer ${this.token}` },
      });
    } catch {
      return this._schedule(); // offline or unreachable: just back off
    }
    if (res.status === 426) {
      // Accepted, yet the upgrade failed: something on the way blocks
      // WebSockets. After a few, use Server-Sent Events instead.
      this._upgradeFailures += 1;
      if (this.options.transport === "auto" && this._upgradeFailures >= this.options.sseAfterFailures) {
        this.transport = "sse";
        this.dispatchEvent(new CustomEvent("fallback", { detail: { transport: "sse" } }));
        return this._connect();
      }
      return this._schedule();
    }
    return this._refused(res);
  }

  /** A refused connection or probe: stop, refresh, or wait as it says. */
  async _refused(res) {
    const status = res.status;
    let body = {};
    try {
      body = await res.json();
    } catch {
      // not JSON: the status says enough
    }
    const code = body.error?.code ?? String(status);
    if (status === 401) {
      if (await this._refresh()) return this._schedule();
      return; // _refresh ended the client
    }
    if (status === 400 || status === 403 || status === 404 || status === 410) {
      return this._end(State.FAILED, { code: status, reason: code });
    }
    if (status === 429 || status === 503) {
      const secs = retryAfterSecs(res.headers.get("retry-after"));
      if (secs !== null) return this._schedule(secs * 1000);
    }
    this._schedule();
  }

  /**
   * A fresh token: from `refreshToken()`, or `POST /v1/jobs/{id}/token`
   * with the current one. Resolves false, having ended the client, when the
   * token cannot be renewed (the server refuses it: expired or revoked).
   */
  async _refresh() {
    try {
      if (this.options.refreshToken) {
        this.token = await this.options.refreshToken();
        this._planRefresh();
        return true;
      }
      const fetchFn = this.options.fetch ?? globalThis.fetch;
      const res = await fetchFn(`${this.httpBase}/v1/jobs/${this.jobId}/token`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}` },
      });
      if (res.ok) {
        this.token = (await res.json()).clientToken;
        this._planRefresh();
        return true;
      }
      if (res.status === 401 || res.status === 403 || res.status === 404 || res.status === 410) {
        this._end(State.FAILED, { code: res.status, reason: "the token cannot be renewed" });
        return false;
      }
    } catch (err) {
      this._emitError("refresh", err);
    }
    return true; // a passing failure (offline, 5xx): retry later with the old token
  }

  /** Renews the token `refreshBeforeSecs` before it expires, while running. */
  _planRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (this._final()) return;
    const left = secondsLeft(this.token);
    if (!Number.isFinite(left)) return;
    const wait = Math.max(0, left - this.options.refreshBeforeSecs) * 1000;
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      this._refresh();
    }, Math.min(wait, 2 ** 31 - 1));
  }

  _schedule(minDelayMs = 0) {
    if (this._final() || this._timer !== null) return;
    const delay = Math.max(
      minDelayMs,
      backoffDelay(this.attempt, this.options.baseDelayMs, this.options.maxDelayMs),
    );
    if (this._scheduleIn(delay)) this.attempt += 1;
  }

  /** Reconnects after exactly `delay` ms; false when it waits for the
   * browser to be online instead. */
  _scheduleIn(delay) {
    if (this._final() || this._timer !== null) return false;
    this._setState(this.hasConnected ? State.RECONNECTING : State.CONNECTING, { retryInMs: delay });
    if (typeof navigator !== "undefined" && navigator.onLine === false) return false; // wait for "online"
    this._timer = setTimeout(() => this._connect(), delay);
    return true;
  }

  /** The network or the page came back: check a live connection with a
   * ping, or try now rather than after the backoff. */
  _wake(why) {
    if (this._final()) return;
    if (this.state === State.LIVE) {
      // A network change may have killed the socket silently: a ping finds out
      // within pingTimeoutMs instead of at the next scheduled ping.
      this._ping();
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
    this._drop(CLOSE_OFFLINE, "browser offline");
  }

  /** Closes the connection and takes it as closed at once. */
  _drop(code, reason) {
    const socket = this.socket;
    if (!socket) return;
    socket.close(code, reason);
    if (socket.abandon) socket.abandon(code, reason);
  }

  _startPings() {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._ping(), this.options.pingIntervalMs);
  }

  _ping() {
    const socket = this.socket;
    if (!socket) return;
    if (!socket.sse) {
      if (socket.readyState !== 1) return; // OPEN
      socket.send(JSON.stringify({ type: "ping" }));
    }
    // The stream has no way up: its keep-alive comments count as the answer.
    if (this._silenceTimer === null) {
      const timeout = socket.sse
        ? Math.max(this.options.pingTimeoutMs, 2 * this.options.pingIntervalMs)
        : this.options.pingTimeoutMs;
      this._silenceTimer = setTimeout(() => {
        this._silenceTimer = null;
        this._drop(CLOSE_SILENT, "no answer to ping");
      }, timeout);
    }
  }

  _heard() {
    clearTimeout(this._silenceTimer);
    this._silenceTimer = null;
  }

  _scheduleAck() {
    if (this._ackTimer !== null || (this.socket && this.socket.sse)) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      const socket = this.socket;
      if (socket && !socket.sse && socket.readyState === 1 && this.lastSeq !== this._acked) {
        this._acked = this.lastSeq;
        socket.send(JSON.stringify({ type: "ack", seq: this.lastSeq }));
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

/** A block of only comment lines (`: keep-alive`). */
function isCommentBlock(block) {
  return block.split("\n").every((l) => l.startsWith(":"));
}
