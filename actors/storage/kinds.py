"""What an output is, told from its first bytes, never from a header.

A provider's ``Content-Type`` can be wrong (``application/octet-stream`` for a PNG,
``text/html`` for an error page served with 200), so the finalizer reads the
first ``HEAD_BYTES`` of each output and looks for a known signature. Only images
and videos are taken; anything else is refused as the provider's error.
"""

from __future__ import annotations

from actors.catalog import MediaKind

#: How many leading bytes ``sniff`` needs to tell every type it knows.
HEAD_BYTES = 64

#: Content type -> file extension of every type an output may have.
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/heic": "heic",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "video/x-matroska": "mkv",
}

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"}
#: Atoms an old QuickTime file may start with instead of ``ftyp``.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff(head: bytes) -> str | None:
    """The content type ``head`` (the file's first bytes) shows, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in _HEIF_BRANDS:
            return "image/heic"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head[4:8] in _QUICKTIME_ATOMS:
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, or WebM by its DocType
        return "video/webm" if b"webm" in head[:HEAD_BYTES] else "video/x-matroska"
    return None


def kind_of(content_type: str) -> MediaKind:
    """Image or video, for a content type ``sniff`` answers."""
    return MediaKind.VIDEO if content_type.startswith("video/") else MediaKind.IMAGE


def extension_for(content_type: str) -> str:
    """The file extension stored outputs of ``content_type`` get (``bin`` if unknown)."""
    return EXTENSIONS.get(content_type.split(";")[0].strip().lower(), "bin")
