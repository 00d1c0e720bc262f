// Follows a Durable Stream with the official TypeScript client until the
// stream is closed: prints each JSON item on a line, then `END`.
//
//   node follow.mjs URL TOKEN [sse|long-poll]
//
// When the client ends a session on an error (a connection cut it does not
// retry itself), the stream is opened again from the last offset the client
// reported, as the protocol has readers resume.
import { stream } from "@durable-streams/client"

const [url, token, mode = "sse"] = process.argv.slice(2)
let offset = "-1"
let resumes = 0
for (;;) {
  let closed = false
  try {
    const res = await stream({
      url,
      offset,
      live: mode,
      headers: { Authorization: `Bearer ${token}` },
    })
    res.subscribeJson(async (batch) => {
      for (const item of batch.items) console.log(JSON.stringify(item))
      offset = batch.offset
      closed ||= batch.streamClosed
    })
    await res.closed
  } catch (e) {
    console.error(`follow: ${e?.message ?? e}; resuming from ${offset}`)
  }
  // The session is over; its last batches may still be with the subscriber.
  await new Promise((r) => setTimeout(r, 200))
  if (closed) break
  resumes += 1
}
console.error(`follow: resumed ${resumes} times`)
console.log("END")
