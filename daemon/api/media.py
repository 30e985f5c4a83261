"""The media family: the stored outputs of finished jobs, under ``/media/<job id>/<n>.<ext>``.

Files are served from the daemon's media directory only: a name that would leave it
(``..``, an absolute path) is answered 404 by Quart's safe join, and so is the
output of a job the caller's API key may not see (``auth.check_media``).

``/media/inputs/<sha256>.<ext>`` are input images published for providers that take
only URLs (Pollo): the provider fetches them without an Easel key, so the route is
open, and the name, the SHA-256 of the content, cannot be guessed without it.
"""

from __future__ import annotations

from quart import Blueprint, Response, send_from_directory

from actors.images.publish import INPUTS_DIR
from daemon.api.auth import check_media
from daemon.api.services import services

blueprint = Blueprint("media", __name__, url_prefix="/media")


@blueprint.get("/<path:name>")
async def media(name: str) -> Response:
    await check_media(name)
    return await send_from_directory(services().media_dir, name)


@blueprint.get(f"/{INPUTS_DIR}/<name>")
async def published_input(name: str) -> Response:
    return await send_from_directory(services().media_dir / INPUTS_DIR, name)
