"""Follows a job's Durable Stream with the official Python client until the
job's terminal event: prints each JSON item on a line, then `END`.

    python follow.py URL TOKEN [sse|long-poll]

The Python client (0.1.0) predates the protocol's stream closure, so the
end is the job's terminal event (`completed`, `failed`, `cancelled`), the
last item a job's stream ever holds. When a read fails (a connection cut),
the stream is opened again from the last offset the client reported, as
the protocol has readers resume.
"""

import json
import sys
import time

from durable_streams import stream

TERMINAL = {"completed", "failed", "cancelled"}

url, token = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else "sse"
offset = "-1"
resumes = 0
ended = False
while not ended:
    try:
        with stream(
            url,
            offset=offset,
            live=mode,
            headers={"Authorization": f"Bearer {token}"},
        ) as res:
            # Events carry the offset after their data (the checkpoint to
            # resume from), unlike `res.offset`, which can lag one batch.
            for event in res.iter_events(mode="json_batches"):
                for item in event.data:
                    print(json.dumps(item), flush=True)
                    ended = ended or item.get("type") in TERMINAL
                offset = event.next_offset
                if ended:
                    break
    except Exception as e:  # a cut: resume from the last offset
        print(f"follow: {e!r}; resuming from {offset}", file=sys.stderr, flush=True)
    if not ended:
        resumes += 1
        time.sleep(0.1)
print(f"follow: resumed {resumes} times", file=sys.stderr, flush=True)
print("END", flush=True)
