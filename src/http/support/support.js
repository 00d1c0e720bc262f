// The support page: finds jobs (GET /v1/jobs), reads a job's state, events and
// connection history with a support token, draws its sessions as a timeline,
// and, while open, follows the job live. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// replaceChildren with nested arrays flattened and empty slots dropped.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s % 60)} s`;
}

const time = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").replace("Z", " UTC") : "–");

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
}

// What a support person needs to read in one line, per kind of event.
function describe(e) {
  const d = e.details || {};
  switch (e.kind) {
    case "connected":
      return `connected at lastSeq ${d.lastSeq}` + (d.userAgent ? ` (${d.userAgent})` : "");
    case "reconnected":
      return (d.resumed ? "resumed the session" : "came back after the session ended: new session") +
        (d.gapMs !== undefined ? `, after a gap of ${duration(d.gapMs)}` : "") +
        `, client lastSeq ${d.clientLastSeq ?? "–"}, replayed ${d.missed} missed events`;
    case "disconnected":
      if (!d.graceUntil) return `closed ${d.code} ${d.reason || "(no reason)"}; the job had finished: session ended`;
      return `closed ${d.code} ${d.reason || "(no reason)"}; grace until ${time(d.graceUntil)}` +
        (d.ackedSeq !== undefined ? `; client acked seq ${d.ackedSeq}` : "");
    case "replaced":
      return `socket closed ${d.code} ${d.reason}: another connection took over`;
    case "ws_error":
      return `socket error: ${d.message}`;
    case "grace_expired":
      return `grace expired: the client did not come back by ${time(d.graceUntil)}`;
    case "connect_rejected":
      return `refused ${d.status} ${d.code}` + (d.reconnect ? " on reconnect" : "") +
        (d.suppressed ? ` (+${d.suppressed} more)` : "");
    case "notification_due":
      return `${d.type} notification due (${d.reason === "always" ? "notify: always" : "nobody was watching"}); ` +
        `abandoned if not delivered by ${time(d.expiresAt)}`;
    case "notification_attempt":
      return `attempt ${d.attempt} sent` + (d.node ? ` by node ${d.node}` : "");
    case "notification_retry":
      return `attempt ${d.attempt} failed: ${d.error}; next attempt at ${time(d.retryAt)}`;
    case "notification_delivered":
      return `delivered: the endpoint answered ${d.status} to attempt ${d.attempt}`;
    case "notification_abandoned":
      return d.reason === "gone"
        ? `abandoned: the endpoint answered 410 Gone (after ${d.attempts} attempts)`
        : `abandoned: not delivered within the max age (${d.attempts} attempts)` + (d.error ? `; last error: ${d.error}` : "");
    default:
      return JSON.stringify(d);
  }
}

// One line per job event (GET /v1/jobs/{id}/events envelopes).
function describeJobEvent(e) {
  const d = e.data || {};
  switch (e.kind) {
    case "job_created":
      return "created" + (d.stallAfterSecs ? `; stalls after ${d.stallAfterSecs} s quiet` : "") +
        (d.timeoutSecs ? `; times out after ${d.timeoutSecs} s` : "");
    case "progress":
      return `${d.progress}%` + (d.message ? ` ${d.message}` : "");
    case "message":
      return d.name;
    case "completed":
      return "completed";
    case "failed":
      return d.error && d.error.code === "timeout"
        ? `timed out: ${d.error.message}`
        : `failed ${d.error ? `${d.error.code}: ${d.error.message}` : ""}`;
    case "cancelled":
      return "cancelled" + (d.reason ? `: ${d.reason}` : "");
    case "stalled":
      return `stalled: no job event since ${time(d.since)}`;
    default:
      return null; // connection events are in the sessions below
  }
}

function jobEventRow(e, fresh) {
  return el("tr", { class: `${e.kind}${fresh ? " fresh" : ""}`, "data-seq": e.seq },
    el("td", { class: "time" }, time(e.at)), el("td", {}, e.seq),
    el("td", { class: "kind" }, e.kind.replace("_", " ")), el("td", {}, describeJobEvent(e)));
}

function eventTable(events) {
  return el("table", {},
    el("tr", {}, el("th", {}, "time"), el("th", {}, "seq"), el("th", {}, "event"), el("th", {}, "details")),
    events.map((e) => el("tr", { class: e.kind },
      el("td", { class: "time" }, time(e.at)), el("td", {}, e.seq),
      el("td", { class: "kind" }, e.kind.replace("_", " ")), el("td", {}, describe(e)))));
}

