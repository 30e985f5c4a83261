"""What a provider's finished task comes to: its outputs, or a classified failure.

Providers say "moderated" in their own words, often only in a free-text failure
message (Kling's ``task_status_msg``, Replicate's ``error``, Pollo's ``failMsg``);
one word list here keeps CONTENT_MODERATED versus TASK_FAILED the same for all.
"""

from __future__ import annotations

from typing import Any

from actors.errors import ErrorCode, ErrorInfo
from actors.providers.base import TaskState, TaskStatus
from actors.providers.http import redact

#: Words in a failure message that mean a moderation refusal, not a model failure.
MODERATION_WORDS = (
    "moderat", "nsfw", "sensitive", "inappropriate", "safety", "policy", "violat", "risk",
    "flagged by a content checker",
)


def looks_moderated(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in MODERATION_WORDS)


def failed(message: str, provider: str, details: dict[str, Any] | None = None) -> TaskStatus:
    """A failed task: CONTENT_MODERATED when the message says so, else TASK_FAILED."""
    code = ErrorCode.CONTENT_MODERATED if looks_moderated(message) else ErrorCode.TASK_FAILED
    return TaskStatus(TaskState.FAILED, error=ErrorInfo(
        code, f"{provider}: {redact(message, 300)}", details or {"provider": provider}))


def succeeded(outputs: tuple[str, ...], provider: str) -> TaskStatus:
    """A succeeded task; one that names no output is a failure, not a success."""
    if not outputs:
        return TaskStatus(TaskState.FAILED, error=ErrorInfo(
            ErrorCode.TASK_FAILED, f"{provider}: the task succeeded without any output",
            {"provider": provider}))
    return TaskStatus(TaskState.SUCCEEDED, outputs=outputs, progress=1.0)
