"""rejoin's producer: create jobs and report their progress from Python
workers. Every call is tried again on connection errors, 408, 429, 502,
503 and 504 (honouring `Retry-After`), and every event carries an
`Idempotency-Key`, so a retry never appends twice."""

from ._core import (
    Backoff,
    ClientToken,
    IdempotencyKeyReused,
    JobFinished,
    JobInfo,
    RejoinError,
    Unavailable,
)
from .aio import AsyncJob, AsyncRejoin
from .producer import Job, Rejoin

__all__ = [
    "AsyncJob",
    "AsyncRejoin",
    "Backoff",
    "ClientToken",
    "IdempotencyKeyReused",
    "Job",
    "JobFinished",
    "JobInfo",
    "Rejoin",
    "RejoinError",
    "Unavailable",
]
