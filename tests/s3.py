"""A real S3-compatible server for tests: moto's standalone server on a loopback port.

Fixtures (enabled in the root ``conftest.py``):

- ``s3_server`` (session): starts ``moto.server`` in a subprocess on a free loopback port and
  yields its endpoint URL; stopped at the end of the session.
- ``s3`` (per test): a fresh bucket on that server and the obviously fake credentials in the
  standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL_S3``), set for the test only (so subprocesses and any s3fs client started by
  the test reach the fake server and nothing else). Yields a :class:`FakeS3`.

Example::

    def test_roundtrip(s3):
        write_bytes_atomic(s3.url("a.txt"), b"x")
        assert read_bytes(s3.url("a.txt"), storage_options=s3.storage_options) == b"x"
        assert s3.object_keys() == ["a.txt"]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

__all__ = [
    "FAKE_ACCESS_KEY_ID",
    "FAKE_SECRET_ACCESS_KEY",
    "FakeS3",
    "S3Server",
    "s3",
    "s3_server",
]

#: Obviously fake credentials: moto accepts any.
FAKE_ACCESS_KEY_ID = "FAKEACCESSKEYIDS3TEST"
FAKE_SECRET_ACCESS_KEY = "fake-secret-access-key-for-the-moto-server"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class S3Server:
    """moto's standalone server (``python -m moto.server``) in a subprocess on 127.0.0.1.

    Examples:
        >>> with S3Server() as server:  # doctest: +SKIP
        ...     server.endpoint_url
        'http://127.0.0.1:...'
    """

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers (a few tries on a port taken meanwhile)."""
        for _ in range(3):
            self.port = _free_port()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MOTO_PORT": str(self.port)},
            )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1.0)
                    return
                except httpx.HTTPError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError("moto's S3 server did not start")

    def stop(self) -> None:
        """Stop the server (the process this object started, by its id)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class FakeS3:
    """One test's bucket on the fake S3 server."""

    endpoint_url: str
    bucket: str
    #: fsspec/s3fs options that reach the server with the fake credentials (for code that is
    #: given ``storage_options`` rather than reading the AWS variables).
    storage_options: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str = "") -> str:
        """``s3://{bucket}/{path}``."""
        return f"s3://{self.bucket}/{path.lstrip('/')}".rstrip("/") if path else f"s3://{self.bucket}"

    def client(self) -> Any:
        """A boto3 S3 client on the server (for checks behind the code's back)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def object_keys(self) -> list[str]:
        """Every object key in the bucket, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        """One object's bytes."""
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        """Write an object behind the code's back."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)


def clear_s3fs_cache() -> None:
    """Forget cached s3fs filesystems (they keep the credentials and endpoint they were made with)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a loopback port for the session; yields its endpoint URL."""
    with S3Server() as server:
        yield server.endpoint_url


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeS3]:
    """A fresh bucket and the fake credentials in the standard AWS variables, for one test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # Nothing from the developer's ~/.aws may take part.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    clear_s3fs_cache()
    fake = FakeS3(
        endpoint_url=s3_server,
        bucket=f"test-{uuid.uuid4().hex[:12]}",
        storage_options={
            "key": FAKE_ACCESS_KEY_ID,
            "secret": FAKE_SECRET_ACCESS_KEY,
            "endpoint_url": s3_server,
            "client_kwargs": {"region_name": REGION},
        },
    )
    fake.client().create_bucket(Bucket=fake.bucket)
    try:
        yield fake
    finally:
        clear_s3fs_cache()
