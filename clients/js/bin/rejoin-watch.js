#!/usr/bin/env node
// rejoin-watch: a job followed from a terminal with rejoin.js, one JSON line
// per update on stdout. Exits 0 when the job completed, 1 otherwise.
//
//   rejoin-watch --url ws://HOST:PORT/ws/progress --job ID --token T
//                [--last-seq N --session-id S --epoch E]
//                [--ping-secs 15] [--retry-base-secs 0.5] [--retry-cap-secs 20]
//
// Node 20 needs --experimental-websocket (clients/js/run watch passes it).

import { RejoinClient, State } from "../src/rejoin.js";

const USAGE =
  "usage: rejoin-watch --url ws://HOST:PORT/ws/progress --job ID --token T " +
  "[--last-seq N --session-id S --epoch E] [--ping-secs S] [--retry-base-secs S] [--retry-cap-secs S]";

function parse(argv) {
  const flags = {};
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (!name.startsWith("--") || value === undefined) throw new Error(`expected --flag value at ${name}`);
    flags[name.slice(2)] = value;
  }
  for (const required of ["url", "job", "token"]) {
    if (!flags[required]) throw new Error(`--${required} is required`);
  }
  const secs = (name, fallback) => {
    const v = flags[name] === undefined ? fallback : Number(flags[name]);
    if (!(v > 0)) throw new Error(`--${name} must be a positive number of seconds`);
    return v * 1000;
  };
  const ping = secs("ping-secs", 15);
  return {
    url: flags.url,
    jobId: flags.job,
    token: flags.token,
    lastSeq: flags["last-seq"] === undefined ? undefined : Number(flags["last-seq"]),
    sessionId: flags["session-id"],
    epoch: flags.epoch,
    // A connection silent for two ping intervals is taken as dropped.
    pingIntervalMs: ping,
    pingTimeoutMs: ping,
    baseDelayMs: secs("retry-base-secs", 0.5),
    maxDelayMs: secs("retry-cap-secs", 20),
  };
}

let options;
try {
  options = parse(process.argv.slice(2));
} catch (err) {
  console.error(`rejoin-watch: ${err.message}\n${USAGE}`);
  process.exit(2);
}

const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const client = new RejoinClient(options);
let status = null; // the job's status as last shown

client.addEventListener("hello", (e) => {
  status = e.detail.status;
  say({ ...e.detail, type: "state", hello: e.detail.type });
});
client.addEventListener("event", (e) => {
  const { type, ...rest } = e.detail;
  if (["completed", "failed", "cancelled"].includes(type)) status = type;
  else if (type === "progress") status = "running";
  say({ type: "event", event: type, ...rest });
});
client.addEventListener("error", (e) => {
  console.error(`rejoin-watch: ${e.detail.where}: ${e.detail.error?.message ?? e.detail.error}`);
});
client.addEventListener("state", (e) => {
  const { state, ...detail } = e.detail;
  if (state === State.FINISHED) say({ type: "finished", status });
  say({ type: "connection", state, ...detail });
  if ([State.FINISHED, State.REPLACED, State.FAILED, State.STOPPED].includes(state)) {
    process.exitCode = state === State.FINISHED && status === "completed" ? 0 : 1;
    // Let the socket's close go out, then leave.
    setTimeout(() => process.exit(), 50);
  }
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => client.stop());
client.start();
