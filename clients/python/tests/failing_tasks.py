"""A Celery task that fails, for the server's tests (tests/producers.rs):
it reports a step, then raises ValueError; Celery retries it once, and the
second run's failure fails the job.

    celery -A failing_tasks worker
    python failing_tasks.py enqueue      # {"jobId": ..., "clientToken": ...}
"""

import json
import os
import sys

from celery import Celery

from rejoin.celery import RejoinTask

app = Celery("failing_tasks", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("QUEUE", "rejoin-failing"),
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)


@app.task(
    base=RejoinTask,
    bind=True,
    name="failing_tasks.topple",
    autoretry_for=(ValueError,),
    max_retries=1,
    default_retry_delay=0,
)
def topple(self: RejoinTask) -> None:
    self.progress(30, f"run {self.request.retries + 1}: step 3")
    raise ValueError("the shelf fell over")


if __name__ == "__main__":
    if sys.argv[1:] != ["enqueue"]:
        sys.exit("usage: python failing_tasks.py enqueue")
    job = topple.start()
    print(json.dumps({"jobId": job.job_id, "clientToken": job.client_token}), flush=True)
