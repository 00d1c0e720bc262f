"""Drives the producer for the server's tests (tests/producers.rs).

    python produce.py sync|async     a job: ten progress events, a message,
                                     completed by its block's end
    python produce.py raise          a job whose block raises ValueError

REJOIN_URL and REJOIN_TOKEN name the server. Prints the job's id as
`{"jobId": ...}` once it exists, then `{"seqs": [...]}` with the seq of
each event it posted.
"""

import asyncio
import json
import os
import sys

from rejoin import AsyncRejoin, Backoff, Rejoin

URL, TOKEN = os.environ["REJOIN_URL"], os.environ["REJOIN_TOKEN"]
# Quick retries: the tests lose answers on purpose.
BACKOFF = Backoff(attempts=10, base=0.01, cap=0.1)


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


def blocking(fail: bool) -> None:
    with Rejoin(URL, TOKEN, backoff=BACKOFF) as rejoin:
        seqs = []
        with rejoin.create_job(metadata={"producer": "python"}) as job:
            say(jobId=job.id)
            for step in range(1, 11):
                seqs.append(job.progress(step * 10, f"step {step} of 10"))
                if fail and step == 3:
                    raise ValueError("shelf 3 fell over")
            seqs.append(job.message("book_found", {"isbn": "978-0"}))
            say(seqs=seqs)


async def concurrent() -> None:
    async with AsyncRejoin(URL, TOKEN, backoff=BACKOFF) as rejoin:
        seqs = []
        async with await rejoin.create_job(metadata={"producer": "python-asyncio"}) as job:
            say(jobId=job.id)
            for step in range(1, 11):
                seqs.append(await job.progress(step * 10, f"step {step} of 10"))
            seqs.append(await job.message("book_found", {"isbn": "978-0"}))
        say(seqs=seqs)


if __name__ == "__main__":
    mode = sys.argv[1:] or [""]
    if mode == ["sync"]:
        blocking(fail=False)
    elif mode == ["raise"]:
        blocking(fail=True)
    elif mode == ["async"]:
        asyncio.run(concurrent())
    else:
        sys.exit(__doc__)
