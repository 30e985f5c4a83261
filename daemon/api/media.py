"""The media family: the stored outputs of finished jobs, under ``/media/<job id>/<n>.<ext>``.

Files are served from the daemon's media directory only: a name that would leave it
(``..``, an absolute path) is answered 404 by Quart's safe join, and so is the
output of a job the caller's API key may not see (``auth.check_media``).
"""

from __future__ import annotations

from quart import Blueprint, Response, send_from_directory

from daemon.api.auth import check_media
from daemon.api.services import services

blueprint = Blueprint("media", __name__, url_prefix="/media")


@blueprint.get("/<path:name>")
async def media(name: str) -> Response:
    await check_media(name)
    return await send_from_directory(services().media_dir, name)
