"""Output storage (local directory, S3) and job-input fetching (http, data:, local, s3).

Everything is real and on loopback: a moto S3 server and an HTTP file server started here,
temporary directories for local files. boto3 finds moto through ``AWS_ENDPOINT_URL``, as a
deployment finds MinIO.
"""

from __future__ import annotations

import base64
import http.server
import os
import threading
import uuid
from pathlib import Path

import pytest

from genserve import storage as storage_module
from genserve.errors import InvalidInput
from genserve.fetch import Fetcher
from genserve.storage import LocalStorage, S3Storage, open_storage
from training.sources import fetch_text, fetch_to

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
                       "hKmMIQAAAABJRU5ErkJggg==")

BAD_KEYS = ["", "../x", "a/../../x", "/etc/passwd", "a\\b", "a\x00b", "a//b", "a/", "./a",
            "a/./b", "k" * 1025]


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (port chosen by the OS) and an environment that points
    boto3 at it with dummy credentials; nothing from ~/.aws is read."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", url)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        yield url
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """A client (built from the environment alone) and a fresh bucket."""
    import boto3

    client = boto3.client("s3")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


class FileServer:
    """A loopback HTTP server answering from ``files`` and recording every request path."""

    def __init__(self):
        files = self.files = {}
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"


@pytest.fixture(scope="module")
def web():
    server = FileServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def assert_invalid(exc_info, field: str, *phrases: str) -> None:
    err = exc_info.value
    assert err.field == field
    assert f"`{field}`" in err.message
    for phrase in phrases:
        assert phrase in err.message, err.message


def assert_empty(folder: Path) -> None:
    assert list(folder.iterdir()) == [], "a failed fetch left files behind"


# -- LocalStorage ------------------------------------------------------------------------------

def test_local_storage_round_trip(tmp_path):
    store = LocalStorage(tmp_path / "outputs")
    config = store.put_bytes("job-1/config.json", b'{"rank": 16}', "application/json")
    assert config.url == (tmp_path / "outputs/job-1/config.json").as_uri()
    assert config.url.startswith("file:///")
    assert (config.content_type, config.file_name, config.file_size) == (
        "application/json", "config.json", 12)

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\0" * 1000)
    lora = store.put_file("job-1/lora/pytorch_lora_weights.safetensors", weights)
    assert (lora.content_type, lora.file_name, lora.file_size) == (
        "application/octet-stream", "pytorch_lora_weights.safetensors", 1000)
    assert store.put_file("job-1/preview.png", weights).content_type == "image/png"
    assert store.put_file("job-1/preview.bin", weights, "image/webp").content_type == "image/webp"
    store.put_bytes("job-12/keep.txt", b"other job", "text/plain")

    assert store.exists("job-1/config.json") and not store.exists("job-1/nothing.json")
    copy = store.get_file("job-1/config.json", tmp_path / "back" / "config.json")
    assert copy.read_bytes() == b'{"rank": 16}'
    with pytest.raises(FileNotFoundError):
        store.get_file("job-1/nothing.json", tmp_path / "back" / "nothing.json")
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["config.json"]

    assert store.delete_prefix("job-1") == 4
    assert not store.exists("job-1/config.json")
    assert store.exists("job-12/keep.txt")  # a whole path part, not a string prefix
    assert store.delete_prefix("job-1") == 0
    assert not list((tmp_path / "outputs").rglob("*.partial"))


@pytest.mark.parametrize("key", BAD_KEYS)
def test_local_storage_refuses_unsafe_keys(tmp_path, key):
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError, match="storage key"):
        store.put_bytes(key, b"x", "text/plain")
    with pytest.raises(ValueError):
        store.url(key)
    assert_empty(tmp_path)


def test_local_storage_refuses_a_symlink_out_of_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError, match="outside"):
        store.put_bytes("link/x.txt", b"x", "text/plain")
    with pytest.raises(ValueError, match="outside"):
        store.delete_prefix("link")
    assert_empty(tmp_path / "elsewhere")


