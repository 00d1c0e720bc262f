"""The blocking producer: `Rejoin` and its `Job`."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Optional, Type, Unpack

import httpx

from . import _core
from ._core import (
    Again,
    Attempts,
    Backoff,
    ClientToken,
    JobInfo,
    JobOptions,
    Json,
    Keys,
    Request,
)


class Rejoin:
    """A service's connection to a rejoin server.

    >>> rejoin = Rejoin("http://127.0.0.1:8080", token=SERVICE_TOKEN)
    >>> with rejoin.create_job(metadata={"kind": "scan"}) as job:
    ...     job.progress(50, "half way")
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        backoff: Backoff = Backoff(),
        timeout: float = 30.0,
        http: Optional[httpx.Client] = None,
    ) -> None:
        self.token = token
        self.backoff = backoff
        self._http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Rejoin":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, request: Request) -> Json:
        """Sends `request`, tried again on connection errors and retried
        statuses as `backoff` says; its JSON answer."""
        attempts = Attempts(self.backoff)
        while True:
            try:
                answer = self._http.request(
                    request.method,
                    request.path,
                    json=request.body,
                    headers=request.headers(self.token),
                )
                outcome = _core.settle(answer.status_code, answer.headers, answer.content)
            except httpx.TransportError as error:
                outcome = Again(f"{type(error).__name__}: {error}", None)
            if not isinstance(outcome, Again):
                return outcome
            time.sleep(attempts.failed(outcome.why, outcome.retry_after))

    def create_job(
        self,
        job_id: Optional[str] = None,
        *,
        scope: Optional[str] = None,
        **options: Unpack[JobOptions],
    ) -> "Job":
        """Creates the job (`metadata`, `client_token_ttl_secs`,
        `stall_after_secs`, `timeout_secs`, `notify`), or adopts it when
        `job_id` names one that exists. `scope` prefixes the idempotency
        keys derived for its events (the job's id when not given)."""
        answer = self.send(_core.create_job(job_id, options))
        return Job(self, JobInfo.from_answer(answer), scope)

    def adopt(self, job_id: str, *, scope: Optional[str] = None) -> "Job":
        """A job that exists, for posting its events (no request made)."""
        return Job(self, JobInfo(job_id, None, None, ""), scope)


class Job(_core.Events[int]):
    """One job's events. As a context manager, the job completes when the
    block ends and fails, with the exception's message, when it raises."""

    def __init__(self, rejoin: Rejoin, info: JobInfo, scope: Optional[str] = None) -> None:
        self.rejoin = rejoin
        self.info = info
        self.keys = Keys(scope or info.job_id)
        self.finished = False

    def post(self, body: Json, key: Optional[str] = None) -> int:
        answer = self.rejoin.send(_core.event(self.id, body, key, self.keys))
        self.finished = self.finished or body["type"] in _core.FINISHED
        return int(answer["seq"])

    def client_token(self, ttl_secs: Optional[int] = None) -> ClientToken:
        """A fresh token for the job's watcher."""
        return _core.client_token(self.rejoin.send(_core.token(self.id, ttl_secs)))

    def state(self) -> Json:
        """The job's state as the server folds it (`status`, `progress`, ...)."""
        return self.rejoin.send(Request("GET", f"/v1/jobs/{self.id}"))

    def __enter__(self) -> "Job":
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        error: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> None:
        if self.finished:
            return
        if error is None:
            self.complete()
        elif isinstance(error, Exception):
            self.post(_core.failure_of(error))