// Connected stretches and gaps on one time axis for the whole job.
function bar(session, start, end) {
  const span = Math.max(end - start, 1);
  const pos = (t) => ((t - start) / span) * 100;
  const parts = [];
  let open = { kind: "connected", from: Date.parse(session.startedAt) };
  for (const e of session.events) {
    const t = Date.parse(e.at);
    if (e.kind === "disconnected" || e.kind === "replaced") {
      if (open && open.kind === "connected") parts.push({ ...open, to: t });
      // A close after the job finished ends the session: no grace gap.
      const graced = e.kind === "disconnected" && e.details && e.details.graceUntil;
      open = graced ? { kind: "gap", from: t } : null;
    } else if (e.kind === "reconnected") {
      if (open && open.kind === "gap") parts.push({ ...open, to: t });
      open = { kind: "connected", from: t };
    } else if (e.kind === "grace_expired") {
      if (open) parts.push({ ...open, to: t });
      open = null;
    }
  }
  const last = session.endedAt ? Date.parse(session.endedAt) : end;
  if (open) parts.push({ ...open, to: last });
  return el("div", { class: "bar", title: "green: connected, amber: disconnected (grace)" },
    parts.map((p) => el("span", {
      class: p.kind,
      style: `left:${pos(p.from)}%;width:${Math.max(pos(p.to) - pos(p.from), 0.4)}%`,
    })));
}

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// How a finished job ended, in a few words.
function outcome(job) {
  if (job.status === "completed") return job.result === undefined ? "completed" : `completed: ${JSON.stringify(job.result)}`;
  if (job.status === "failed") return job.error ? `failed: ${job.error.code}: ${job.error.message}` : "failed";
  return job.reason ? `cancelled: ${job.reason}` : "cancelled";
}

