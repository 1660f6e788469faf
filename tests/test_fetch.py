"""SSRF guard: internal addresses refused (classifier with stubbed DNS, end to end only
against loopback listeners this test starts), redirects re-checked, limits enforced."""

from __future__ import annotations

import http.server
import ipaddress
import threading

import pytest

from genserve.errors import InvalidInput
from genserve.fetch import Fetcher, address_allowed


@pytest.mark.parametrize("ip", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "0.0.0.0", "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "198.18.0.1",
])
def test_internal_addresses_refused(ip):
    assert not address_allowed(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_allowed(ip):
    assert address_allowed(ipaddress.ip_address(ip))


def stub(answers: dict[str, list[str]]):
    return lambda host, port: answers[host]


@pytest.mark.parametrize("host,addresses", [
    ("metadata.internal", ["169.254.169.254"]),
    ("rebind.example", ["93.184.216.34", "10.0.0.5"]),  # any internal answer poisons it
    ("v6.example", ["::1"]),
])
def test_names_resolving_inward_are_refused(host, addresses):
    fetcher = Fetcher(resolver=stub({host: addresses}))
    with pytest.raises(InvalidInput, match="non-public") as exc:
        fetcher.check(f"http://{host}/a.png", "image")
    assert exc.value.field == "image"


def test_public_name_is_pinned_to_the_checked_address():
    fetcher = Fetcher(resolver=stub({"cdn.example": ["93.184.216.34"]}))
    assert fetcher.check("https://cdn.example/a.png") == ("https://cdn.example/a.png",
                                                          "93.184.216.34")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y", "gopher://x",
                                 "http://user:pw@host/x", "http:///nohost"])
def test_bad_schemes_and_shapes(url):
    with pytest.raises(InvalidInput):
        Fetcher(resolver=stub({"host": ["93.184.216.34"], "x": ["93.184.216.34"]})).check(url)


class _Server:
    """A loopback HTTP server that counts the requests it receives."""

    def __init__(self, routes: dict[str, tuple[int, dict, bytes]]):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = []
    yield lambda routes: made.append(_Server(routes)) or made[-1]
    for s in made:
        s.close()


def test_loopback_refused_without_connecting(servers):
    server = servers({"/a.png": (200, {}, b"x")})
    with pytest.raises(InvalidInput, match="non-public"):
        Fetcher().fetch(f"http://127.0.0.1:{server.port}/a.png", "image")
    with pytest.raises(InvalidInput, match="non-public"):
        Fetcher().fetch(f"http://localhost:{server.port}/a.png", "image")
    assert server.hits == []


def test_allowlisted_host_is_fetched(servers):
    server = servers({"/a.png": (200, {"Content-Type": "image/png"}, b"pixels")})
    fetcher = Fetcher(allow_hosts=frozenset({f"127.0.0.1:{server.port}"}))
    assert fetcher.fetch(f"http://127.0.0.1:{server.port}/a.png") == (b"pixels", "image/png")
    with pytest.raises(InvalidInput, match="HTTP 404"):
        fetcher.fetch(f"http://127.0.0.1:{server.port}/missing")


def test_redirect_into_the_cluster_is_refused(servers):
    inner = servers({"/secret": (200, {}, b"ray dashboard")})
    outer = servers({"/go": (302, {"Location": f"http://localhost:{inner.port}/secret"}, b"")})
    fetcher = Fetcher(allow_hosts=frozenset({f"127.0.0.1:{outer.port}"}))
    with pytest.raises(InvalidInput, match="non-public"):
        fetcher.fetch(f"http://127.0.0.1:{outer.port}/go", "image")
    assert outer.hits == ["/go"] and inner.hits == []


def test_size_limit(servers):
    server = servers({"/big": (200, {}, b"x" * 5000)})
    fetcher = Fetcher(allow_hosts=frozenset({f"127.0.0.1:{server.port}"}), max_bytes=1000)
    with pytest.raises(InvalidInput, match="limit"):
        fetcher.fetch(f"http://127.0.0.1:{server.port}/big")