@pytest.mark.parametrize("key,expected", [
    ("a.json", "application/json"), ("w.safetensors", "application/octet-stream"),
    ("x.unknown-suffix", "application/octet-stream"), ("debug.zip", "application/zip"),
    ("runs.tar.gz", "application/gzip"), ("mesh.glb", "model/gltf-binary"),
])
def test_content_type_guess(key, expected):
    assert storage_module.guess_content_type(key) == expected


# -- S3Storage ----------------------------------------------------------------------------------

def test_s3_storage_round_trip(s3, tmp_path):
    client, bucket = s3
    store = S3Storage(bucket, "/personalize/runs/")  # default client: from the environment
    config = store.put_bytes("job-1/config.json", b'{"rank": 16}', "application/json")
    assert config.url == f"s3://{bucket}/personalize/runs/job-1/config.json"
    assert (config.file_name, config.file_size) == ("config.json", 12)

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\1" * 2000)
    lora = store.put_file("job-1/pytorch_lora_weights.safetensors", weights)
    assert (lora.content_type, lora.file_size) == ("application/octet-stream", 2000)
    store.put_file("job-1/preview.png", weights)
    store.put_bytes("job-12/keep.txt", b"other job", "text/plain")

    def stored_type(key: str) -> str:
        return client.head_object(Bucket=bucket, Key=f"personalize/runs/{key}")["ContentType"]

    assert stored_type("job-1/config.json") == "application/json"
    assert stored_type("job-1/pytorch_lora_weights.safetensors") == "application/octet-stream"
    assert stored_type("job-1/preview.png") == "image/png"

    assert store.exists("job-1/config.json") and not store.exists("job-1/nothing.json")
    back = tmp_path / "back"
    assert store.get_file("job-1/pytorch_lora_weights.safetensors",
                          back / "w.safetensors").read_bytes() == b"\1" * 2000
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.get_file("job-1/nothing.json", back / "nothing.json")
    assert sorted(p.name for p in back.iterdir()) == ["w.safetensors"]

    assert store.delete_prefix("job-1") == 3
    assert not store.exists("job-1/config.json")
    assert store.exists("job-12/keep.txt")
    assert store.delete_prefix("job-1") == 0
    with pytest.raises(ValueError, match="storage key"):
        store.put_bytes("../escape.txt", b"x", "text/plain")
    with pytest.raises(ValueError):
        store.delete_prefix("")  # would mean "everything"


def test_s3_delete_prefix_in_batches(s3, monkeypatch):
    client, bucket = s3
    monkeypatch.setattr(storage_module, "_DELETE_BATCH", 2)  # S3's real batch is 1000
    store = S3Storage(bucket, client=client)
    for i in range(5):
        store.put_bytes(f"job-9/{i}.txt", b"x", "text/plain")
    assert store.delete_prefix("job-9/") == 5
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_open_storage_dispatch(s3_endpoint, tmp_path):
    s3_store = open_storage("s3://artifacts/personalize/")
    assert isinstance(s3_store, S3Storage)
    assert (s3_store.bucket, s3_store.prefix) == ("artifacts", "personalize")
    assert s3_store.url("job-1/a.png") == "s3://artifacts/personalize/job-1/a.png"
    assert open_storage("s3://artifacts").url("a.png") == "s3://artifacts/a.png"
    local = open_storage(str(tmp_path / "out"))
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "out").resolve()


@pytest.mark.parametrize("location", ["relative/dir", "file:///data", "http://host/x", "",
                                      "s3://", "s3:///key", "s3://user@bucket/x", "/data/../etc",
                                      "s3://bucket/a/../b"])
def test_open_storage_refuses_other_locations(location):
    with pytest.raises(ValueError):
        open_storage(location)


# -- fetch_to: data: and local -------------------------------------------------------------------

