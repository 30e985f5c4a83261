"""A job's input images made ready for one provider, before its create is sent.

``InputPreparer`` belongs to one provider section (its actor calls ``prepare``
after building the request and before spending a token on it). For each image:

- the steps are the job's ``preprocess`` (a preset name, ``"none"``, or an
  object; checked at submission), or the provider's default preset;
- an image the provider can take as given, with no steps to apply, goes as it is
  (a URL is not even fetched: the provider fetches it);
- otherwise its bytes are read (``actors/images/source.py``: a ``data:`` URI, or
  the client's URL through the pinned fetch under a deadline), run through the
  pipeline in a worker thread under the shared limiter (the event loop never
  waits on Pillow), and sent in the provider's form (``actors/images/forms.py``):
  published at a URL, bare base64, or a ``data:`` URI;
- a batch item's ``easel:output/<job_id>/<n>`` (its dependency's output,
  ``actors/batches/model.py``; never a client's: validation takes only http(s)
  and ``data:`` images) is read from storage (``actors/storage/outputs.py``)
  and goes the way a ``data:`` image does, checked even without steps; an output
  the provider kept at its own URL goes the way a client's URL does. One that is
  not stored fails the job (INVALID_PARAMETERS, saying why).

A storage backend that does not answer (reading a stored output, publishing to
the bucket) fails the job as retryable (STORAGE_ERROR): nothing was sent.

For a provider that takes only URLs, Easel publishes the prepared image
(``actors/images/publish.py``); where it cannot (no public base URL), a client's
URL goes as given, unprocessed, and an inline image fails the job.

A refused image fails the job with INVALID_PARAMETERS naming it
(``input_images[1] is labelled image/png but holds a JPEG image``), before
anything is sent or paid for.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
import trio

from actors.batches.model import parse_output_ref
from actors.conversion import Invalid
from actors.errors import EaselError, ErrorCode
from actors.fetch import Fetcher
from actors.images.forms import Form, InputSpec
from actors.images.pipeline import Prepared, process
from actors.images.presets import Preprocess, PreprocessSettings, resolve
from actors.images.publish import InputPublisher, NotPublishable
from actors.images.source import fetch_image, split_data_uri
from actors.images.validate import ImageRefused, Limits
from actors.providers.base import JobRequest
from actors.storage.base import StorageError
from actors.storage.outputs import OutputMissing, StoredOutput, StoredOutputs
from actors.targets import IPAddress, Resolver, is_public, resolve_host

log = logging.getLogger(__name__)


class InputPreparer:
    """Prepares input images for the provider section ``provider`` (module doc).

    ``limiter``: the worker threads every section's preparations share.
    ``outputs``: where a batch item's ``easel:output/...`` images are read (None:
    nowhere, and such an image fails its job). ``resolve`` and ``public`` are the
    fetch's seams for tests (``Fetcher``).
    """

    def __init__(
        self,
        provider: str,
        spec: InputSpec,
        settings: PreprocessSettings,
        *,
        publisher: InputPublisher,
        limiter: trio.CapacityLimiter,
        outputs: StoredOutputs | None = None,
        allow_private: bool = False,
        resolve_address: Resolver = resolve_host,
        public: Callable[[IPAddress], bool] = is_public,
    ) -> None:
        self.provider = provider
        self.spec = spec
        self.settings = settings
        self.limits = Limits(settings.max_input_bytes, settings.max_pixels)
        self._publisher = publisher
        self._limiter = limiter
        self._outputs = outputs
        self._allow_private = allow_private
        self._resolve = resolve_address
        self._public = public

    def steps(self, preprocess: Any) -> Preprocess | None:
        """The steps for a job whose stored ``preprocess`` is this (``None``: the
        provider's default)."""
        if preprocess is None:
            if self.spec.preset is None:
                return None
            preprocess = self.spec.preset
        try:
            return resolve(preprocess, self.settings.presets)
        except (Invalid, cattrs.BaseValidationError) as exc:
            # Checked at submission; a preset since removed from the config.
            raise EaselError(ErrorCode.INVALID_PARAMETERS, f"preprocess: {exc}",
                             {"provider": self.provider}, retryable=False, sent=False) from None

    async def prepare(self, request: JobRequest, preprocess: Any) -> JobRequest:
        """``request`` with its input images in the form the provider takes."""
        if not request.input_images:
            return request
        steps = self.steps(preprocess)
        prepared = []
        for index, image in enumerate(request.input_images):
            name = f"input_images[{index}]"
            try:
                prepared.append(await self._prepare_one(image, steps))
            except ImageRefused as exc:
                raise EaselError(
                    ErrorCode.INVALID_PARAMETERS, f"{name} {exc}",
                    {"image": name, "provider": self.provider}, retryable=False, sent=False,
                ) from None
            except NotPublishable as exc:
                raise EaselError(
                    ErrorCode.INVALID_PARAMETERS,
                    f"{name}: {self.provider} takes input images only as URLs, and {exc}",
                    {"image": name, "provider": self.provider}, retryable=False, sent=False,
                ) from None
            except StorageError as exc:  # reading a stored output, or publishing to s3
                log.warning("%s: storage failed: %s", name, exc)
                raise EaselError(
                    ErrorCode.STORAGE_ERROR, f"{name}: the storage backend did not answer",
                    {"image": name, "provider": self.provider}, retryable=True, sent=False,
                ) from None
        return attrs.evolve(request, input_images=tuple(prepared))

    async def _prepare_one(self, image: str, steps: Preprocess | None) -> str:
        if image.startswith("easel:"):
            stored = await self._stored(image)
            if stored.url is None:
                return await self._process(stored.data, stored.content_type, steps)
            image = stored.url  # kept at the provider: as a client's URL goes
        if steps is None and self.spec.accepts(image):
            return image
        if image.startswith("data:"):
            data, label = split_data_uri(image)
        else:
            data, label = await self._fetch(image)
        try:
            return await self._process(data, label, steps)
        except NotPublishable as exc:
            if not self.spec.accepts(image) or image.startswith("data:"):
                raise
            # Nowhere to publish the prepared image: the URL goes as given, as it
            # would without steps.
            log.info("an input image sent as given: %s", exc)
            return image

    async def _stored(self, image: str) -> StoredOutput:
        """The stored output ``image`` names (``ImageRefused`` when there is none)."""
        reference = parse_output_ref(image)
        if reference is None:  # a placeholder never rewritten, or a foreign scheme
            raise ImageRefused("is not an image Easel can read")
        job_id, index = reference
        if self._outputs is None:
            raise ImageRefused("is a stored output, and none can be read here")
        try:
            return await self._outputs.read(job_id, index, self.limits.max_bytes)
        except OutputMissing as exc:
            raise ImageRefused(str(exc)) from None

    async def _process(self, data: bytes, label: str | None, steps: Preprocess | None) -> str:
        try:
            result = await trio.to_thread.run_sync(
                process, data, label, steps, self.limits, limiter=self._limiter)
        except ImageRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder's own error is the image's
            log.warning("input image not processed: %r", exc)
            raise ImageRefused(f"cannot be processed ({type(exc).__name__})") from None
        return await self._deliver(result)

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        seconds = self.settings.fetch_timeout
        async with Fetcher(timeout=seconds, allow_private=self._allow_private,
                           resolve=self._resolve, public=self._public) as fetcher:
            with trio.move_on_after(seconds) as scope:
                return await fetch_image(fetcher, url, self.limits.max_bytes)
        assert scope.cancelled_caught
        raise ImageRefused(f"({url}) could not be fetched within {seconds:g} s")

    async def _deliver(self, result: Prepared) -> str:
        form = self.spec.made
        if form is Form.URL:
            try:
                return await self._publisher.publish_input(result.data, result.content_type)
            except OSError as exc:  # disk full, permissions: Easel's, not the client's
                raise EaselError(
                    ErrorCode.INTERNAL_ERROR, f"{self.provider}: an input image could not be "
                    f"published ({exc.strerror or exc})", {"provider": self.provider},
                    retryable=True, sent=False) from None
        encoded = base64.b64encode(result.data).decode("ascii")
        if form is Form.BASE64:
            return encoded
        return f"data:{result.content_type};base64,{encoded}"  # DATA_URI, or BYTES' carrier