function render(job, history) {
  const finished = TERMINAL.has(job.status);
  const state = $("state");
  fill(state, 
    el("h2", {}, "Job ", el("code", {}, job.jobId), " ", el("span", { class: `status ${job.status}` }, job.status)),
    el("div", { class: "progress" }, el("div", { style: `width:${job.progress}%` })),
    facts([
      ["progress", `${job.progress}%`],
      // A finished job's message is its last progress message, not news.
      finished ? ["ended", `${outcome(job)} at ${time(job.lastUpdate)}`] : ["message", job.message ?? "–"],
      finished ? ["last progress message", job.message ?? "–"] : ["last update", time(job.lastUpdate)],
      ["last seq", job.lastSeq], ["session", job.session ? `${job.session.state}` : "none yet"],
      ["watchers", (job.watchers || []).length],
      ["grace until", job.session && job.session.graceUntil ? time(job.session.graceUntil) : "–"],
      ["stalled", job.stalled ? `since ${time(job.stalledSince)}` : "no"],
      ["stalls after", job.stallAfterSecs ? `${job.stallAfterSecs} s without an event` : "–"],
      ["times out", job.timeoutSecs && job.createdAt
        ? time(new Date(Date.parse(job.createdAt) + job.timeoutSecs * 1000).toISOString()) : "–"],
      ["last disconnect", job.lastDisconnect
        ? `${job.lastDisconnect.code} ${job.lastDisconnect.reason || ""} at ${time(job.lastDisconnect.at)}` : "–"],
      ["last socket error", job.lastSocketError ? job.lastSocketError.message : "–"],
      ["notify", job.notify || "unwatched"],
      ["notified at", job.notifiedAt ? time(job.notifiedAt)
        : job.notificationsPending ? "pending" : "–"],
    ]));
  if (job.stalled) state.querySelector("h2").append(el("span", { class: "stalled-flag" }, "stalled"));
  state.hidden = false;

  const t = history.totals;
  fill($("totals"), el("h2", {}, "Connection summary"), facts([
    ["sessions", t.sessions], ["connects", t.connects], ["reconnects", t.reconnects],
    ["resumed", t.resumed], ["disconnects", t.disconnects], ["heartbeat timeouts", t.heartbeatTimeouts],
    ["replaced sockets", t.replaced], ["socket errors", t.errors], ["rejected attempts", t.rejected],
    ["grace expiries", t.graceExpiries], ["events replayed", t.replayed],
    ["time connected", duration(t.connectedMs)], ["time disconnected", duration(t.disconnectedMs)],
  ]));
  $("totals").hidden = false;

  const times = history.sessions.flatMap((s) => [Date.parse(s.startedAt), ...s.events.map((e) => Date.parse(e.at))]);
  const start = Math.min(...times);
  // A finished job's axis ends where its history does; a running one's now.
  const end = finished ? Math.max(...times) : Math.max(...times, Date.now());
  const timeline = $("timeline");
  fill(timeline, 
    el("h2", {}, `Sessions (${history.totalSessions}): one lane per watcher, on one time axis`),
    el("div", { class: "legend" },
      el("span", {}, el("i", { style: "background:var(--ok)" }), "connected"),
      el("span", {}, el("i", { style: "background:var(--gap)" }), "disconnected, within grace")),
    history.sessions.length === 0 ? el("p", { class: "notice" }, "No client has connected to this job.") : null,
    history.sessions.map((s, i) => el("div", { class: "session", "data-session": s.sessionId },
      el("h3", {}, `Session ${history.offset + i + 1}`, el("code", {}, s.sessionId),
        el("span", {}, s.state + (s.endReason ? ` (${s.endReason.replace("_", " ")})` : "")),
        el("span", {}, `${s.sockets} socket${s.sockets === 1 ? "" : "s"}`),
        el("span", {}, `connected ${duration(s.connectedMs)}, disconnected ${duration(s.disconnectedMs)}`),
        el("span", {}, `replayed ${s.replayed}`)),
      bar(s, start, end),
      eventTable(s.events))));
  timeline.hidden = false;

  const notes = $("notifications");
  const list = history.notifications || [];
  fill(notes, el("h2", {}, `Webhook notifications (${list.length})`),
    list.length === 0 ? el("p", { class: "notice" }, "None: the job has not ended, someone was watching when it did, or webhooks are off.") : null,
    list.map((n) => el("div", { class: "notification", "data-notification": n.id },
      el("h3", {}, n.type, el("code", {}, n.id),
        el("span", {}, n.state === "delivered" ? `notified at ${time(n.notifiedAt)}`
          : n.state === "abandoned" ? `abandoned (${n.abandonReason}) at ${time(n.abandonedAt)}`
          : `pending; next attempt ${time(n.nextAttemptAt)}`),
        el("span", {}, `${n.attempts} attempt${n.attempts === 1 ? "" : "s"}`)),
      eventTable(n.events))));
  notes.hidden = false;

  const rejected = $("rejected");
  fill(rejected, el("h2", {}, `Refused connection attempts (${history.rejected.length})`),
    history.rejected.length ? eventTable(history.rejected) : el("p", { class: "notice" }, "None."));
  rejected.hidden = false;
}

const api = (token) => async (path) => {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(`${res.status}: ${(body.error && body.error.message) || res.statusText}`);
    err.code = body.error && body.error.code;
    err.detail = body.error && body.error.message;
    throw err;
  }
  return body;
};

// The job on screen and its live follower.
const shown = { token: null, id: null, seq: 0, timer: null, busy: false, finished: false };

function renderEvents(events) {
  const rows = events.filter((e) => describeJobEvent(e) !== null);
  fill($("events"), el("h2", {}, "Job events", el("span", { id: "live-state", class: "notice" })),
    el("table", { id: "job-events" },
      el("tr", {}, el("th", {}, "time"), el("th", {}, "seq"), el("th", {}, "event"), el("th", {}, "details")),
      rows.map((e) => jobEventRow(e, false))));
  $("events").hidden = false;
}

async function load(token, jobId) {
  const notice = $("notice");
  notice.className = "notice";
  notice.textContent = "Loading…";
  clearInterval(shown.timer);
  const get = api(token);
  try {
    const id = encodeURIComponent(jobId.trim());
    const [job, history, log] = await Promise.all([
      get(`/v1/jobs/${id}`), get(`/v1/jobs/${id}/history`), get(`/v1/jobs/${id}/events?limit=10000`),
    ]);
    render(job, history);
    renderEvents(log.events);
    Object.assign(shown, {
      token, id, seq: log.events.length ? log.events[log.events.length - 1].seq : 0,
      finished: TERMINAL.has(job.status),
    });
    notice.textContent = `Loaded at ${time(new Date().toISOString())}.`;
    document.body.dataset.loaded = "true";
    follow();
  } catch (err) {
    if (err.code === "job_archived") {
      // Retention removed it: what the log still knows is its summary.
      for (const id of ["state", "totals", "events", "timeline", "notifications", "rejected"]) {
        const section = $(id);
        if (section) section.hidden = true;
      }
      notice.className = "notice archived";
      notice.textContent = `Archived: ${err.detail}`;
      document.body.dataset.archived = "true";
      return;
    }
    notice.className = "notice error";
    notice.textContent = `Could not load the job: ${err.message}`;
  }
}

