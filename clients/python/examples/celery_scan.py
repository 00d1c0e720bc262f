"""A Celery task that scans ten shelves and reports each to rejoin.

    REJOIN_URL=http://127.0.0.1:8080 REJOIN_TOKEN=<service token> \\
        celery -A celery_scan worker            # the worker (in this folder)
    REJOIN_URL=... REJOIN_TOKEN=... python celery_scan.py enqueue
    # {"jobId": "...", "clientToken": "..."}
    rejoin watch --url ws://127.0.0.1:8080 --job <jobId> --token <clientToken>

Redis is the broker (`REDIS_URL`, default redis://127.0.0.1:6379/0) and
the queue is `QUEUE` (default `rejoin-scan`). The task is acknowledged
after it ran (`acks_late`), so a worker killed mid-task leaves it to be
delivered again once `VISIBILITY_TIMEOUT` seconds (default 10, longer
than the task) have passed since it was taken; the rerun reports the
steps already reported under the same idempotency keys, so a watcher sees
each step once.
"""

import json
import os
import sys
import time

from celery import Celery

from rejoin.celery import RejoinTask

STEPS = 10
QUEUE = os.environ.get("QUEUE", "rejoin-scan")

app = Celery("celery_scan", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": int(os.environ.get("VISIBILITY_TIMEOUT", "10")),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)


@app.task(base=RejoinTask, bind=True, name="celery_scan.scan")
def scan(self: RejoinTask, shelves: int = STEPS) -> dict[str, int]:
    for shelf in range(1, shelves + 1):
        time.sleep(0.5)  # the work of one shelf
        self.progress(100 * shelf / shelves, f"shelf {shelf} of {shelves}")
    return {"shelves": shelves}


if __name__ == "__main__":
    if sys.argv[1:] != ["enqueue"]:
        sys.exit("usage: python celery_scan.py enqueue")
    job = scan.start(metadata={"example": "celery_scan"})
    print(json.dumps({"jobId": job.job_id, "clientToken": job.client_token}), flush=True)
