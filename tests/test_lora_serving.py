"""LoRAs over HTTP: a trained LoRA's directory appears under the app's `lora_dir` and the very
next `POST /generate` with its `lora_id` serves it (Serve multiplexing, LRU eviction, no
leakage between requests, errors naming the field)."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
from ray import serve

from tests.conftest import MAX_LORAS
from tests.loras import write_lora
from tests.util import image_bytes, tiny_request

PROMPT = "a photo of TOK with a hat"


def request(**overrides) -> dict:
    return tiny_request(**{"prompt": PROMPT, "num_inference_steps": 2, "seed": 5,
                           "safety_filter": False, **overrides})


def generate(client, **overrides) -> bytes:
    r = client.post("/generate", json=request(**overrides))
    assert r.status_code == 200, r.text
    return image_bytes(r.json())[0]


@pytest.fixture(scope="module")
def loras(lora_dir, tiny_models) -> list[str]:
    """Written as the training job would, while the app is already running."""
    base = tiny_models["sdxl-base"]
    write_lora(lora_dir, "srv-a", base, seed=11, text_encoders=True, embeddings=True)
    write_lora(lora_dir, "srv-a-no-tokens", base, seed=11, text_encoders=True)
    write_lora(lora_dir, "srv-b", base, seed=12, embeddings=True)
    for kind in ("dora", "lokr", "loha"):
        write_lora(lora_dir, f"srv-{kind}", base, kind=kind, seed=13)
    for i in range(MAX_LORAS + 2):
        write_lora(lora_dir, f"srv-evict-{i}", base, seed=20 + i)
    return sorted(p.name for p in lora_dir.iterdir())


@pytest.fixture(scope="module")
def plain(client) -> bytes:
    return generate(client)


def loaded(deployment: str) -> list[str]:
    handle = serve.get_deployment_handle(deployment, app_name="genserve")
    return handle.loaded_loras.remote().result(timeout_s=60)


def test_lora_applies_to_its_request_only(client, loras, plain):
    a = generate(client, lora_id="srv-a")
    assert a != plain
    assert generate(client) == plain  # loaded, but not applied to a request without it
    assert generate(client, lora_id="srv-a") == a
    b = generate(client, lora_id="srv-b")
    assert b not in (a, plain)
    assert generate(client) == plain


def test_scale(client, loras, plain):
    full = generate(client, lora_id="srv-b")
    half = generate(client, lora_id="srv-b", lora_scale=0.5)
    assert half not in (plain, full)
    # Scale 0 turns the adapter weights off exactly; the learned tokens still mean the
    # subject (the scale is the weights' strength, as in diffusers' set_adapters).
    no_tok = "a cat with a hat"
    assert generate(client, lora_id="srv-b", lora_scale=0, prompt=no_tok) == generate(
        client, prompt=no_tok)
    assert generate(client, lora_id="srv-b", lora_scale=0) != plain


@pytest.mark.parametrize("kind", ["dora", "lokr", "loha"])
def test_every_adapter_kind_is_served(client, loras, plain, kind):
    out = generate(client, lora_id=f"srv-{kind}")
    assert out != plain
    assert generate(client, lora_id=f"srv-{kind}") == out


def test_public_lora_by_name(client, plain):
    out = generate(client, lora_name="offset")
    assert out != plain
    assert generate(client, lora_name="offset") == out
    assert generate(client) == plain


def test_token_abstraction_is_rewritten_only_when_embeddings_exist(client, loras):
    # srv-a and srv-a-no-tokens share adapter weights; only srv-a has learned TOK rows.
    for prompt, same in [(PROMPT, False), ("a photo of <s0><s1> with a hat", False),
                         ("a photo of a cat with a hat", True)]:
        a = generate(client, lora_id="srv-a", prompt=prompt)
        b = generate(client, lora_id="srv-a-no-tokens", prompt=prompt)
        assert (a == b) == same, prompt
    # The negative prompt is rewritten too.
    a = generate(client, lora_id="srv-a", prompt="a cat", negative_prompt="TOK")
    b = generate(client, lora_id="srv-a-no-tokens", prompt="a cat", negative_prompt="TOK")
    assert a != b


@pytest.mark.parametrize("extra", [{"is_ensemble": True, "num_inference_steps": 5},
                                   {"refiner": True, "num_inference_steps_refiner": 4,
                                    "refiner_strength": 0.5}])
def test_refiner_modes_take_the_lora(client, loras, extra):
    out = generate(client, lora_id="srv-a", **extra)
    assert out != generate(client, **extra)
    assert generate(client, lora_id="srv-a", **extra) == out
    assert "id:srv-a" in loaded("SDXLRefiner")  # its tokens are loaded there too


def test_concurrent_requests_never_see_each_others_lora(client, loras):
    sequential = {lid: generate(client, lora_id=lid) if lid else generate(client)
                  for lid in ("srv-a", "srv-b", None)}
    order = ["srv-a", "srv-b", None, "srv-b", "srv-a", "srv-a", None, "srv-b"]
    with ThreadPoolExecutor(len(order)) as pool:
        results = list(pool.map(
            lambda lid: generate(client, lora_id=lid) if lid else generate(client), order))
    assert results == [sequential[lid] for lid in order]


def test_eviction_keeps_the_loaded_set_bounded_and_outputs_right(client, loras):
    ids = [f"srv-evict-{i}" for i in range(MAX_LORAS + 2)]
    first = {lid: generate(client, lora_id=lid) for lid in ids}
    assert len(set(first.values())) == len(ids)
    held = loaded("SDXLBase")
    assert len(held) <= MAX_LORAS and f"id:{ids[-1]}" in held
    # The evicted ones load again and give the same pixels, also when requested concurrently
    # (a LoRA evicted while a request holds it is unloaded only after that request).
    with ThreadPoolExecutor(len(ids)) as pool:
        again = list(pool.map(lambda lid: generate(client, lora_id=lid), ids))
    assert again == [first[lid] for lid in ids]
    assert len(loaded("SDXLBase")) <= MAX_LORAS


def test_serve_knows_which_replica_holds_a_lora(client, loras):
    """Routing: the replica reports its multiplexed ids to the controller (Serve's own test
    hook reads them back)."""
    import time

    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    generate(client, lora_id="srv-b")
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    deadline = time.monotonic() + 10
    while True:
        replicas = ray.get(controller._dump_replica_states_for_testing.remote(
            DeploymentID(name="SDXLBase", app_name="genserve"))).get()
        ids = {m for r in replicas for m in r.multiplexed_model_ids}
        if "id:srv-b" in ids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "id:srv-b" in ids and ids <= set(loaded("SDXLBase"))


def test_a_lora_written_after_startup_is_served_next_request(client, lora_dir, tiny_models,
                                                             plain):
    r = client.post("/generate", json=request(lora_id="srv-late"))
    assert r.status_code == 404
    write_lora(lora_dir, "srv-late", tiny_models["sdxl-base"], seed=30)
    assert generate(client, lora_id="srv-late") != plain


@pytest.mark.parametrize("field,value", [("lora_id", "no-such-lora"),
                                         ("lora_name", "no-such-public-lora")])
@pytest.mark.parametrize("extra", [{}, {"is_ensemble": True, "num_inference_steps": 5}])
def test_unknown_lora_is_404_naming_the_field(client, field, value, extra):
    r = client.post("/generate", json=request(**{field: value}, **extra))
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["field"] == field and field in body["detail"] and value in body["detail"]


@pytest.mark.parametrize("value", ["../x", "a/b", "", "x" * 200, ".hidden", "a b", "ok\n"])
@pytest.mark.parametrize("field", ["lora_id", "lora_name"])
def test_malformed_names_are_422(client, field, value):
    r = client.post("/generate", json=request(**{field: value}))
    assert r.status_code == 422, r.text
    assert [d["loc"][-1] for d in r.json()["detail"]] == [field]


def test_pickle_files_are_never_read(client, lora_dir, tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling it would create the marker file
        def __reduce__(self):
            return (marker.touch, ())

    (lora_dir / "srv-pickle").mkdir()
    (lora_dir / "srv-pickle" / "pytorch_lora_weights.bin").write_bytes(pickle.dumps(Payload()))
    r = client.post("/generate", json=request(lora_id="srv-pickle"))
    assert r.status_code == 404 and "safetensors" in r.json()["detail"]
    assert not marker.exists()


def test_a_lora_that_does_not_fit_is_422(client, lora_dir):
    (lora_dir / "srv-broken").mkdir()
    (lora_dir / "srv-broken" / "pytorch_lora_weights.safetensors").write_bytes(b"\x00" * 64)
    r = client.post("/generate", json=request(lora_id="srv-broken"))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "lora_id" and "srv-broken" in r.json()["detail"]
