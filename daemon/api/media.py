"""The media family: the stored outputs of finished jobs, under ``/media/<job id>/<n>.<ext>``.

Files are served from the daemon's media directory only: a name that would leave it
(``..``, an absolute path) is answered 404 by Quart's safe join.
"""

from __future__ import annotations

from quart import Blueprint, Response, send_from_directory

from daemon.api.services import services

blueprint = Blueprint("media", __name__, url_prefix="/media")


@blueprint.get("/<path:name>")
async def media(name: str) -> Response:
    return await send_from_directory(services().media_dir, name)
