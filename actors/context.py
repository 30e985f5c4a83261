"""Context variables that tie log lines to the job, request and provider they concern.

They live in ``actors`` (not ``daemon``) because actors set them where work on a job
begins, and the logging set-up in ``daemon`` only reads them. A trio child task copies
the context of the task that spawned it, at spawn time, so each actor sets ``job_id``
inside the task that works on that job, never in the mailbox loop.
"""

from __future__ import annotations

import contextvars

job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("easel_job_id", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "easel_request_id", default=None
)
provider: contextvars.ContextVar[str | None] = contextvars.ContextVar("easel_provider", default=None)
