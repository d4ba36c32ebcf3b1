"""A real S3-compatible HTTP server on loopback (moto's standalone server) for the storage tests.

`S3Server.start()` runs `moto_server` in its own process on a free port and exports what every
client needs to reach it (`AWS_ENDPOINT_URL`, dummy keys, a region): this process, Ray workers and
torchrun ranks started afterwards inherit it, as nodes of a cluster would from their environment.
`bucket()` makes a fresh bucket and returns its `s3://` URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._saved: dict[str, str | None] = {}

    def start(self) -> "S3Server":
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        self.export(self.endpoint)
        return self

    def export(self, endpoint: str) -> None:
        """Point every S3 client of this process and its children at `endpoint`."""
        for k, v in {**ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}.items():
            self._saved.setdefault(k, os.environ.get(k))
            os.environ[k] = v
        from s3fs import S3FileSystem

        S3FileSystem.clear_instance_cache()  # clients made before keep their old endpoint

    def bucket(self, prefix: str = "t") -> str:
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
