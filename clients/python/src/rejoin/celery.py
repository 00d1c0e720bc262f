"""Celery: a task base that reports its task's run as a rejoin job.

    from rejoin.celery import RejoinTask

    @app.task(base=RejoinTask, bind=True, acks_late=True)
    def scan(self, shelves):
        for i, shelf in enumerate(shelves):
            self.progress(100 * (i + 1) / len(shelves), f"shelf {i + 1}")
        return {"books": 42}

    job = scan.start(["a", "b"])    # creates the job, enqueues the task
    job.job_id, job.client_token    # for the app that watches it

A run creates or adopts its job (the id `start` put in the task's
headers, or one derived from the task's id), skips the work when the job
has already finished, completes the job with the task's return value, and
fails it with the exception's class and message when the task raises for
the last time (not when it is retried). Every event's `Idempotency-Key`
is scoped by the task's id, which Celery keeps across retries and
redeliveries, so a rerun posts nothing twice.

The server and the service token come from the app's configuration
(`rejoin_url`, `rejoin_token`) or else from `REJOIN_URL` and
`REJOIN_TOKEN`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple

import celery
from celery.exceptions import Ignore, Reject, Retry

from . import _core
from ._core import JobFinished, JobInfo, JobOptions, Json
from .producer import Job, Rejoin

log = logging.getLogger(__name__)

#: The task header that carries the job's id.
JOB_HEADER = "rejoin_job_id"

#: Where a job id derived from a task id lives.
TASK_NAMESPACE = uuid.UUID("5f1d7b3e-8a2c-4c61-9b0e-2f6d1c9a7e41")

#: What a task raises that is not its outcome: Celery runs it again or
#: drops it, and the job goes on.
NOT_AN_OUTCOME = (Retry, Ignore, Reject)


def job_id_for_task(task_id: str) -> str:
    """The job a task reports to when nothing named one."""
    return str(uuid.uuid5(TASK_NAMESPACE, task_id))


class RejoinTask(celery.Task):  # type: ignore[misc]
    """A Celery task whose run is a rejoin job; see the module's text."""

    abstract = True
    _rejoin: Optional[Rejoin] = None
    _lock = threading.Lock()
    _running = threading.local()

    @property
    def rejoin(self) -> Rejoin:
        """The producer, made the first time a task needs it."""
        with self._lock:
            if RejoinTask._rejoin is None:
                conf = self.app.conf
                url = conf.get("rejoin_url") or os.environ.get("REJOIN_URL")
                token = conf.get("rejoin_token") or os.environ.get("REJOIN_TOKEN")
                if not url or not token:
                    raise RuntimeError(
                        "rejoin: set rejoin_url and rejoin_token in the Celery "
                        "configuration, or REJOIN_URL and REJOIN_TOKEN"
                    )
                RejoinTask._rejoin = Rejoin(url, token)
            return RejoinTask._rejoin

    @property
    def job(self) -> Job:
        """The job of the run in progress."""
        job: Optional[Job] = getattr(self._running, "job", None)
        if job is None:
            raise RuntimeError("rejoin: no job outside a running RejoinTask")
        return job

    def progress(self, pct: float, message: Optional[str] = None, **kw: Any) -> int:
        """A `progress` event on the run's job."""
        return self.job.progress(pct, message, **kw)

    def message(self, name: str, data: Optional[Json] = None, **kw: Any) -> int:
        """A `message` event on the run's job."""
        return self.job.message(name, data, **kw)

    def start(
        self,
        args: Tuple[Any, ...] = (),
        kwargs: Optional[Dict[str, Any]] = None,
        *,
        job_id: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        job_options: Optional[JobOptions] = None,
        **options: Any,
    ) -> JobInfo:
        """Creates the job (or adopts `job_id`), then enqueues the task
        carrying its id (`job_options` as `create_job` takes them, `options`
        as `apply_async` does); the job's id and client token."""
        task_id = options.pop("task_id", None) or str(uuid.uuid4())
        created: JobOptions = {**(job_options or {})}
        created["metadata"] = {"celeryTask": self.name, **(metadata or {})}
        job = self.rejoin.create_job(job_id or job_id_for_task(task_id), **created)
        headers = {**options.pop("headers", {}), JOB_HEADER: job.id}
        self.apply_async(args, kwargs, task_id=task_id, headers=headers, **options)
        return job.info

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            return super().__call__(*args, **kwargs)
        job_id = getattr(request, JOB_HEADER, None) or (request.headers or {}).get(JOB_HEADER)
        job = self.rejoin.create_job(
            job_id or job_id_for_task(request.id),
            metadata={"celeryTask": self.name},
            scope=request.id,
        )
        status = job.state().get("status")
        if status in _core.FINISHED:
            log.info("rejoin: job %s already %s; task %s not run again", job.id, status, request.id)
            return None
        self._running.job = job
        try:
            result = super().__call__(*args, **kwargs)
        except NOT_AN_OUTCOME:
            raise
        except Exception as error:
            finish(job, _core.failure_of(error))
            raise
        finally:
            self._running.job = None
        finish(job, _core.completed(as_json(result)))
        return result


def finish(job: Job, body: Json) -> None:
    """Posts the job's terminal event; an earlier run may have posted one."""
    try:
        job.post(body)
    except JobFinished:
        log.info("rejoin: job %s had already finished", job.id)


def as_json(value: Any) -> Any:
    """A task's return value as the job's result: itself when it is JSON,
    else its text."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
