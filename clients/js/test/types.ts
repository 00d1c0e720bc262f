// Type-checked with `tsc --noEmit` (npm test): the declarations compile, and
// a typical use of them type-checks.
import { RejoinClient, State, isTerminal, backoffDelay, type JobEvent, type Hello } from "../src/rejoin.js";

const client = new RejoinClient({
  jobId: "6f0c8a2e-0000-4000-8000-000000000000",
  token: "a.b.c",
  url: "wss://rejoin.example.com/ws/progress",
  transport: "auto",
  refreshToken: async () => "d.e.f",
});
client.addEventListener("hello", (e) => {
  const hello: Hello = e.detail;
  console.log(hello.status, hello.lastSeq, hello.resumed ?? false);
});
client.addEventListener("event", (e) => {
  const event: JobEvent = e.detail;
  switch (event.type) {
    case "progress":
      console.log(event.progress.toFixed(0), event.message ?? "");
      break;
    case "failed":
      console.log(event.error.code);
      break;
    case "stalled":
      console.log(event.since);
      break;
  }
  if (isTerminal(event)) client.stop();
});
client.addEventListener("state", (e) => {
  if (e.detail.state === State.RECONNECTING && e.detail.retryInMs !== undefined) {
    console.log(`retrying in ${e.detail.retryInMs} ms`);
  }
  if (e.detail.state === State.FAILED) console.log(e.detail.code, e.detail.reason);
});
client.start();
const saved: { lastSeq: number | null; epoch: string | null; sessionId: string | null } = client;
console.log(saved, backoffDelay(1, 500, 20000), client.transport);

// The producer, as a service uses it.
import { Rejoin, RejoinError } from "../src/producer.js";
import { rejoinProcessor } from "../src/bullmq.js";

const producer = new Rejoin({ url: "http://127.0.0.1:8080", token: "a.b.c", backoff: { attempts: 4 } });
async function produce(): Promise<number> {
  const job = await producer.createJob({ metadata: { kind: "scan" }, stallAfterSecs: 60 });
  await job.progress(50, "half way", { data: { shelf: 5 } });
  await job.message("book_found", { isbn: "x" });
  try {
    return await job.complete({ books: 42 });
  } catch (e) {
    if (e instanceof RejoinError && e.code === "job_finished") return -1;
    throw e;
  }
}
void produce;
const processor = rejoinProcessor(producer, async (job: { id?: string; name: string; queueName: string; data: { n: number }; opts: {}; attemptsMade: number; updateProgress(v: unknown): Promise<void> }) => {
  await job.updateProgress({ progress: job.data.n });
  return job.data.n;
});
void processor;
