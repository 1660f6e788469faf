"""The chat LLM without Ray: the tiny Llama loaded from its save_pretrained directory, decoding
contracts (only new text, determinism, batching, streaming, stops, limits), the request
schemas, and the OpenAI wire format checked by the official `openai` client. (Tier a + b.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from genserve.errors import InvalidInput, PipelineBroken
from genserve.pipelines.llm import ChatParams, LLMPipeline, _sendable
from genserve.schemas.common import FieldError
from genserve.schemas.llm import (
    MAX_MESSAGES,
    MAX_NEW_TOKENS,
    ChatCompletion,
    ChatCompletionRequest,
    ChatRequest,
    ChatResponse,
    ModelCard,
    ModelList,
    sse_stream,
)
from genserve.tiny.llm import EOS_ID, MAX_POSITIONS, build_llm

USER = [{"role": "user", "content": "tell me a story about a cat with a hat"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llm")
    build_llm(directory)
    return directory


@pytest.fixture(scope="module")
def llm(model_dir) -> LLMPipeline:
    return LLMPipeline(str(model_dir))


def outcome(r):
    """Everything but the seed, which greedy requests without one get picked at random."""
    return r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens


def field_of(exc: ValidationError) -> str:
    """The top-level request field blamed, as the ingress's 422 `loc` shows it."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    loc = [*err["loc"], cause.field] if isinstance(cause, FieldError) else err["loc"]
    return str(loc[0])


# -- pipeline ----------------------------------------------------------------------------------


def test_loads_from_saved_dir_on_cpu(llm, model_dir):
    assert llm.placement.device.type == "cpu" and llm.placement.dtype == torch.float32
    assert not llm.model.training and llm.model_id == str(model_dir)
    assert llm.max_context == MAX_POSITIONS and llm.eos_ids == {EOS_ID}
    assert llm.tokenizer.eos_token_id == llm.model.config.eos_token_id == EOS_ID
    assert llm.tokenizer.pad_token_id == llm.model.config.pad_token_id == llm.pad_id
    assert (model_dir / "model.safetensors").exists()
    llm.check_health()


def test_chat_is_only_the_new_text_and_matches_hf_generate(llm):
    r = llm.chat(ChatParams(USER, max_new_tokens=24, do_sample=False))
    prompt = llm.tokenizer.apply_chat_template(USER, add_generation_prompt=True,
                                               return_dict=False)
    assert r.prompt_tokens == len(prompt)
    # The manual KV-cache loop must decode what transformers' own greedy search decodes.
    out = llm.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long), max_new_tokens=24, do_sample=False)
    new = out[0, len(prompt):].tolist()
    assert r.completion_tokens == len(new)
    assert r.text == llm.tokenizer.decode(new, skip_special_tokens=True)
    assert r.finish_reason == ("stop" if new[-1] == EOS_ID else "length")
    for marker in ("<|user|>", "<|assistant|>", "cat with a hat"):
        assert marker not in r.text


def test_greedy_is_deterministic(llm):
    p = ChatParams(USER, max_new_tokens=20, do_sample=False)
    assert outcome(llm.chat(p)) == outcome(llm.chat(p))
    # temperature 0 is greedy too, whatever do_sample says
    assert outcome(llm.chat(ChatParams(USER, max_new_tokens=20, temperature=0))) == outcome(
        llm.chat(p))


def test_seeded_sampling_is_deterministic(llm):
    a, b, c = (llm.chat(ChatParams(USER, max_new_tokens=20, seed=s)) for s in (7, 7, 8))
    assert a == b and a.seed == 7
    assert a.text != c.text
    picked = llm.chat(ChatParams(USER, max_new_tokens=20))  # seed chosen by the pipeline
    assert 0 <= picked.seed < 2**32
    assert llm.chat(ChatParams(USER, max_new_tokens=20, seed=picked.seed)) == picked


def test_batch_equals_individual_calls(llm):
    ps = [
        ChatParams([{"role": "user", "content": "hi"}], max_new_tokens=8, do_sample=False),
        ChatParams([{"role": "system", "content": "You are a poet."}, *USER],
                   max_new_tokens=30, seed=3, temperature=1.2, top_k=0, top_p=0.9),
        ChatParams([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "why is the sea blue"}],
                   max_new_tokens=20, seed=11, top_k=20, stop=["e"]),
    ]
    batch = llm.chat_batch(ps)
    single = [llm.chat(p) for p in ps]
    assert [outcome(r) for r in batch] == [outcome(r) for r in single]
    assert [r.seed for r in batch[1:]] == [3, 11]
    assert len({r.prompt_tokens for r in batch}) == 3  # left padding really happened
    assert llm.chat_batch([]) == []


def test_stream_concatenates_to_chat(llm):
    for p in (ChatParams(USER, max_new_tokens=30, seed=1),
              ChatParams(USER, max_new_tokens=30, do_sample=False, stop=["ll", "xyz"]),
              ChatParams([{"role": "user", "content": "猫 ÄÖÜ é"}], max_new_tokens=30,
                         seed=2)):
        chunks = list(llm.stream(p))
        assert "".join(chunks) == llm.chat(p).text and len(chunks) > 1
        # a half character is never sent before the token that completes it
        assert not any(c.endswith("\ufffd") for c in chunks[:-1])
    events = list(llm.stream_events(ChatParams(USER, max_new_tokens=5, do_sample=False)))
    assert events[-1].completion_tokens == 5 and all(isinstance(e, str) for e in events[:-1])


