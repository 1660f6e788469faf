"""Exception → status mapping (genserve/http/errors.py) for the ways Ray reports a lost replica:
each must reach the client as a retryable 503 with Retry-After, never a 500."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from genserve.http import errors


def _wrapped_upstream_death() -> Exception:
    # What Serve's router raises when a DeploymentResponse argument's producer died.
    exc = RayServeException("Request to deployment 'SafetyChecker' failed because an "
                            "upstream actor died before finishing a dependent task.")
    exc.__cause__ = ActorDiedError()
    return exc


CASES = {
    "died": (lambda: ActorDiedError(), 503),
    "unavailable": (lambda: ActorUnavailableError("node lost", b"\0" * 16), 503),
    "upstream": (_wrapped_upstream_death, 503),
    "backpressure": (lambda: BackPressureError(num_queued_requests=5,
                                               max_queued_requests=4), 503),
    "failed_deploy": (lambda: DeploymentUnavailableError(
        DeploymentID(name="SDXLBase", app_name="genserve")), 503),
    "serve_other": (lambda: RayServeException("something else"), 500),
    "bug": (lambda: KeyError("x"), 500),
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.get("/raise/{case}")
    async def boom(case: str):
        raise CASES[case][0]()

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_for(client: TestClient, case: str):
    r = client.get(f"/raise/{case}")
    assert r.status_code == CASES[case][1], r.text
    if r.status_code == 503:
        assert r.headers["retry-after"] == errors.RETRY_AFTER_S
        assert "retry" in r.json()["detail"].lower()
    else:
        assert "internal error" in r.json()["detail"]