// Live mode: every second, the job's events after the last one shown are
// appended, and its state and history redrawn when anything came.
function follow() {
  clearInterval(shown.timer);
  if (!shown.id) return;
  if (shown.finished) {
    $("live-state").textContent = " the job has finished: nothing more will come";
    return;
  }
  if (!$("live").checked) return;
  $("live-state").textContent = " following live";
  shown.timer = setInterval(async () => {
    if (shown.busy) return;
    shown.busy = true;
    try {
      const get = api(shown.token);
      const page = await get(`/v1/jobs/${shown.id}/events?after=${shown.seq}&limit=1000`);
      if (page.events.length) {
        shown.seq = page.events[page.events.length - 1].seq;
        const table = $("job-events");
        for (const e of page.events) if (describeJobEvent(e) !== null) table.append(jobEventRow(e, true));
        const [job, history] = await Promise.all([get(`/v1/jobs/${shown.id}`), get(`/v1/jobs/${shown.id}/history`)]);
        render(job, history);
        document.body.dataset.seq = String(shown.seq);
        if (TERMINAL.has(job.status)) {
          shown.finished = true;
          follow();
        }
      }
    } catch (err) {
      $("live-state").textContent = ` live updates paused: ${err.message}`;
    } finally {
      shown.busy = false;
    }
  }, 1000);
}

$("live").addEventListener("change", follow);

$("lookup").addEventListener("submit", (e) => {
  e.preventDefault();
  load($("token").value, $("job").value);
});

// The finder: GET /v1/jobs with the form's filters; a result opens the job.
async function search(after) {
  const q = new URLSearchParams();
  for (const [field, name] of [["s-status", "status"], ["s-stalled", "stalled"]]) {
    if ($(field).value) q.set(name, $(field).value);
  }
  for (const [field, name] of [["s-since", "since"], ["s-until", "until"]]) {
    if ($(field).value) q.set(name, new Date($(field).value).toISOString());
  }
  if ($("s-key").value.trim()) q.set(`meta.${$("s-key").value.trim()}`, $("s-value").value);
  if (after) q.set("after", after);
  const results = $("results");
  try {
    const page = await api($("token").value)(`/v1/jobs?${q}`);
    const rows = page.jobs.map((j) => el("tr", { class: "result", "data-job": j.jobId },
      el("td", {}, el("button", { type: "button", class: "open", "data-job": j.jobId }, j.jobId)),
      el("td", {}, el("span", { class: `status ${j.status}` }, j.status),
        j.stalled ? el("span", { class: "stalled-flag" }, "stalled") : null),
      el("td", {}, `${j.progress}%`), el("td", { class: "time" }, time(j.createdAt)),
      el("td", { class: "time" }, time(j.lastUpdate)), el("td", {}, j.watchers),
      el("td", {}, j.metadata ? JSON.stringify(j.metadata) : "")));
    fill(results,
      el("table", {},
        el("tr", {}, ["job", "status", "progress", "created", "last update", "watchers", "metadata"].map((h) => el("th", {}, h))),
        rows),
      page.jobs.length === 0 ? el("p", { class: "notice" }, "No job matches.") : null,
      page.nextAfter ? el("button", { type: "button", id: "more", "data-after": page.nextAfter }, "Older jobs") : null);
    results.dataset.count = String(page.jobs.length);
  } catch (err) {
    fill(results, el("p", { class: "notice error" }, `Could not search: ${err.message}`));
  }
}

$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  search(null);
});

$("results").addEventListener("click", (e) => {
  const target = e.target.closest("button");
  if (!target) return;
  if (target.id === "more") return search(target.dataset.after);
  $("job").value = target.dataset.job;
  load($("token").value, target.dataset.job);
});

// `#token=…[&job=…]` fills the form (and loads the job): the fragment never
// reaches a server.
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) $("token").value = params.get("token");
if (params.get("token") && params.get("job")) {
  $("job").value = params.get("job");
  load(params.get("token"), params.get("job"));
}
