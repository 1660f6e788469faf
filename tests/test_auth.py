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
