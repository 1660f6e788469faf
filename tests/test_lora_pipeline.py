"""`genserve.pipelines.lora` without Ray: loading every adapter kind into the tiny SDXL base,
token renaming, unloading back to the exact original model, and the file contract with
diffusers' own loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genserve.errors import InvalidInput, NotFound
from genserve.pipelines.lora import LoraStore
from genserve.pipelines.params import BaseParams, adapter_key
from tests.loras import KINDS, write_lora

PROMPT = "a photo of TOK with a hat"


def params(prompt: str = PROMPT, **kw) -> BaseParams:
    return BaseParams(prompt, **{"height": 64, "width": 64, "steps": 2, "seed": 0, **kw})


@pytest.fixture(scope="module")
def base_dir(tiny_models):
    return tiny_models["sdxl-base"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, base_dir) -> LoraStore:
    root = tmp_path_factory.mktemp("loras")
    write_lora(root, "full", base_dir, seed=1, text_encoders=True, embeddings=True)
    write_lora(root, "plain", base_dir, seed=2)
    # Same adapter weights (same seed), with and without learned tokens.
    write_lora(root, "with-tokens", base_dir, seed=3, embeddings=True)
    write_lora(root, "without-tokens", base_dir, seed=3)
    for kind in KINDS:
        write_lora(root, f"kind-{kind}", base_dir, kind=kind, seed=4)
    return LoraStore(root, None)


@pytest.fixture(scope="module")
def base(base_dir):
    from genserve.pipelines.sdxl_base import SDXLBasePipeline

    return SDXLBasePipeline(str(base_dir), device="cpu")


def image(base, lora=None, **kw) -> np.ndarray:
    return base.generate(params(**kw), lora=lora).images[0]


def tuner_layers(base) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for c in ("unet", "text_encoder", "text_encoder_2")
               for m in base._components[c].modules())


def vocab(base) -> tuple:
    c = base._components
    return (len(c["tokenizer"]), len(c["tokenizer_2"]),
            c["text_encoder"].get_input_embeddings().weight.clone(),
            c["text_encoder_2"].get_input_embeddings().weight.clone())


def load(base, store, lora_id):
    return base.loras.load(store.resolve_key(adapter_key(lora_id=lora_id)))


def release(base, lora) -> None:
    """What Ray Serve's multiplexer does on eviction; the next run unloads it."""
    lora.__del__()
    base.generate(params(steps=1))


def test_every_kind_changes_the_image_and_unloading_restores_the_model(base, store):
    plain = image(base)
    before = vocab(base)
    seen = []
    for kind in KINDS:
        lora = load(base, store, f"kind-{kind}")
        out = image(base, lora)
        assert not np.array_equal(out, plain), kind
        assert np.array_equal(image(base, lora), out), kind  # deterministic
        assert np.array_equal(image(base), plain), kind  # adapters off without a LoRA
        seen.append(out)
        release(base, lora)
        assert base.loras.loaded() == [] and tuner_layers(base) == 0, kind
    assert len({o.tobytes() for o in seen}) == len(KINDS)
    after = vocab(base)
    assert before[:2] == after[:2] and all(torch.equal(a, b) for a, b in zip(before[2:], after[2:]))
    assert np.array_equal(image(base), plain)


def test_alternating_kinds_never_nest_adapter_wrappers(base, store):
    from peft.tuners.tuners_utils import BaseTunerLayer

    loras = [load(base, store, f"kind-{k}") for k in KINDS]  # four kinds, all loaded at once
    q = base._components["unet"].down_blocks[1].attentions[0].transformer_blocks[0].attn1
    depth, layer = 0, q.to_q
    while isinstance(layer, BaseTunerLayer):
        depth, layer = depth + 1, layer.base_layer
    assert depth == 3  # LoRA and DoRA share one wrapper type; LoKr and LoHa add one each
    for lora in loras:
        release(base, lora)
    assert tuner_layers(base) == 0
    assert isinstance(q.to_q, torch.nn.Linear) and not isinstance(q.to_q, BaseTunerLayer)


def test_tokens_get_unique_names_and_prompts_are_rewritten(base, store):
    n_tok = len(base._components["tokenizer"])
    first, second = load(base, store, "full"), load(base, store, "full")
    names = [first.rewrite("<s0>"), first.rewrite("<s1>"), second.rewrite("<s0>")]
    assert len(set(names)) == 3 and all(n.startswith("<lora_") for n in names)
    assert first.rewrite("TOK, TOKEN and <s1>") == f"{names[0]}{names[1]}, TOKEN and {names[1]}"
    assert first.rewrite(None) is None
    for key in ("tokenizer", "tokenizer_2"):
        assert len(base._components[key]) == n_tok + 4
        ids = base._components[key](names[0]).input_ids
        assert len(ids) == 3 and ids[1] >= n_tok  # BOS, the new token, EOS
    release(base, first)
    assert len(base._components["tokenizer"]) == n_tok + 2
    release(base, second)
    assert len(base._components["tokenizer"]) == n_tok


