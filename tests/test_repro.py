"""Reproducibility records: built once per model load (weights' origin, config hash), attached
per request (scheduler, seed, parameters, versions), and good enough to regenerate the same
image bytes from the record alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genserve import repro
from tests.util import b64_png, image_bytes, tiny_request

# -- the pieces (no Ray) ----------------------------------------------------------------------


def test_local_directory_source_hashes_its_configs(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "X"}')
    (tmp_path / "unet" / "config.json").write_text('{"in_channels": 4}')
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"not hashed")
    first = repro.model_source("base", str(tmp_path))
    assert first["path"] == str(tmp_path.resolve()) and first["revision"] is None
    assert len(first["config_sha256"]) == 64
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"still not hashed")
    assert repro.model_source("base", str(tmp_path)) == first
    (tmp_path / "unet" / "config.json").write_text('{"in_channels": 8}')
    assert repro.model_source("base", str(tmp_path))["config_sha256"] != first["config_sha256"]


def test_hub_source_names_the_snapshot_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    source = repro.model_source("llm", "org/tiny")
    assert source["revision"] == commit and source["config_sha256"]
    # Not in the cache: the configured id and revision, nothing invented.
    assert repro.model_source("llm", "org/absent", "v1") == {
        "role": "llm", "id": "org/absent", "revision": "v1", "path": None,
        "config_sha256": None}


def test_versions_and_large_fields():
    versions = repro.library_versions()
    assert set(versions) == set(repro.LIBRARIES) and versions["torch"] and versions["ray"]
    from genserve.schemas.sdxl import GenerateRequest

    image = b64_png(np.zeros((64, 64, 3), dtype=np.uint8))
    body = GenerateRequest(**tiny_request(seed_image=image, strength=0.5))
    params = repro.request_parameters(body, 7, large=("seed_image",))
    assert params["seed"] == 7 and "seed_image" not in params
    assert len(params["seed_image_sha256"]) == 64
    plain = GenerateRequest(**tiny_request())
    again = GenerateRequest(**repro.request_parameters(plain, 7))  # sendable as it is
    assert again.model_dump() == {**plain.model_dump(), "seed": 7}
    resolved = repro.request_parameters(plain, 7, defaults=True)
    assert resolved["scheduler"] == "DDIM" and resolved["refiner_ratio"] == 0.2


def test_pipeline_attaches_provenance_once_loaded(tiny_models):
    from genserve.pipelines.params import BaseParams
    from genserve.pipelines.sdxl_base import SDXLBasePipeline

    pipe = SDXLBasePipeline(str(tiny_models["sdxl-base"]))
    batch = pipe.generate(BaseParams("a cat", height=64, width=64, steps=2, seed=3,
                                     scheduler="K_EULER"))
    prov = batch.provenance
    assert [m["role"] for m in prov["models"]] == ["base"]
    assert prov["models"][0]["config_sha256"] and prov["device"] == "cpu"
    assert prov["scheduler"]["class_name"] == "EulerDiscreteScheduler"
    assert prov["scheduler"]["config"]["timestep_spacing"] == "linspace"
    json.dumps(prov)  # crosses processes and ends up in JSON responses
    # Per request only a cached record is looked up.
    assert pipe.scheduler_record("K_EULER", "linspace") is prov["scheduler"]


# -- through the app --------------------------------------------------------------------------


def test_generate_carries_a_record_that_regenerates_the_same_image(client):
    first = client.post("/generate", json=tiny_request(num_inference_steps=3))  # no seed
    assert first.status_code == 200, first.text
    body = first.json()
    record = body["reproducibility"]
    assert record["pipeline"] == "sdxl" and record["seed"] == body["seed"]
    assert record["parameters"]["seed"] == body["seed"]
    assert record["parameters"]["num_inference_steps"] == 3
    assert record["resolved_parameters"]["guidance_scale"] == 4.0  # defaults too
    assert [m["role"] for m in record["models"]] == ["base", "safety"]
    assert all(m["config_sha256"] for m in record["models"])
    assert record["scheduler"]["name"] == "DDIM"
    assert record["scheduler"]["class_name"] == "DDIMScheduler"
    assert set(record["versions"]) == set(repro.LIBRARIES)
    again = client.post("/generate", json=record["parameters"])
    assert again.status_code == 200, again.text
    assert image_bytes(again.json()) == image_bytes(body)
    assert again.json()["reproducibility"]["parameters"] == record["parameters"]


@pytest.mark.parametrize("mode", [{"is_ensemble": True, "refiner_ratio": 0.5},
                                  {"refiner": True}])
def test_refiner_modes_record_the_refiner(client, mode):
    r = client.post("/generate", json=tiny_request(num_inference_steps=4, seed=9, **mode))
    assert r.status_code == 200, r.text
    roles = [m["role"] for m in r.json()["reproducibility"]["models"]]
    assert roles == ["base", "refiner", "safety"]


def test_queue_result_carries_the_record(client):
    r = client.post("/run/genserve/sdxl", json=tiny_request(num_inference_steps=2, seed=21))
    assert r.status_code == 200, r.text
    record = r.json()["reproducibility"]
    assert record["seed"] == 21 and record["parameters"]["seed"] == 21
    assert record["models"][0]["role"] == "base"
