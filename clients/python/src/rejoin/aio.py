"""The asyncio producer: `AsyncRejoin` and its `AsyncJob`, the blocking
ones' twins (`await` each call, `async with` the job)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Awaitable, Optional, Type, Unpack

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


class AsyncRejoin:
    """A service's connection to a rejoin server, for asyncio.

    >>> async with AsyncRejoin("http://127.0.0.1:8080", token=SERVICE_TOKEN) as rejoin:
    ...     async with await rejoin.create_job() as job:
    ...         await job.progress(50, "half way")
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        backoff: Backoff = Backoff(),
        timeout: float = 30.0,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self.token = token
        self.backoff = backoff
        self._http = http or httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRejoin":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def send(self, request: Request) -> Json:
        """Sends `request`, tried again on connection errors and retried
        statuses as `backoff` says; its JSON answer."""
        attempts = Attempts(self.backoff)
        while True:
            try:
                answer = await self._http.request(
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
            await asyncio.sleep(attempts.failed(outcome.why, outcome.retry_after))

    async def create_job(
        self,
        job_id: Optional[str] = None,
        *,
        scope: Optional[str] = None,
        **options: Unpack[JobOptions],
    ) -> "AsyncJob":
        """Creates the job (`metadata`, `client_token_ttl_secs`,
        `stall_after_secs`, `timeout_secs`, `notify`), or adopts it when
        `job_id` names one that exists. `scope` prefixes the idempotency
        keys derived for its events (the job's id when not given)."""
        answer = await self.send(_core.create_job(job_id, options))
        return AsyncJob(self, JobInfo.from_answer(answer), scope)

    def adopt(self, job_id: str, *, scope: Optional[str] = None) -> "AsyncJob":
        """A job that exists, for posting its events (no request made)."""
        return AsyncJob(self, JobInfo(job_id, None, None, ""), scope)


class AsyncJob(_core.Events[Awaitable[int]]):
    """One job's events, for asyncio. As an async context manager, the job
    completes when the block ends and fails when it raises."""

    def __init__(self, rejoin: AsyncRejoin, info: JobInfo, scope: Optional[str] = None) -> None:
        self.rejoin = rejoin
        self.info = info
        self.keys = Keys(scope or info.job_id)
        self.finished = False

    def post(self, body: Json, key: Optional[str] = None) -> Awaitable[int]:
        # The key is derived now, in call order, not when the caller awaits.
        request = _core.event(self.id, body, key, self.keys)

        async def sent() -> int:
            answer = await self.rejoin.send(request)
            self.finished = self.finished or body["type"] in _core.FINISHED
            return int(answer["seq"])

        return sent()

    async def client_token(self, ttl_secs: Optional[int] = None) -> ClientToken:
        """A fresh token for the job's watcher."""
        return _core.client_token(await self.rejoin.send(_core.token(self.id, ttl_secs)))

    async def state(self) -> Json:
        """The job's state as the server folds it (`status`, `progress`, ...)."""
        return await self.rejoin.send(Request("GET", f"/v1/jobs/{self.id}"))

    async def __aenter__(self) -> "AsyncJob":
        return self

    async def __aexit__(
        self,
        kind: Optional[Type[BaseException]],
        error: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> None:
        if self.finished:
            return
        if error is None:
            await self.complete()
        elif isinstance(error, Exception):
            await self.post(_core.failure_of(error))