def test_fetch_data_uris(tmp_path):
    b64 = "data:application/zip;base64," + base64.b64encode(PNG).decode()
    assert fetch_to(b64, tmp_path / "a", field="images_data_url",
                    max_bytes=len(PNG)).read_bytes() == PNG
    escaped = "data:application/zip;base64," + base64.b64encode(PNG).decode().replace(
        "+", "%2B").replace("/", "%2F")
    assert fetch_to(escaped, tmp_path / "b", field="images_data_url",
                    max_bytes=len(PNG)).read_bytes() == PNG
    text = "data:application/jsonl,%7B%22file_name%22%3A%20%22a.png%22%7D%0A"
    assert fetch_to(text, tmp_path / "c", field="captions_file_url",
                    max_bytes=100).read_bytes() == b'{"file_name": "a.png"}\n'
    assert fetch_to("DATA:,hi", tmp_path / "d", field="captions_file_url",
                    max_bytes=2).read_bytes() == b"hi"  # schemes are case-insensitive


@pytest.mark.parametrize("uri,phrases", [
    ("data:application/zip;base64," + base64.b64encode(b"x" * 101).decode(),
     ("101 bytes", "limit is 100 bytes")),
    ("data:text/plain," + "x" * 101, ("101 bytes", "limit is 100 bytes")),
    ("data:application/zip;base64,not*base64!", ("not valid base64",)),
    ("data:application/zip;base64", ("no ','",)),
])
def test_fetch_data_uri_refused(tmp_path, uri, phrases):
    with pytest.raises(InvalidInput) as info:
        fetch_to(uri, tmp_path / "a", field="images_data_url", max_bytes=100)
    assert_invalid(info, "images_data_url", *phrases)
    assert_empty(tmp_path)


def test_fetch_local_file(tmp_path):
    source = tmp_path / "in" / "photos.zip"
    source.parent.mkdir()
    source.write_bytes(b"z" * 3000)
    dest = fetch_to(str(source), tmp_path / "out" / "images.archive", field="images_data_url",
                    max_bytes=3000)
    assert dest.read_bytes() == b"z" * 3000


@pytest.mark.parametrize("case,phrases", [
    ("big", ("2.9 KiB", "limit is 2 KiB")),
    ("missing", ("does not exist",)),
    ("directory", ("is a directory",)),
    ("dotdot", ("'..'",)),
    ("fifo", ("not a regular file",)),  # reading one could block forever
])
def test_fetch_local_refused(tmp_path, case, phrases):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.zip").write_bytes(b"z" * 3000)
    os.mkfifo(tmp_path / "in" / "pipe.zip")
    location = {"big": tmp_path / "in/big.zip", "missing": tmp_path / "in/none.zip",
                "directory": tmp_path / "in", "dotdot": f"{tmp_path}/in/../in/big.zip",
                "fifo": tmp_path / "in/pipe.zip"}[case]
    out = tmp_path / "out"
    with pytest.raises(InvalidInput) as info:
        fetch_to(str(location), out / "images.archive", field="images_data_url",
                 max_bytes=2048)
    assert_invalid(info, "images_data_url", *phrases)
    assert not out.exists() or not any(out.iterdir())


def test_fetch_local_refused_for_http_users(tmp_path):
    (tmp_path / "secret.txt").write_text("server file")
    out = tmp_path / "out"
    with pytest.raises(InvalidInput) as info:
        fetch_to(str(tmp_path / "secret.txt"), out / "x", field="captions_file_url",
                 max_bytes=1000, allow_local=False)
    assert_invalid(info, "captions_file_url", "local paths are not accepted")
    assert not out.exists()


@pytest.mark.parametrize("location", ["photos.zip", "ftp://host/a.zip", "file:///etc/passwd"])
def test_fetch_unknown_location(tmp_path, location):
    with pytest.raises(InvalidInput) as info:
        fetch_to(location, tmp_path / "a", field="images_data_url", max_bytes=100)
    assert_invalid(info, "images_data_url", "not a usable location")


# -- fetch_to: s3 and http ---------------------------------------------------------------------