def test_sendable_holds_back_partial_characters_and_stop_prefixes():
    assert _sendable("ab\ufffd", [], finished=False) == 2
    assert _sendable("ab\ufffd", [], finished=True) == 3
    assert _sendable("hello wor", ["world", "xyz"], finished=False) == 6
    assert _sendable("hello w", ["wx", "low"], finished=False) == 6
    assert _sendable("hello", ["lo!"], finished=False) == 3


def test_stop_sequence_cuts_and_stops(llm):
    full = llm.chat(ChatParams(USER, max_new_tokens=40, do_sample=False))
    # A 2-letter stop string first seen a few characters in.
    i = next(i for i in range(3, len(full.text) - 1)
             if full.text[i:i + 2].isascii() and full.text[i:i + 2].isalpha()
             and full.text.find(full.text[i:i + 2]) == i)
    stop = full.text[i:i + 2]
    cut = llm.chat(ChatParams(USER, max_new_tokens=40, do_sample=False, stop=["zzzz", stop]))
    assert cut.text == full.text[:i] and cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens
    assert "".join(llm.stream(ChatParams(USER, max_new_tokens=40, do_sample=False,
                                         stop=[stop]))) == full.text[:i]


def test_max_new_tokens_gives_length(llm):
    r = llm.chat(ChatParams(USER, max_new_tokens=5, do_sample=False))
    assert (r.finish_reason, r.completion_tokens) == ("length", 5)


def test_eos_ends_the_reply_and_is_not_in_the_text(llm, monkeypatch):
    ids = llm.tokenizer.apply_chat_template(USER, add_generation_prompt=True, return_dict=False)
    greedy = llm.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    new = greedy[0, len(ids):].tolist()
    # Pretend the 4th greedy token ends the turn (random weights rarely pick the real EOS).
    monkeypatch.setattr(llm, "eos_ids", {new[3]})
    r = llm.chat(ChatParams(USER, max_new_tokens=20, do_sample=False))
    assert (r.finish_reason, r.completion_tokens) == ("stop", 4)
    assert r.text == llm.tokenizer.decode(new[:3], skip_special_tokens=True)


def test_too_long_prompt_is_refused_with_numbers(llm):
    with pytest.raises(InvalidInput) as exc:
        llm.chat(ChatParams([{"role": "user", "content": "hello " * 600}]))
    assert exc.value.field == "messages" and str(MAX_POSITIONS) in exc.value.message


def test_context_limit_clamps_the_budget(model_dir):
    small = LLMPipeline(str(model_dir), max_context=40)
    r = small.chat(ChatParams(USER, max_new_tokens=100, do_sample=False))
    assert r.finish_reason == "length" and r.prompt_tokens + r.completion_tokens == 40
    with pytest.raises(ValueError, match="max_context"):
        LLMPipeline(str(model_dir), max_context=MAX_POSITIONS + 1)


@pytest.mark.parametrize("change,field", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0.0}, "top_p"),
    ({"temperature": -1.0}, "temperature"), ({"seed": 2**32}, "seed"), ({"stop": [""]}, "stop"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"), ({"messages": []}, "messages"),
])
def test_pipeline_checks_name_the_field(llm, change, field):
    with pytest.raises(InvalidInput) as exc:
        llm.check_inputs(ChatParams(**{"messages": USER, **change}))
    assert exc.value.field == field


def test_health_check_catches_nan_weights(model_dir):
    broken = LLMPipeline(str(model_dir))
    with torch.no_grad():
        broken.model.model.embed_tokens.weight.fill_(float("nan"))
    with pytest.raises(PipelineBroken, match="non-finite"):
        broken.check_health()


def test_import_is_cheap():
    code = ("import sys, genserve.pipelines.llm, genserve.schemas.llm; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == []


# -- native schema -----------------------------------------------------------------------------


def test_native_request_to_params():
    p = ChatRequest(prompt="hi", system_prompt="be brief", seed=3, stop=["\n"]).to_params()
    assert p.messages == [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "hi"}]
    assert (p.seed, p.stop, p.max_new_tokens, p.temperature, p.top_k) == (3, ["\n"], 256, 0.7, 50)
    r = ChatRequest(messages=USER, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    assert r.to_params().messages == USER and not r.to_params().do_sample


def msgs(*roles):
    return [{"role": r, "content": "x"} for r in roles]


@pytest.mark.parametrize("body,field", [
    ({}, "messages"),
    ({"prompt": "x", "messages": msgs("user")}, "prompt"),
    ({"messages": msgs("user"), "system_prompt": "x"}, "system_prompt"),
    ({"messages": "hello"}, "messages"),
    ({"messages": msgs("tool")}, "messages"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages"),
    ({"messages": msgs(*["user"] * (MAX_MESSAGES + 1))}, "messages"),
    ({"messages": msgs("user", "assistant")}, "messages"),
    ({"messages": msgs("user", "system", "user")}, "messages"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "temperature": float("nan")}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": 1001}, "top_k"),
    ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "x", "max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "seed": 2**32}, "seed"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": ["x" * 65]}, "stop"),
    ({"prompt": "x", "num_beams": 4}, "num_beams"),
])
def test_native_bad_input_names_the_field(body, field):
    with pytest.raises(ValidationError) as exc:
        ChatRequest.model_validate(body)
    assert field_of(exc.value) == field


