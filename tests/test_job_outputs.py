"""A finished job's files while S3 goes down (RELIABILITY.md F12), against a real moto S3
server on loopback that the test stops and starts: retried through a short outage; a lasting
one fails the job with a clear error instead of reporting partial output."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import pytest

from genserve.errors import Unavailable
from genserve.jobs.outputs import store_outputs

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 64).decode()
OUTPUT = {"images": [{"url": f"data:image/png;base64,{PNG}", "content_type": "image/png",
                      "width": 8, "height": 8}] * 2, "seed": 1}


@pytest.fixture
def s3_files(monkeypatch):
    from moto.server import ThreadedMotoServer

    from genserve.files import FileService
    from genserve.storage import S3Storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": "/nonexistent", "NO_PROXY": "127.0.0.1",
                        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="outputs")
    files = FileService(S3Storage("outputs", "jobs"), secret="s")
    yield files, server, port
    server.stop()


def _restart(port: int):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def test_a_short_outage_is_retried(s3_files):
    files, server, port = s3_files
    server.stop()
    retries = []

    async def on_retry(message):
        retries.append(message)

    async def scenario():
        task = asyncio.ensure_future(store_outputs(files, "job-1", OUTPUT, on_retry,
                                                   attempts=6, first_delay_s=0.3))
        await asyncio.sleep(0.5)
        restarted = await asyncio.to_thread(_restart, port)
        try:
            return await task
        finally:
            restarted.stop()  # the fixture's stop() is then a no-op on a stopped server

    stored = asyncio.run(scenario())
    assert retries and "retrying" in retries[0]
    keys = [img["url"].removeprefix("genserve-file:") for img in stored["images"]]
    assert len(set(keys)) == 2 and all(k.startswith("job-1/") for k in keys)


def test_a_lasting_outage_fails_clearly_without_reporting_output(s3_files):
    files, server, _ = s3_files
    server.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="could not store the outputs after 3 attempts"):
        asyncio.run(store_outputs(files, "job-2", OUTPUT, attempts=3, first_delay_s=0.05))
    assert time.monotonic() - started < 60