def test_fetch_s3(s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="uploads/me.zip", Body=b"q" * 5000)
    dest = fetch_to(f"s3://{bucket}/uploads/me.zip", tmp_path / "out" / "a.zip",
                    field="images_data_url", max_bytes=5000, s3_client=client)
    assert dest.read_bytes() == b"q" * 5000
    # Without s3_client: boto3's default client, configured from the environment.
    assert fetch_to(f"S3://{bucket}/uploads/me.zip", tmp_path / "out" / "b.zip",
                    field="images_data_url", max_bytes=5000).stat().st_size == 5000


@pytest.mark.parametrize("location,phrases", [
    ("s3://{bucket}/uploads/none.zip", ("s3://{bucket}/uploads/none.zip does not exist",)),
    ("s3://{bucket}/uploads/big.zip", ("4.9 KiB", "limit is 4 KiB")),
    ("s3://{bucket}/", ("names no object",)),
    ("s3://no-such-{bucket}/a.zip", ("bucket does not exist",)),
])
def test_fetch_s3_refused(s3, tmp_path, location, phrases):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="uploads/big.zip", Body=b"q" * 5000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidInput) as info:
        fetch_to(location.format(bucket=bucket), out / "a.zip", field="images_data_url",
                 max_bytes=4096, s3_client=client)
    assert_invalid(info, "images_data_url", *(p.format(bucket=bucket) for p in phrases))
    assert_empty(out)


def test_fetch_http(web, tmp_path):
    web.files["/photos.zip"] = b"p" * 4000
    fetcher = Fetcher(allow_hosts=frozenset({web.host}))
    dest = fetch_to(web.url("/photos.zip"), tmp_path / "a.zip", field="images_data_url",
                    max_bytes=4000, fetcher=fetcher)
    assert dest.read_bytes() == b"p" * 4000


@pytest.mark.parametrize("path,phrases", [
    ("/photos.zip", ("4000 bytes", "limit is 3999")),
    ("/missing.zip", ("HTTP 404",)),
])
def test_fetch_http_refused(web, tmp_path, path, phrases):
    web.files["/photos.zip"] = b"p" * 4000
    with pytest.raises(InvalidInput) as info:
        fetch_to(web.url(path), tmp_path / "a.zip", field="images_data_url", max_bytes=3999,
                 fetcher=Fetcher(allow_hosts=frozenset({web.host})))
    assert_invalid(info, "images_data_url", *phrases)
    assert_empty(tmp_path)


def test_fetch_http_to_an_internal_host_is_refused_without_connecting(web, tmp_path):
    web.files["/photos.zip"] = b"p" * 10
    before = len(web.hits)
    with pytest.raises(InvalidInput) as info:
        fetch_to(web.url("/photos.zip"), tmp_path / "a.zip", field="images_data_url",
                 max_bytes=4000)  # the default Fetcher: no allow-listed hosts
    assert_invalid(info, "images_data_url", "non-public address")
    assert len(web.hits) == before
    assert_empty(tmp_path)


# -- fetch_text ----------------------------------------------------------------------------------

def test_fetch_text(tmp_path, web):
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"file_name": "a.png", "text": "caf\xc3\xa9"}\n')
    assert fetch_text(str(path), field="captions_file_url", max_bytes=1000) == \
        '{"file_name": "a.png", "text": "café"}\n'
    web.files["/captions.jsonl"] = b"{}\n"
    assert fetch_text(web.url("/captions.jsonl"), field="captions_file_url", max_bytes=10,
                      fetcher=Fetcher(allow_hosts=frozenset({web.host}))) == "{}\n"


def test_fetch_text_refuses_bad_utf8(tmp_path):
    uri = "data:text/plain;base64," + base64.b64encode(b'{"text": "caf\xe9"}').decode()
    with pytest.raises(InvalidInput) as info:
        fetch_text(uri, field="captions_file_url", max_bytes=1000)
    assert_invalid(info, "captions_file_url", "not valid UTF-8", "offset 13")