@pytest.mark.parametrize("model", [ChatRequest, ChatCompletionRequest, ChatResponse,
                                   ChatCompletion, ModelList])
def test_every_field_is_documented(model):
    schema = model.model_json_schema()
    for name, definition in [("", schema), *schema.get("$defs", {}).items()]:
        for prop, spec in definition.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{prop}"


# -- OpenAI-compatible -------------------------------------------------------------------------


def test_openai_request_to_params():
    r = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [
            {"role": "developer", "content": "be brief"}, {"role": "system", "content": "be kind"},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}], "name": "bob"}],
        "temperature": 0, "stop": "\n", "max_tokens": 9, "max_completion_tokens": 7,
        "store": False, "metadata": {"k": "v"},  # extras the openai package may send: ignored
    })
    p = r.to_params()
    assert p.messages == [{"role": "system", "content": "be brief\n\nbe kind"},
                          {"role": "user", "content": "a\nb"}]
    assert (p.do_sample, p.stop, p.max_new_tokens, p.top_k) == (False, ["\n"], 7, 0)
    d = ChatCompletionRequest(model="m", messages=msgs("user")).to_params()
    assert (d.temperature, d.top_p, d.max_new_tokens, d.seed) == (1.0, 1.0, MAX_NEW_TOKENS, None)


@pytest.mark.parametrize("change,field", [
    ({"n": 2}, "n"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"), ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"stop": ["a"] * 5}, "stop"), ({"stop": ""}, "stop"), ({"temperature": 3}, "temperature"),
    ({"max_tokens": MAX_NEW_TOKENS + 1}, "max_tokens"),
    ({"messages": msgs("user", "tool")}, "messages"), ({"messages": []}, "messages"),
    ({"messages": msgs("user", "assistant")}, "messages"),
    ({"messages": [{"role": "user", "content": []}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
])
def test_openai_bad_input_names_the_field(change, field):
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"model": "m", "messages": msgs("user"), **change})
    assert field_of(exc.value) == field


def test_openai_models_parse_with_the_official_types(llm):
    from openai.types import Model
    from openai.types.chat import ChatCompletion as OAIChatCompletion
    from openai.types.chat import ChatCompletionChunk as OAIChunk

    result = llm.chat(ChatParams(USER, max_new_tokens=6, do_sample=False))
    ours = ChatCompletion.from_result(result, "tiny")
    theirs = OAIChatCompletion.model_validate(json.loads(ours.model_dump_json()))
    assert theirs.id.startswith("chatcmpl-") and theirs.object == "chat.completion"
    assert theirs.choices[0].message.content == result.text
    assert theirs.choices[0].finish_reason == "length"
    assert theirs.usage.total_tokens == result.prompt_tokens + 6
    events = llm.stream_events(ChatParams(USER, max_new_tokens=6, do_sample=False))
    sse = list(sse_stream(events, "tiny", include_usage=True))
    assert sse[-1] == "data: [DONE]\n\n" and all(e.endswith("\n\n") for e in sse)
    chunks = [OAIChunk.model_validate_json(e[len("data: "):]) for e in sse[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == result.text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 6 and not chunks[-1].choices
    assert len({c.id for c in chunks}) == 1
    Model.model_validate(ModelCard(id="tiny").model_dump())
    assert ChatResponse.from_result(result, "tiny").usage.total_tokens == result.prompt_tokens + 6


def test_official_client_round_trip(llm):
    """The `openai` client against a fake transport that does what the ingress will do:
    validate the body, run the pipeline, answer in OpenAI's wire format."""
    import httpx
    import openai

    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=ModelList(data=[ModelCard(id="tiny")]).model_dump())
        body = ChatCompletionRequest.model_validate_json(request.content)
        sent.append(body)
        if body.stream:
            events = llm.stream_events(body.to_params())
            text = "".join(sse_stream(events, body.model, body.include_usage))
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        result = llm.chat(body.to_params())
        return httpx.Response(200, json=ChatCompletion.from_result(result, body.model).model_dump())

    client = openai.OpenAI(base_url="http://genserve.test/v1", api_key="k",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    kwargs = dict(model="tiny", messages=USER, max_tokens=8, temperature=0.8, seed=5, stop=["@@"])
    reply = client.chat.completions.create(**kwargs)
    expected = llm.chat(ChatParams(USER, max_new_tokens=8, temperature=0.8, top_k=0, seed=5,
                                   stop=["@@"]))
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == expected.completion_tokens
    streamed = client.chat.completions.create(**kwargs, stream=True,
                                              stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert sent[0].seed == 5 and sent[1].include_usage
