"""What the blocking and the asyncio producers share: the requests they
send, the idempotency keys they derive, when a failed attempt is tried
again and how long to wait, and how an answer is read."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Generic, Mapping, Optional, TypedDict, TypeVar, Union

#: Answers tried again: the request may not have been served, or the server
#: asks to be asked later. Everything else is final.
RETRIED_STATUSES = frozenset({408, 429, 502, 503, 504})

#: The longest `Retry-After` honoured, in seconds.
MAX_RETRY_AFTER = 60.0

Json = Dict[str, Any]


class RejoinError(Exception):
    """The server refused a request: its HTTP status, its error code and
    its message. Never tried again."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class JobFinished(RejoinError):
    """409 `job_finished`: the job already has its terminal event."""


class IdempotencyKeyReused(RejoinError):
    """409 `idempotency_key_reused`: the key was used for another event."""


class Unavailable(Exception):
    """Every attempt failed (connection errors, 429, 503, ...); `last` says
    how the last one did."""

    def __init__(self, attempts: int, last: str) -> None:
        super().__init__(f"rejoin unavailable after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last


def refusal(status: int, body: bytes) -> RejoinError:
    """The error for a final non-2xx answer."""
    code, message = "http_error", body.decode("utf-8", "replace")[:500]
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    kind = {"job_finished": JobFinished, "idempotency_key_reused": IdempotencyKeyReused}
    return kind.get(code, RejoinError)(status, code, message)


@dataclass(frozen=True)
class Backoff:
    """Retries with full-jitter exponential backoff: attempt `n` (from 0)
    waits a random time up to `min(cap, base * 2**n)`, and at least what a
    `Retry-After` asked for. `attempts` counts the first try."""

    attempts: int = 8
    base: float = 0.25
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        jitter = random.uniform(0, min(self.cap, self.base * 2**attempt))
        if retry_after is None:
            return jitter
        return max(jitter, min(retry_after, MAX_RETRY_AFTER))


@dataclass
class Attempts:
    """One call's attempts under a `Backoff`."""

    backoff: Backoff
    made: int = 0

    def failed(self, why: str, retry_after: Optional[float] = None) -> float:
        """Records a failed attempt; the time to wait before the next one,
        or `Unavailable` when none is left."""
        self.made += 1
        if self.made >= self.backoff.attempts:
            raise Unavailable(self.made, why)
        return self.backoff.delay(self.made - 1, retry_after)


@dataclass(frozen=True)
class Again:
    """An answer worth another attempt."""

    why: str
    retry_after: Optional[float]


def settle(status: int, headers: Mapping[str, str], body: bytes) -> Union[Json, Again]:
    """Reads an answer: its JSON on success, `Again` when it is retried;
    raises the `RejoinError` of any other."""
    if 200 <= status < 300:
        parsed = json.loads(body) if body else {}
        return parsed if isinstance(parsed, dict) else {}
    if status in RETRIED_STATUSES:
        return Again(f"HTTP {status}", retry_after(headers.get("retry-after")))
    raise refusal(status, body)


def retry_after(value: Optional[str]) -> Optional[float]:
    """A `Retry-After` in seconds (a number of seconds; a date is ignored)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Request:
    """One request to the server."""

    method: str
    path: str
    body: Optional[Json] = None
    key: Optional[str] = None

    def headers(self, token: str) -> Dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if self.key is not None:
            headers["Idempotency-Key"] = self.key
        return headers


def canonical(body: Json) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Keys:
    """Derives each event's `Idempotency-Key`: `SCOPE:DIGEST:N`, where
    DIGEST is a digest of the event and N counts the same event posted
    before in this run. A retried call sends the same key; a rerun of the
    same work (a Celery redelivery, a BullMQ retry) derives the same keys
    for the same events, whatever else it did in between."""

    scope: str
    seen: Counter[str] = field(default_factory=Counter)

    def derive(self, body: Json) -> str:
        digest = hashlib.sha256(canonical(body)).hexdigest()[:24]
        self.seen[digest] += 1
        return f"{self.scope}:{digest}:{self.seen[digest]}"


@dataclass(frozen=True)
class JobInfo:
    """A created (or adopted) job: what its watcher needs."""

    job_id: str
    client_token: Optional[str]
    client_token_expires_at: Optional[str]
    websocket_url: str

    @classmethod
    def from_answer(cls, answer: Json) -> "JobInfo":
        return cls(
            job_id=str(answer["jobId"]),
            client_token=answer.get("clientToken"),
            client_token_expires_at=answer.get("clientTokenExpiresAt"),
            websocket_url=str(answer.get("websocketUrl", "")),
        )


@dataclass(frozen=True)
class ClientToken:
    token: str
    expires_at: datetime


class JobOptions(TypedDict, total=False):
    """What a job is created with besides its id (all optional)."""

    metadata: Mapping[str, Any]
    client_token_ttl_secs: int
    stall_after_secs: int
    timeout_secs: int
    #: `unwatched` (the default), `always` or `never`.
    notify: str


#: Each option's name on the wire.
WIRE_NAMES = {
    "metadata": "metadata",
    "client_token_ttl_secs": "clientTokenTtlSecs",
    "stall_after_secs": "stallAfterSecs",
    "timeout_secs": "timeoutSecs",
    "notify": "notify",
}


def create_job(job_id: Optional[str], options: JobOptions) -> Request:
    """`POST /v1/jobs` with an id chosen here when none is given, so that a
    retried creation finds the job the first attempt made."""
    body: Json = {"jobId": job_id or str(uuid.uuid4())}
    for name, value in options.items():
        if value is not None:
            body[WIRE_NAMES[name]] = dict(value) if isinstance(value, Mapping) else value
    return Request("POST", "/v1/jobs", body)


def event(job_id: str, body: Json, key: Optional[str], keys: Keys) -> Request:
    return Request("POST", f"/v1/jobs/{job_id}/events", body, key or keys.derive(body))


def progress(pct: float, message: Optional[str], data: Optional[Json]) -> Json:
    body: Json = {"type": "progress", "progress": pct}
    if message is not None:
        body["message"] = message
    if data is not None:
        body["data"] = data
    return body


def message(name: str, data: Optional[Json]) -> Json:
    body: Json = {"type": "message", "name": name}
    if data is not None:
        body["data"] = data
    return body


def completed(result: Any) -> Json:
    body: Json = {"type": "completed"}
    if result is not None:
        body["result"] = result
    return body


def failed(message: str, code: str) -> Json:
    return {"type": "failed", "error": {"code": code, "message": message}}


def failure_of(error: BaseException) -> Json:
    """The `failed` event for an exception: its class as the code, its text
    as the message."""
    text = str(error) or type(error).__name__
    return failed(text[:2000], type(error).__name__)


def cancelled(reason: Optional[str]) -> Json:
    body: Json = {"type": "cancelled"}
    if reason is not None:
        body["reason"] = reason
    return body


def token(job_id: str, ttl_secs: Optional[int]) -> Request:
    body: Json = {} if ttl_secs is None else {"ttlSecs": ttl_secs}
    return Request("POST", f"/v1/jobs/{job_id}/token", body)


def client_token(answer: Json) -> ClientToken:
    expires = str(answer["clientTokenExpiresAt"]).replace("Z", "+00:00")
    return ClientToken(str(answer["clientToken"]), datetime.fromisoformat(expires))


FINISHED = frozenset({"completed", "failed", "cancelled"})

R = TypeVar("R")


class Events(Generic[R]):
    """A job's event calls, on `post`: `R` is the seq (blocking) or an
    awaitable of it (asyncio)."""

    info: JobInfo
    keys: Keys

    @property
    def id(self) -> str:
        return self.info.job_id

    def post(self, body: Json, key: Optional[str] = None) -> R:
        """Appends one event (an `Idempotency-Key` derived when `key` is
        not given); its seq."""
        raise NotImplementedError

    def progress(
        self,
        pct: float,
        message: Optional[str] = None,
        *,
        data: Optional[Json] = None,
        key: Optional[str] = None,
    ) -> R:
        """A `progress` event: `pct` from 0 to 100."""
        return self.post(progress(pct, message, data), key)

    def message(self, name: str, data: Optional[Json] = None, *, key: Optional[str] = None) -> R:
        """A `message` event: `name` and any JSON `data`."""
        return self.post(message(name, data), key)

    def complete(self, result: Any = None, *, key: Optional[str] = None) -> R:
        """The `completed` event, with any JSON `result`."""
        return self.post(completed(result), key)

    def fail(self, message: str, code: str = "error", *, key: Optional[str] = None) -> R:
        """The `failed` event: `error.code` and `error.message`."""
        return self.post(failed(message, code), key)

    def cancel(self, reason: Optional[str] = None, *, key: Optional[str] = None) -> R:
        """The `cancelled` event."""
        return self.post(cancelled(reason), key)
