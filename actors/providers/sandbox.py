"""The sandbox provider: real generation, no keys, no network.

``sandbox-image`` draws the prompt into a PNG with Pillow after ``delay`` seconds
and answers synchronously. ``sandbox-video`` behaves like a remote task: its task
id encodes when it was submitted and how long it runs, so its state is a function
of the clock alone and survives a restart of the daemon, as a real provider's task
would. Its output is a PNG poster frame.

For trying failure paths without a provider, a prompt containing ``[fail]`` ends
in TASK_FAILED and one containing ``[moderate]`` in CONTENT_MODERATED.
"""

from __future__ import annotations

import base64
import hashlib
import io
import textwrap

import trio
from PIL import Image, ImageColor, ImageDraw, ImageFont

from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.providers.base import (
    Completed,
    JobRequest,
    ProviderSettings,
    Submitted,
    TaskState,
    TaskStatus,
)

_pillow = trio.CapacityLimiter(2)
SIZE = 512


def _colour(prompt: str) -> tuple[int, int, int]:
    for word in prompt.lower().replace(",", " ").split():
        try:
            return ImageColor.getrgb(word)[:3]
        except ValueError:
            continue
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def render_png(prompt: str, index: int = 0) -> bytes:
    """Draw ``prompt`` as a 512x512 PNG: a disc in the prompt's colour and its text."""
    colour = _colour(prompt)
    image = Image.new("RGB", (SIZE, SIZE), (245, 242, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((96, 64, SIZE - 96, SIZE - 128), fill=colour, outline=(40, 40, 40), width=4)
    font = ImageFont.load_default(size=22)
    lines = textwrap.wrap(prompt, width=36)[:4] or [""]
    y = SIZE - 112
    for line in lines:
        draw.text((24, y), line, fill=(20, 20, 20), font=font)
        y += 26
    if index:
        draw.text((SIZE - 60, 16), f"#{index + 1}", fill=(20, 20, 20), font=font)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


async def _render_all(prompt: str, count: int) -> tuple[str, ...]:
    outputs = []
    for index in range(count):
        png = await trio.to_thread.run_sync(render_png, prompt, index, limiter=_pillow)
        outputs.append(_data_uri(png))
    return tuple(outputs)


def _check_prompt(prompt: str) -> ErrorInfo | None:
    if "[moderate]" in prompt:
        return ErrorInfo(ErrorCode.CONTENT_MODERATED, "sandbox: prompt was moderated")
    if "[fail]" in prompt:
        return ErrorInfo(ErrorCode.TASK_FAILED, "sandbox: the task failed as asked")
    return None


class SandboxAdapter:
    name = "sandbox"

    def __init__(self, settings: ProviderSettings, name: str = "sandbox") -> None:
        self.name = name
        self.delay = settings.delay
        self.video_duration = settings.video_duration
        # Prompts of running video tasks; a restart loses them, so check() falls back
        # to drawing the task id (the poster is then generic, the job still succeeds).
        self._prompts: dict[str, tuple[str, int]] = {}

    async def submit(self, job: JobRequest) -> Submitted | Completed:
        if job.spec.provider_model == "sandbox-video":
            task_id = f"sbv:{job.job_id}:{wall_now():.3f}:{self.video_duration:g}"
            self._prompts[task_id] = (job.prompt, job.number_of_outputs)
            return Submitted(task_id)
        await trio.sleep(self.delay)
        problem = _check_prompt(job.prompt)
        if problem is not None:
            raise EaselError(problem.code, problem.message, retryable=False)
        return Completed(await _render_all(job.prompt, job.number_of_outputs))

    async def check(self, task_id: str) -> TaskStatus:
        try:
            kind, job_id, started, duration = task_id.split(":")
            start, length = float(started), float(duration)
        except ValueError:
            raise EaselError(ErrorCode.NOT_FOUND, f"sandbox: no task {task_id}") from None
        elapsed = wall_now() - start
        prompt, count = self._prompts.get(task_id, (f"video {job_id}", 1))
        if elapsed < length:
            return TaskStatus(TaskState.RUNNING, progress=max(0.0, elapsed / length))
        problem = _check_prompt(prompt)
        if problem is not None:
            return TaskStatus(TaskState.FAILED, error=problem)
        self._prompts.pop(task_id, None)
        return TaskStatus(TaskState.SUCCEEDED, outputs=await _render_all(prompt, count))

    async def cancel(self, task_id: str) -> None:
        self._prompts.pop(task_id, None)

    async def reconcile(self, job: JobRequest) -> list[str] | None:
        return None  # nothing remote to ask; the sandbox models are safe to resubmit

    async def aclose(self) -> None:
        pass
ADAPTER = SandboxAdapter
