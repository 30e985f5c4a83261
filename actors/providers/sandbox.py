"""The sandbox provider: real generation, no keys, no network.

``sandbox-image`` draws the prompt into a PNG with Pillow after ``delay`` seconds
and answers synchronously. ``sandbox-video`` behaves like a remote task: its task
id encodes when it was submitted and how long it runs, so its state is a function
of the clock alone and survives a restart of the daemon, as a real provider's task
would. Its output is a real short H.264 MP4 (the prompt's disc moving across the
frame, encoded with PyAV), so clients can be tested against a video.

For trying failure paths without a provider, a prompt containing ``[fail]`` ends
in TASK_FAILED and one containing ``[moderate]`` in CONTENT_MODERATED.

Settings of its own (``SandboxSettings``): ``delay`` and ``video_duration``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import textwrap

import attrs
import av
import trio
from PIL import Image, ImageColor, ImageDraw, ImageFont

from actors.clock import wall_now
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.parameters import Rules
from actors.providers.base import (
    Capabilities,
    Completed,
    JobRequest,
    Provider,
    ProviderSettings,
    Submitted,
    TaskState,
    TaskStatus,
)

#: Pillow drawing and video encoding run in threads, at most this many at once.
_render = trio.CapacityLimiter(2)
SIZE = 512
#: The video: VIDEO_SIZE square, VIDEO_FPS frames a second, VIDEO_SECONDS long.
VIDEO_SIZE = 256
VIDEO_FPS = 12
VIDEO_SECONDS = 2
VIDEO_MODEL = "sandbox-video"
#: The sandbox ignores its parameters: it takes only a small object.
MAX_PARAMETER_BYTES = 4 * 1024


@attrs.frozen
class SandboxSettings(ProviderSettings):
    """``[providers.sandbox]``: the shared settings and the sandbox's own."""

    #: Seconds before an image is drawn.
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    #: Seconds a video task runs before it "finishes".
    video_duration: float = attrs.field(default=20.0, validator=attrs.validators.ge(0))


def _colour(prompt: str) -> tuple[int, int, int]:
    for word in prompt.lower().replace(",", " ").split():
        try:
            return ImageColor.getrgb(word)[:3]
        except ValueError:
            continue
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def _picture(prompt: str, index: int = 0, size: int = SIZE, shift: float = 0.0) -> Image.Image:
    """The prompt as a picture: a disc in the prompt's colour (moved ``shift`` of
    the width to the right) and the prompt's text."""
    colour = _colour(prompt)
    scale = size / SIZE
    image = Image.new("RGB", (size, size), (245, 242, 235))
    draw = ImageDraw.Draw(image)
    dx = shift * size
    draw.ellipse(((96 * scale + dx), 64 * scale, (size - 96 * scale + dx), size - 128 * scale),
                 fill=colour, outline=(40, 40, 40), width=max(1, round(4 * scale)))
    font = ImageFont.load_default(size=max(8, round(22 * scale)))
    lines = textwrap.wrap(prompt, width=36)[:4] or [""]
    y = size - 112 * scale
    for line in lines:
        draw.text((24 * scale, y), line, fill=(20, 20, 20), font=font)
        y += 26 * scale
    if index:
        draw.text((size - 60 * scale, 16 * scale), f"#{index + 1}", fill=(20, 20, 20), font=font)
    return image


def render_png(prompt: str, index: int = 0) -> bytes:
    """Draw ``prompt`` as a 512x512 PNG: a disc in the prompt's colour and its text."""
    out = io.BytesIO()
    _picture(prompt, index).save(out, format="PNG", optimize=False)
    return out.getvalue()


def render_mp4(prompt: str, index: int = 0) -> bytes:
    """A short H.264 MP4 of ``prompt``: its disc sliding across the frame."""
    out = io.BytesIO()
    frames = VIDEO_FPS * VIDEO_SECONDS
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        for n in range(frames):
            picture = _picture(prompt, index, VIDEO_SIZE, shift=0.25 * n / frames - 0.125)
            container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode(None))  # flush the encoder
    return out.getvalue()


def _data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64," + base64.b64encode(data).decode()


async def _render_all(prompt: str, count: int, video: bool = False) -> tuple[str, ...]:
    render, content_type = (render_mp4, "video/mp4") if video else (render_png, "image/png")
    outputs = []
    for index in range(count):
        data = await trio.to_thread.run_sync(render, prompt, index, limiter=_render)
        outputs.append(_data_uri(data, content_type))
    return tuple(outputs)


def _check_prompt(prompt: str) -> ErrorInfo | None:
    if "[moderate]" in prompt:
        return ErrorInfo(ErrorCode.CONTENT_MODERATED, "sandbox: prompt was moderated")
    if "[fail]" in prompt:
        return ErrorInfo(ErrorCode.TASK_FAILED, "sandbox: the task failed as asked")
    return None


class SandboxAdapter:
    name = "sandbox"

    def __init__(self, settings: SandboxSettings, name: str = "sandbox") -> None:
        self.name = name
        self.delay = settings.delay
        self.video_duration = settings.video_duration
        # Prompts and videos of running video tasks; a restart loses them, so check()
        # falls back to drawing the task id (the video is then generic, the job
        # still succeeds).
        self._videos: dict[str, tuple[str, tuple[str, ...]]] = {}

    async def submit(self, job: JobRequest) -> Submitted | Completed:
        if job.spec.provider_model == VIDEO_MODEL:
            # Encoded now, not when the task ends: a check then answers at once, as
            # a provider's would, and the task's time runs from after the encoding.
            videos = () if _check_prompt(job.prompt) else await _render_all(
                job.prompt, job.number_of_outputs, video=True)
            task_id = f"sbv:{job.job_id}:{wall_now():.3f}:{self.video_duration:g}"
            self._videos[task_id] = (job.prompt, videos)
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
        if elapsed < length:
            return TaskStatus(TaskState.RUNNING, progress=max(0.0, elapsed / length))
        prompt, videos = self._videos.pop(task_id, (f"video {job_id}", ()))
        problem = _check_prompt(prompt)
        if problem is not None:
            return TaskStatus(TaskState.FAILED, error=problem)
        return TaskStatus(TaskState.SUCCEEDED,
                          outputs=videos or await _render_all(prompt, 1, video=True))

    async def cancel(self, task_id: str) -> None:
        self._videos.pop(task_id, None)

    async def aclose(self) -> None:
        pass


PROVIDER = Provider(
    name="sandbox",
    adapter=SandboxAdapter,
    # Nothing runs remotely: a cancelled video task is simply forgotten.
    capabilities=Capabilities(cancel=True),
    rules=lambda provider_model: Rules(None, max_bytes=MAX_PARAMETER_BYTES),
    settings=SandboxSettings,
)
