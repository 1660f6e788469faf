"""API keys on everything but health and docs."""

from __future__ import annotations

import pytest

from genserve.http.auth import ApiKeys
from tests.conftest import API_KEY
from tests.util import tiny_request


def test_no_key_is_401(anon):
    r = anon.post("/generate", json=tiny_request())
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Key"
    assert r.headers["x-request-id"]  # refusals are traceable too
    assert "Authorization: Key" in r.json()["detail"]


@pytest.mark.parametrize("header", ["Key wrong", f"Basic {API_KEY}", "Key", f"Key {API_KEY}x",
                                    f"Bearer {API_KEY[:-1]}"])
def test_wrong_key_is_401(anon, header):
    assert anon.post("/generate", json=tiny_request(),
                     headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize("scheme", ["Key", "Bearer", "key", "bearer"])
def test_both_schemes_accepted(anon, scheme):
    r = anon.post("/generate", json=tiny_request(num_inference_steps=1),
                  headers={"Authorization": f"{scheme} {API_KEY}"})
    assert r.status_code == 200, r.text


def test_auth_checked_before_validation(anon):
    # An unauthenticated caller learns nothing about the schema.
    assert anon.post("/generate", json={"width": 3}).status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/docs", "/openapi.json"])
def test_public_paths(anon, path):
    assert anon.get(path).status_code == 200


def test_keys_from_env_and_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("from-file\n\n")
    keys = ApiKeys.from_env({"GENSERVE_API_KEY": "a, b", "GENSERVE_API_KEY_FILE": str(key_file)})
    assert all(keys.check(f"Key {k}") for k in ("a", "b", "from-file"))
    assert not keys.check("Key c") and not keys.check(None) and not keys.check("")


def test_no_key_configured_refuses_everything():
    keys = ApiKeys.from_env({})
    assert not keys.configured and not keys.check("Key anything")
    assert ApiKeys.from_env({"GENSERVE_AUTH": "disabled"}).check(None)


def test_cors_is_closed_by_default(anon):
    """No CORS middleware: a browser on another origin gets no Access-Control-Allow-Origin,
    so it cannot read our answers (or send the key cross-site)."""
    evil = {"Origin": "https://evil.example"}
    pre = anon.options("/generate", headers={**evil, "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in pre.headers
    assert pre.status_code < 500
    assert "access-control-allow-origin" not in anon.get("/healthz", headers=evil).headers


def test_file_paths_with_traversal_never_resolve(anon):
    for path in ("/files/..%2F..%2Fetc%2Fpasswd", "/files/%2E%2E/%2E%2E/etc/passwd",
                 "/files/a/../../b", "/files/%00", "/files/" + "a" * 2000):
        r = anon.get(path, params={"expires": "9999999999", "signature": "0" * 64})
        # (A client may normalize `a/../../b` to `/b`: then it is not a file route, 401.)
        assert r.status_code in (400, 401, 403, 404), (path, r.status_code, r.text[:200])
