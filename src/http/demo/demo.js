// The demo page: a simulated job followed through rejoin.js, with a button
// that makes the server drop the socket. `window.demo` mirrors what the page
// shows, for tests.
import { RejoinClient } from "/client/rejoin.js";

const $ = (id) => document.getElementById(id);
const demo = (window.demo = {
  jobId: null,
  state: "idle",
  status: null,
  progress: 0,
  applied: [], // seqs of the job events applied, in order
  reconnects: 0,
  replayed: 0,
  transitions: [],
});

function log(text) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  li.append(time, text);
  $("log").prepend(li);
}

function showProgress(progress, message) {
  demo.progress = progress;
  $("fill").style.width = `${progress}%`;
  $("percent").textContent = `${Math.round(progress)}%`;
  if (message) $("message").textContent = message;
}

function showStatus(status) {
  demo.status = status;
  $("status").textContent = status;
}

// `#job=ID&token=T` follows a job another page started: each page is a
// watcher of its own, and both follow the same job.
function joined() {
  const params = new URLSearchParams(location.hash.slice(1));
  const jobId = params.get("job");
  const token = params.get("token");
  return jobId && token ? { jobId, clientToken: token } : null;
}

async function start() {
  $("start").disabled = true;
  let job = joined();
  if (job) {
    log(`watching job ${job.jobId.slice(0, 8)} beside its other watchers`);
  } else {
    const res = await fetch("/demo/jobs", { method: "POST" });
    if (!res.ok) {
      log(`could not start a job: ${res.status}`);
      $("start").disabled = false;
      return;
    }
    job = await res.json();
    log(`job ${job.jobId.slice(0, 8)} started; it reports progress for ${job.durationSecs} s`);
  }
  demo.jobId = job.jobId;
  $("job").textContent = job.jobId;
  const watch = $("watch");
  watch.href = `/demo#job=${job.jobId}&token=${encodeURIComponent(job.clientToken)}`;
  watch.hidden = false;

  // A tick of the simulated job; the page's drop is an outage of a few.
  demo.outageMs = Math.max(1500, (job.durationSecs * 1000 / 20) * 2.5);
  const client = new RejoinClient({
    jobId: job.jobId,
    token: job.clientToken,
    WebSocket: OutageSocket,
    fetch: outageFetch,
    baseDelayMs: 250,
    maxDelayMs: 4000,
    pingIntervalMs: 5000,
    pingTimeoutMs: 3000,
  });
  window.demoClient = client;
  client.addEventListener("state", (e) => {
    const { state, resumed, missed } = e.detail;
    demo.state = state;
    demo.transitions.push(state);
    const badge = $("connection");
    badge.textContent = state;
    badge.className = `connection ${state}`;
    $("drop").disabled = state !== "live";
    if (state === "live" && demo.transitions.filter((s) => s === "live").length > 1) {
      demo.reconnects += 1;
      demo.replayed += missed;
      $("reconnects").textContent = demo.reconnects;
      $("replayed").textContent = demo.replayed;
      log(`back: session ${resumed ? "resumed" : "restarted"}, ${missed} missed events replayed`);
    } else {
      log(`connection: ${state}`);
    }
  });
  client.addEventListener("hello", (e) => {
    const m = e.detail;
    $("session").textContent = m.sessionId.slice(0, 8);
    showStatus(m.status);
    showProgress(m.progress, m.message);
  });
  client.addEventListener("event", (e) => {
    const m = e.detail;
    demo.applied.push(m.seq);
    $("applied").textContent = demo.applied.length;
    $("seq").textContent = m.seq;
    if (m.type === "progress") {
      showStatus("running");
      showProgress(m.progress, m.message);
    } else if (m.type === "completed") {
      showStatus("completed");
      showProgress(100, "Done.");
      log("the job completed");
    } else if (m.type === "failed" || m.type === "cancelled") {
      showStatus(m.type);
      log(`the job ${m.type}`);
    }
  });
  client.start();
}

// "Drop the connection" is a network outage, as on a switch from Wi-Fi to
// cellular: the server drops the socket, and for a few of the job's ticks no
// connection gets through, so events are missed and then replayed.
function OutageSocket(url, protocols) {
  if (Date.now() >= (demo.downUntil || 0)) return new WebSocket(url, protocols);
  const refused = { readyState: 0, close() {}, send() {} };
  setTimeout(() => refused.onclose && refused.onclose({ code: 1006, reason: "" }), 5);
  return refused;
}

function outageFetch(...args) {
  if (Date.now() < (demo.downUntil || 0)) return Promise.reject(new TypeError("the network is down"));
  return fetch(...args);
}

async function drop() {
  if (!demo.jobId) return;
  demo.downUntil = Date.now() + demo.outageMs;
  const res = await fetch(`/demo/jobs/${demo.jobId}/drop`, { method: "POST" });
  log(res.ok
    ? `the network is down for ${(demo.outageMs / 1000).toFixed(1)} s; the job goes on`
    : `drop refused: ${res.status}`);
}

$("start").addEventListener("click", start);
$("drop").addEventListener("click", drop);
if (location.hash.includes("autostart") || joined()) start();
