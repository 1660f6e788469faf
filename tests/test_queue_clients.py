"""Clients our users already have, unchanged, against the live server over TLS: the official
`fal-client` (queue protocol) and `tritonclient.http` (Open Inference Protocol v2)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import API_KEY

ROOT = Path(__file__).resolve().parent.parent


def test_fal_client_subscribe_submit_status_result_cancel_run(app_url, tls_cert, anon):
    hostport = app_url.removeprefix("https://")
    env = {**os.environ, "FAL_KEY": API_KEY, "FAL_RUN_HOST": f"{hostport}/run",
           "FAL_QUEUE_RUN_HOST": f"{hostport}/queue", "SSL_CERT_FILE": str(tls_cert)}
    done = subprocess.run([sys.executable, str(ROOT / "tests/scripts/fal_client_calls.py")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    image = out["subscribe"]["images"][0]
    png = anon.get(image["url"])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
    kinds = [u[0] for u in out["updates"]]
    assert kinds[-1] == "Completed" and "InProgress" in kinds or kinds == ["Completed"]
    assert out["first_status"] in ("Queued", "InProgress", "Completed")
    assert out["result"]["images"][0]["width"] == 64
    final = out["final"]
    assert final["type"] == "Completed" and final["error"] is None
    assert final["metrics"]["inference_time"] > 0
    assert any(log["message"].startswith("base: step") for log in final["logs"])
    assert out["cancelled"]["error"] == "request was cancelled"
    assert out["cancelled"]["result"][0] == 400
    assert out["run"]["images"][0]["url"].startswith(app_url)
    assert out["invalid"][0] == 422


@pytest.fixture(scope="module")
def triton(app_url, tls_cert):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        app_url.removeprefix("https://"), ssl=True, ssl_options={"ca_certs": str(tls_cert)},
        network_timeout=120)


def _headers() -> dict:
    return {"Authorization": f"Key {API_KEY}"}


def test_tritonclient_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("sdxl", headers=_headers())
    meta = triton.get_model_metadata("sdxl", headers=_headers())
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["prompt"]["datatype"] == "BYTES" and inputs["prompt"]["shape"] == [1]
    assert inputs["num_inference_steps"]["datatype"] == "INT64"
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["images"]["shape"] == [-1]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_sdxl(triton, anon, binary):
    import tritonclient.http as httpclient

    def tensor(name, value, datatype):
        t = httpclient.InferInput(name, [1], datatype)
        t.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else
                                       {"INT64": np.int64, "FP32": np.float32}[datatype]),
                              binary_data=binary)
        return t

    inputs = [tensor("prompt", "a cat with a hat".encode(), "BYTES"),
              tensor("height", 64, "INT64"), tensor("width", 64, "INT64"),
              tensor("num_inference_steps", 3, "INT64"), tensor("seed", 7, "INT64"),
              tensor("guidance_scale", 5.0, "FP32")]
    outputs = [httpclient.InferRequestedOutput("images", binary_data=binary),
               httpclient.InferRequestedOutput("seed", binary_data=binary)]
    result = triton.infer("sdxl", inputs, outputs=outputs, headers=_headers())
    urls = result.as_numpy("images")
    assert urls.shape == (1,) and int(result.as_numpy("seed")[0]) == 7
    url = urls[0].decode() if isinstance(urls[0], bytes) else urls[0]
    assert url.startswith("data:image/png;base64,")


def test_tritonclient_errors_name_the_tensor(triton):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    t = httpclient.InferInput("num_inference_steps", [1], "INT64")
    t.set_data_from_numpy(np.array([1000], dtype=np.int64))
    p = httpclient.InferInput("prompt", [1], "BYTES")
    p.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="num_inference_steps"):
        triton.infer("sdxl", [p, t], headers=_headers())
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.get_model_metadata("nope", headers=_headers())
