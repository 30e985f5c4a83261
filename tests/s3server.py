"""A real S3 API server for the storage tests: moto in server mode, over HTTP.

``MotoServer`` runs ``python -m moto.server`` as a subprocess on a free loopback
port; ``stop`` and ``start`` again make an outage (moto keeps its buckets in
memory, so the test creates the bucket again when the server returns, as an
operator's would still exist).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.conftest import free_port

BUCKET = "easel-test"
#: moto takes any credentials; boto3 needs some.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServer:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> MotoServer:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise RuntimeError("moto did not start")
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def make_public(self) -> None:
        """Let anyone read the bucket's objects (what a public bucket's policy says)."""
        self.client().put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                           "Resource": f"arn:aws:s3:::{BUCKET}/*"}],
        }))

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **CREDENTIALS)

    def toml(self, **extra: Any) -> str:
        """The ``[storage]`` tables of a daemon keeping its outputs here."""
        settings = {
            "bucket": BUCKET, "endpoint_url": self.url, "region": "us-east-1",
            "addressing_style": "path", "access_key_id": CREDENTIALS["aws_access_key_id"],
            "secret_access_key": CREDENTIALS["aws_secret_access_key"], "max_attempts": 1,
            "connect_timeout": 2, "read_timeout": 10, **extra,
        }
        lines = "\n".join(
            f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}"
            for k, v in settings.items())
        return f'[storage]\nbackend = "s3"\n\n[storage.s3]\n{lines}\n'
