// A real rejoin server for the tests: the `rejoin` binary (REJOIN_BIN, or
// the workspace's target/debug/rejoin, built by `cargo build`) on port 0 over
// a fresh SQLite file; tokens signed with its secret; a TCP proxy to cut
// connections the way a network does.

import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.REJOIN_BIN ?? path.join(here, "../../../target/debug/rejoin");
export const SECRET = "clients-js-test-secret-0123456789";

/** Starts `rejoin serve` with `extra` flags; resolves once it listens. */
export async function startServer(extra = []) {
  const dir = mkdtempSync(path.join(tmpdir(), "rejoin-js-"));
  const args = [
    "serve",
    "--listen", "127.0.0.1:0",
    "--database-url", `sqlite://${path.join(dir, "rejoin.db")}`,
    "--jwt-secret", SECRET,
    ...extra,
  ];
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", process.env.TEST_LOG ? "inherit" : "ignore"] });
  const line = await new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`rejoin exited with ${code} (built? ${BIN})`)));
    createInterface({ input: child.stdout }).once("line", resolve);
  });
  const addr = line.split("http://").pop().trim();
  return {
    addr,
    http: `http://${addr}`,
    ws: `ws://${addr}/ws/progress`,
    stop: () => child.kill("SIGTERM"),
  };
}

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** A token signed with the tests' secret. */
export function token(claims) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub: `test:${claims.role}`, exp: now + 3600, ...claims }));
  const sig = createHmac("sha256", SECRET).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${sig}`;
}

export const service = () => token({ role: "service" });
export const client = (job, extra = {}) => token({ role: "client", job, ...extra });

async function call(server, method, path, body, tok = service()) {
  const res = await fetch(`${server.http}${path}`, {
    method,
    headers: { Authorization: `Bearer ${tok}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export async function createJob(server, body = {}) {
  return (await call(server, "POST", "/v1/jobs", body)).jobId;
}

export async function post(server, job, event) {
  return (await call(server, "POST", `/v1/jobs/${job}/events`, event)).seq;
}

export const progress = (server, job, p) => post(server, job, { type: "progress", progress: p });
export const complete = (server, job) => post(server, job, { type: "completed", result: { ok: true } });

export async function history(server, job) {
  return call(server, "GET", `/v1/jobs/${job}/history`, undefined, token({ role: "support" }));
}

export async function job(server, id) {
  return call(server, "GET", `/v1/jobs/${id}`);
}

/** Polls until `check()` is true (at most 15 s). */
export async function until(what, check) {
  const deadline = Date.now() + 15000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A TCP proxy to `addr`; `cut()` destroys every connection through it.
 * With `nth` (from 1), that connection passes the server's first `k` bytes
 * and is then reset on both sides, the way a network drops a connection
 * mid-message; `forwarded()` is what it passed. */
export async function proxy(addr, { nth = 0, k = Infinity } = {}) {
  const [host, port] = addr.split(":");
  const sockets = new Set();
  let count = 0;
  let forwarded = 0;
  const server = net.createServer((inbound) => {
    count += 1;
    const outbound = net.connect(Number(port), host);
    for (const [s, other] of [[inbound, outbound], [outbound, inbound]]) {
      sockets.add(s);
      s.on("error", () => {});
      // A side that closes (or fails) closes the other, as a TCP peer would.
      s.on("close", () => {
        sockets.delete(s);
        other.end();
      });
    }
    inbound.pipe(outbound);
    if (count !== nth) return outbound.pipe(inbound);
    outbound.on("data", (chunk) => {
      const room = k - forwarded;
      if (chunk.length <= room) {
        forwarded += chunk.length;
        inbound.write(chunk);
        return;
      }
      forwarded = k;
      outbound.pause();
      inbound.write(chunk.subarray(0, room), () => {
        inbound.resetAndDestroy();
        outbound.resetAndDestroy();
      });
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const p = `127.0.0.1:${server.address().port}`;
  return {
    http: `http://${p}`,
    ws: `ws://${p}/ws/progress`,
    forwarded: () => forwarded,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    close: () => server.close(),
  };
}

/** Collects a client's job events, states and hellos. */
export function record(client) {
  const seen = { events: [], states: [], hellos: [] };
  client.addEventListener("event", (e) => seen.events.push(e.detail));
  client.addEventListener("state", (e) => seen.states.push({ ...e.detail, at: Date.now() }));
  client.addEventListener("hello", (e) => seen.hellos.push(e.detail));
  return seen;
}

export { randomUUID };