def test_tokens_change_only_prompts_that_use_them(base, store):
    with_tokens, without = load(base, store, "with-tokens"), load(base, store, "without-tokens")
    for prompt, same in [(PROMPT, False), ("a photo of <s0> with a hat", False),
                         ("a cat with a hat", True)]:
        a, b = image(base, with_tokens, prompt=prompt), image(base, without, prompt=prompt)
        assert np.array_equal(a, b) == same, prompt
    release(base, with_tokens)
    release(base, without)


def test_tokens_mean_the_same_whatever_else_is_loaded(base, store):
    alone = load(base, store, "with-tokens")
    expected = image(base, alone)
    other = load(base, store, "full")
    release(base, alone)  # the other LoRA's rows move down to fill the gap
    again = load(base, store, "with-tokens")
    assert np.array_equal(image(base, again), expected)
    release(base, other)
    release(base, again)


def test_scale_zero_is_exactly_no_lora_and_scale_changes_the_image(base, store):
    lora = load(base, store, "kind-dora")
    plain, full = image(base), image(base, lora)
    assert np.array_equal(image(base, lora, lora_scale=0.0), plain)
    half = image(base, lora, lora_scale=0.5)
    assert not np.array_equal(half, plain) and not np.array_equal(half, full)
    release(base, lora)


def test_a_pinned_lora_outlives_its_eviction(base, store):
    lora = load(base, store, "plain")
    expected = image(base, lora)
    with lora.in_use():
        lora.__del__()  # evicted while a request holds it
        assert base.loras.loaded() == []
        assert np.array_equal(image(base, lora), expected)
    base.generate(params(steps=1))
    assert tuner_layers(base) == 0


def test_store_refuses_bad_and_unknown_names(tmp_path):
    (tmp_path / "bin-only").mkdir()
    (tmp_path / "bin-only" / "pytorch_lora_weights.bin").write_bytes(b"not read")
    store = LoraStore(tmp_path, None)
    for key, error, field in [("id:../x", InvalidInput, "lora_id"),
                              ("id:a/b", InvalidInput, "lora_id"),
                              ("id:", InvalidInput, "lora_id"),
                              ("id:missing", NotFound, "lora_id"),
                              ("id:bin-only", NotFound, "lora_id"),
                              ("public:offset", NotFound, "lora_name"),
                              ("other:x", InvalidInput, "lora_id")]:
        with pytest.raises(error) as exc:
            store.resolve_key(key)
        assert exc.value.field == field, key


def test_a_lora_for_another_model_is_refused_and_leaves_nothing(base, tmp_path):
    from peft import LoraConfig

    from genserve import lora_format as LF

    (tmp_path / "alien").mkdir()
    LF.save_lora_weights(tmp_path / "alien" / LF.WEIGHTS_NAME, LF.LoraWeights(
        states={"unet": {"no_such_block.to_q.lora_A.weight": torch.ones(4, 8),
                         "no_such_block.to_q.lora_B.weight": torch.ones(8, 4)}},
        configs={"unet": LoraConfig(r=4, target_modules=["no_such_block.to_q"])}))
    with pytest.raises(InvalidInput) as exc:
        base.loras.load(LoraStore(tmp_path, None).resolve_key("id:alien"))
    assert exc.value.field == "lora_id" and "alien" in exc.value.message
    assert tuner_layers(base) == 0 and base.loras.loaded() == []


def test_public_kohya_lora_loads_through_diffusers(base, tiny_models):
    store = LoraStore(None, tiny_models["sdxl-public-loras"])
    lora = base.loras.load(store.resolve_key("public:offset"))
    out = image(base, lora)
    assert not np.array_equal(out, image(base))
    assert np.array_equal(image(base, lora), out)
    release(base, lora)
    assert tuner_layers(base) == 0 and base._components["unet"].peft_config == {}


def test_plain_lora_file_loads_with_diffusers_own_loader(base, base_dir, store):
    """The contract: a plain LoRA file is diffusers' format; diffusers gives the same image."""
    from diffusers import StableDiffusionXLPipeline

    from genserve.device import cpu_generator
    from genserve.pipelines.outputs import to_uint8
    from genserve.pipelines.schedulers import make_scheduler

    lora = load(base, store, "plain")
    ours = image(base, lora)
    release(base, lora)
    pipe = StableDiffusionXLPipeline.from_pretrained(base_dir, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("DDIM", "linspace", dict(pipe.scheduler.config))
    pipe.load_lora_weights(store.resolve_key("id:plain").weights)
    theirs = pipe(PROMPT, height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                  generator=cpu_generator(0), output_type="np").images
    assert np.array_equal(to_uint8(theirs)[0], ours)
