// rejoin.js against a real rejoin server (see server.js), for what only the
// library shows: its own session among several watchers, the fallback to
// Server-Sent Events, a message that arrives twice, and SSE resumes cut after
// any byte. Resume, backoff, Retry-After, tokens, endings and epochs are the
// conformance suite's (clients/conformance), which `run test` plays against
// bin/rejoin-watch.js.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { RejoinClient, State } from "../src/rejoin.js";
import * as rj from "./server.js";

let server;
before(async () => {
  server = await rj.startServer(["--connect-rate-per-ip", "0"]);
});
after(() => server.stop());

const fast = { baseDelayMs: 50, maxDelayMs: 200, ackIntervalMs: 50 };

test("each watcher resumes its own session; the others are not touched", async () => {
  const job = await rj.createJob(server);
  const phoneNet = await rj.proxy(server.addr);
  const phone = new RejoinClient({ jobId: job, token: rj.client(job), url: phoneNet.ws, ...fast });
  const tab = new RejoinClient({ jobId: job, token: rj.client(job), url: server.ws, ...fast });
  const p = rj.record(phone);
  const t = rj.record(tab);
  phone.start();
  tab.start();
  await rj.until("both live", () => phone.state === State.LIVE && tab.state === State.LIVE);
  const [phoneSession, tabSession] = [phone.sessionId, tab.sessionId];
  assert.notEqual(phoneSession, tabSession);

  phoneNet.cut();
  const seq = await rj.progress(server, job, 50);
  await rj.until("the phone back", () => p.hellos.length === 2);
  assert.equal(phone.sessionId, phoneSession);
  assert.equal(tab.sessionId, tabSession);
  assert.equal(t.hellos.length, 1, "the tab never reconnected");
  await rj.complete(server, job);
  await rj.until("both finished", () => phone.state === State.FINISHED && tab.state === State.FINISHED);
  assert.ok(p.events.some((e) => e.seq === seq) && t.events.some((e) => e.seq === seq));
  assert.deepEqual(p.events.map((e) => e.seq), t.events.map((e) => e.seq));
  phoneNet.close();
});


/** A WebSocket that never gets through, as behind a proxy that blocks upgrades. */
class BlockedWebSocket {
  constructor() {
    setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 5);
  }
  close() {}
}

test("falls back to Server-Sent Events when upgrades cannot get through", async () => {
  const job = await rj.createJob(server, { metadata: { via: "sse" } });
  const via = await rj.proxy(server.addr);
  const c = new RejoinClient({
    jobId: job,
    token: rj.client(job),
    url: via.ws,
    WebSocket: BlockedWebSocket,
    ...fast,
  });
  const seen = rj.record(c);
  let fellBack = false;
  c.addEventListener("fallback", () => (fellBack = true));
  c.start();
  await rj.until("live over SSE", () => c.state === State.LIVE);
  assert.ok(fellBack);
  assert.equal(c.transport, "sse");
  const first = await rj.progress(server, job, 10);
  await rj.until("an event over SSE", () => seen.events.length === 1);

  via.cut();
  const missed = await rj.progress(server, job, 40);
  await rj.until("resumed over SSE", () => seen.hellos.length === 2);
  assert.equal(seen.hellos[1].resumed, true);
  const last = await rj.complete(server, job);
  await rj.until("finished", () => c.state === State.FINISHED);
  assert.deepEqual(seen.events.map((e) => e.seq), [first, missed, last]);

  const h = await rj.history(server, job);
  assert.equal(h.sessions.length, 1);
  for (const e of h.sessions[0].events) {
    if (["connected", "reconnected", "disconnected"].includes(e.kind)) assert.equal(e.details.transport, "sse");
  }
  via.close();
});

/** A WebSocket whose every message arrives twice, as through a faulty relay. */
class DoublingWebSocket extends WebSocket {
  set onmessage(handler) {
    super.onmessage = (m) => {
      handler(m);
      handler(m);
    };
  }
  get onmessage() {
    return super.onmessage;
  }
}

test("a message that arrives twice is applied once", async () => {
  const job = await rj.createJob(server);
  const c = new RejoinClient({ jobId: job, token: rj.client(job), url: server.ws, WebSocket: DoublingWebSocket, ...fast });
  const seen = rj.record(c);
  c.start();
  await rj.until("live", () => c.state === State.LIVE);
  const seqs = [await rj.progress(server, job, 10), await rj.progress(server, job, 20), await rj.complete(server, job)];
  await rj.until("finished", () => c.state === State.FINISHED);
  assert.deepEqual(seen.events.map((e) => e.seq), seqs);
  assert.equal(seen.hellos.length, 2, "the hello itself did come twice");
});

/** One resume over SSE through a proxy that cuts it after `k` bytes: the
 * client, knowing only the events it fully read, resumes again and ends with
 * every event once, in order. Returns how many bytes the resume carried. */
async function resumeCutAfter(k) {
  const job = await rj.createJob(server);
  const via = await rj.proxy(server.addr, { nth: 2, k });
  const c = new RejoinClient({ jobId: job, token: rj.client(job), url: via.ws, transport: "sse", ...fast });
  const seen = rj.record(c);
  c.start();
  await rj.until("live", () => c.state === State.LIVE);
  const first = await rj.progress(server, job, 10);
  await rj.until("the first event", () => seen.events.length === 1);
  via.cut(); // the first stream goes; the resume is the one cut after k bytes
  const missed = [];
  for (const p of [20, 30, 40]) missed.push(await rj.progress(server, job, p));
  await rj.until("resumed", () => seen.hellos.length >= 2);
  const last = await rj.complete(server, job);
  await rj.until(`finished (cut after ${k})`, () => c.state === State.FINISHED);
  assert.deepEqual(seen.events.map((e) => e.seq), [first, ...missed, last], `cut after ${k} bytes`);
  via.close();
  return via.forwarded();
}

test("over SSE, a resume cut after any byte loses nothing and repeats nothing", async () => {
  const length = await resumeCutAfter(Infinity);
  const points = 24;
  for (let i = 0; i <= points; i++) await resumeCutAfter(Math.floor((i * length) / points));
});
