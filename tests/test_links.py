"""actors/storage/links.py: result URLs made when a job is read, whatever the
result holds: a key of the backend in use, a key the local backend stored before
the backend changed, a provider's own URL, or a ``/media/`` path stored before
results held keys."""

from __future__ import annotations

from pathlib import Path

from actors.storage import LocalStorage, ResultLinks
from actors.storage.s3 import S3Storage
from actors.storage.settings import S3Settings

BASE = "https://easel.example"


async def test_every_kind_of_stored_result_is_read(tmp_path: Path) -> None:
    links = ResultLinks(S3Storage(S3Settings(bucket="b", public_base_url="https://cdn.example/")),
                        BASE + "/")
    job = {"id": "gen_1", "results": [
        {"type": "image", "contentType": "image/png", "storage": "s3",
         "key": "easel/2026/12/01/gen_1/0.png", "sha256": "ab", "size": 3},
        {"type": "image", "storage": "local", "key": "gen_1/1.png"},
        {"type": "video", "url": "https://provider.example/out.mp4"},
        {"type": "image", "url": "/media/gen_1/3.png", "contentType": "image/png"},
        {"type": "image", "storage": "gcs", "key": "x"},
    ]}
    shown = await links.present(job)
    assert shown["results"] == [
        {"type": "image", "contentType": "image/png", "sha256": "ab", "size": 3,
         "url": "https://cdn.example/easel/2026/12/01/gen_1/0.png"},
        {"type": "image", "url": f"{BASE}/media/gen_1/1.png"},
        {"type": "video", "url": "https://provider.example/out.mp4"},
        {"type": "image", "url": f"{BASE}/media/gen_1/3.png", "contentType": "image/png"},
        {"type": "image", "url": None},
    ]
    assert job["results"][0]["key"]  # the job itself is left as it was


async def test_a_job_without_results_is_shown_as_it_is(tmp_path: Path) -> None:
    links = ResultLinks(LocalStorage(tmp_path, BASE), BASE)
    job = {"id": "gen_2", "results": []}
    assert await links.present(job) is job
