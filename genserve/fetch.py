"""Fetching user-supplied URLs without becoming a proxy into the cluster (SSRF).

A URL from a user could point at Ray's dashboard/jobs API (remote code execution), a cloud
metadata service or any internal host. So, for every hop (redirects included):
resolve the name, refuse unless *every* address is public, then connect to the address we
checked (the name is not resolved again, so DNS rebinding cannot swap it), sending the
original Host header and TLS server name. Size and time are bounded while streaming.

The same checks guard outgoing POSTs (webhook deliveries, ``Fetcher.post``), which never follow
redirects: a 3xx is reported to the caller as the answer.

Operators can allow specific internal hosts (an artifact store) with ``allow_hosts``.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from genserve.errors import InvalidInput

MAX_BYTES = 20 * 1024 * 1024
TIMEOUT_S = 20.0
MAX_REDIRECTS = 3
# A POST's answer is only kept for logs and error messages; a receiver cannot make us buffer more.
RESPONSE_PREFIX_BYTES = 1024

# Ranges the stdlib's `is_global` misses or that deserve saying out loud.
_EXTRA_BLOCKED = [ipaddress.ip_network(n) for n in (
    "100.64.0.0/10",   # carrier-grade NAT: internal in most clouds
    "198.18.0.0/15",   # benchmarking
    "64:ff9b::/96",    # NAT64: maps onto IPv4, possibly internal
)]


class Unreachable(Exception):
    """The target could not be reached or did not answer in time (network error, timeout):
    worth retrying later, unlike a refused URL (``InvalidInput``)."""


class Unresolvable(InvalidInput, Unreachable):
    """The host name did not resolve. Still ``InvalidInput`` for fetches (422 as before), and
    ``Unreachable`` for deliveries, since DNS failures are often transient."""


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Public unicast only: no loopback, private, link-local (incl. 169.254.169.254
    metadata), multicast, reserved or unspecified addresses; IPv4-mapped IPv6 judged as
    the IPv4 it carries."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        return False
    return not any(ip in net for net in _EXTRA_BLOCKED)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unresolvable(f"cannot resolve host {host!r} ({exc.strerror})") from None
    return sorted({info[4][0] for info in infos})


@dataclass
class Fetcher:
    """``fetch(url)`` → bytes and ``post(url, body, headers)`` → (status, answer prefix),
    refusing internal targets. ``field_name`` names the request field the URL came from, for
    the 4xx message."""

    allow_hosts: frozenset[str] = field(default_factory=frozenset)  # "host" or "host:port"
    max_bytes: int = MAX_BYTES
    timeout_s: float = TIMEOUT_S
    resolver: object = resolve  # replaceable in tests to simulate DNS answers

    def check(self, url: str, field_name: str = "url") -> tuple[str, str]:
        """Validate ``url``; return (url, the IP to connect to)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidInput(f"`{field_name}`: only http(s) URLs can be fetched, got "
                               f"{parts.scheme or 'no'} scheme", field=field_name)
        if not parts.hostname or parts.username or parts.password:
            raise InvalidInput(f"`{field_name}`: URL needs a host and no credentials",
                               field=field_name)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname
        addresses = self.resolver(host, port)
        allowed = host in self.allow_hosts or f"{host}:{port}" in self.allow_hosts
        if not allowed:
            bad = [a for a in addresses if not address_allowed(ipaddress.ip_address(a))]
            if bad or not addresses:
                raise InvalidInput(f"`{field_name}`: {host} resolves to a non-public address "
                                   f"({', '.join(bad) or 'none'}); refusing to connect to it",
                                   field=field_name)
        return url, addresses[0]

    def fetch(self, url: str, field_name: str = "url") -> tuple[bytes, str | None]:
        """(body, content type). Redirects are followed by hand, each hop checked again."""
        import httpx

        deadline = time.monotonic() + self.timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InvalidInput(f"`{field_name}`: download took longer than "
                                   f"{self.timeout_s:.0f}s", field=field_name)
            try:
                with self._pinned("GET", url, field_name, remaining) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(f"`{field_name}`: fetching it answered HTTP "
                                           f"{response.status_code}", field=field_name)
                    return self._read(response, deadline, field_name), \
                        response.headers.get("content-type")
            except httpx.HTTPError as exc:
                raise InvalidInput(f"`{field_name}`: could not download it "
                                   f"({type(exc).__name__})", field=field_name) from None
        raise InvalidInput(f"`{field_name}`: more than {MAX_REDIRECTS} redirects",
                           field=field_name)

    def post(self, url: str, body: bytes, headers: Mapping[str, str],
             field_name: str = "webhook", timeout_s: float | None = None) -> tuple[int, str]:
        """POST ``body`` once; return (HTTP status, the first ``RESPONSE_PREFIX_BYTES`` of the
        answer as text). Redirects are *not* followed (the caller sees the 3xx): the
        ``Location`` could point anywhere, the request would be replayed with its body, and a
        receiver has no reason to redirect a webhook.

        Raises ``InvalidInput`` when the URL is refused (scheme, credentials, non-public
        address) and ``Unreachable`` on DNS, connection or timeout failures. Each phase
        (connect, send, wait for the answer) is bounded by ``timeout_s`` (default: the
        fetcher's), and reading the answer stops at that deadline.

        >>> Fetcher().post("https://hooks.example.com/fal", b'{"ok":true}',
        ...                {"content-type": "application/json"})   # doctest: +SKIP
        (200, 'received')
        """
        import httpx

        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        host = urlsplit(url).hostname
        # identity: the answer is only logged, and a compressed one could expand without bound.
        if not any(k.lower() == "accept-encoding" for k in headers):
            headers = {**headers, "Accept-Encoding": "identity"}
        try:
            with self._pinned("POST", url, field_name, timeout, content=body,
                              headers=headers) as response:
                return response.status_code, _prefix(response, deadline)
        except httpx.HTTPError as exc:
            # Name the host only: webhook URLs often carry a token in their path or query.
            raise Unreachable(f"`{field_name}`: could not reach {host} "
                              f"({type(exc).__name__})") from None

    @contextmanager
    def _pinned(self, method: str, url: str, field_name: str, timeout: float, *,
                content: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Iterator:
        """One request to the IP that ``check`` approved, with the URL's Host header and TLS
        server name, redirects not followed; yields the streaming httpx response."""
        import httpx

        url, ip = self.check(url, field_name)
        parts = urlsplit(url)
        send = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
        send["Host"] = parts.netloc.rsplit("@", 1)[-1]
        target = parts._replace(netloc=_netloc(ip, parts.port)).geturl()
        # trust_env=False: a proxy from the environment would reach the pinned IP for us,
        # bypassing the checks above.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(method, target, content=content, headers=send,
                                           extensions={"sni_hostname": parts.hostname})
            response = client.send(request, stream=True)
            try:
                yield response
            finally:
                response.close()

    def _read(self, response, deadline: float, field_name: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise InvalidInput(f"`{field_name}`: file is {declared} bytes; the limit is "
                               f"{self.max_bytes}", field=field_name)
        chunks, size = [], 0
        for chunk in response.iter_bytes(65536):
            size += len(chunk)
            if size > self.max_bytes:
                raise InvalidInput(f"`{field_name}`: file is larger than the limit of "
                                   f"{self.max_bytes} bytes", field=field_name)
            if time.monotonic() > deadline:
                raise InvalidInput(f"`{field_name}`: download took longer than "
                                   f"{self.timeout_s:.0f}s", field=field_name)
            chunks.append(chunk)
        return b"".join(chunks)


def _prefix(response, deadline: float) -> str:
    """The start of an answer we only log: stop at the cap or the deadline, whichever first."""
    data = b""
    for chunk in response.iter_raw(RESPONSE_PREFIX_BYTES):
        data += chunk
        if len(data) >= RESPONSE_PREFIX_BYTES or time.monotonic() > deadline:
            break
    return data[:RESPONSE_PREFIX_BYTES].decode("utf-8", errors="replace")


def _netloc(ip: str, port: int | None) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port else host
