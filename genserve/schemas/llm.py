"""Chat schemas: the native `POST /v1/chat` and the OpenAI-compatible `/v1/chat/completions`.

The native request is strict (unknown fields refused). The OpenAI request ignores unknown
fields, because the `openai` package and the tools built on it send fields we do not serve;
the ones that would change the answer (`n`, penalties, `tools`, `logprobs`, a JSON
`response_format`) are declared and refused unless left at their no-op value. Responses use
OpenAI's wire names and shapes exactly, so `openai.OpenAI(base_url=...)` parses them.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from genserve.pipelines.llm import ChatParams, ChatResult
from genserve.schemas.common import FieldError, StrictModel

MAX_NEW_TOKENS = 1024
DEFAULT_MAX_NEW_TOKENS = 256
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 8000  # ~2000 tokens: TinyLlama's whole context
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**32 - 1

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]


def _check_conversation(roles: list[str]) -> None:
    """Rules every chat template can follow: system messages only at the start, and the last
    message from the user (the model writes the next assistant turn)."""
    if roles[-1] != "user":
        raise FieldError("messages", f"the last message must be from `user` (the model answers "
                         f"it) but messages[{len(roles) - 1}] is from `{roles[-1]}`")
    leading = next((i for i, r in enumerate(roles) if r != "system"), len(roles))
    late = [i for i, r in enumerate(roles) if r == "system" and i > leading]
    if late:
        raise FieldError("messages", f"system messages must come first; messages{late} follow "
                         f"a `{roles[leading]}` message")


# -- native ------------------------------------------------------------------------------------


class ChatMessage(StrictModel):
    role: Role = Field(description="Who wrote the message.", examples=["user"])
    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS,
                         description="The message text.", examples=["Write a haiku about cats."])


class ChatRequest(StrictModel):
    """`POST /v1/chat`: a conversation (`messages`) or a single `prompt`; the reply is the
    model's next assistant message."""

    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=MAX_MESSAGES,
        description=f"The conversation so far (1–{MAX_MESSAGES} messages): optional system "
        "messages first, the last one from `user`. Give this or `prompt`, not both.",
        examples=[[{"role": "system", "content": "You are a friendly pirate."},
                   {"role": "user", "content": "How many helicopters can a human eat?"}]])
    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_MESSAGE_CHARS,
        description="Shortcut for a one-message conversation. Give this or `messages`.",
        examples=["Write a haiku about cats."])
    system_prompt: str | None = Field(
        None, min_length=1, max_length=MAX_MESSAGE_CHARS,
        description="Only with `prompt`: a system message sent before it.",
        examples=["You are a concise assistant."])
    max_new_tokens: int = Field(
        DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS,
        description=f"Most tokens to generate (1–{MAX_NEW_TOKENS}); fewer when the context "
        "runs out first (`finish_reason` is then `length`).", examples=[256])
    temperature: float = Field(0.7, ge=0.0, le=2.0, allow_inf_nan=False,
                               description="Sampling temperature; 0 decodes greedily.",
                               examples=[0.7])
    top_k: int = Field(50, ge=0, le=1000, description="Sample from the k likeliest tokens "
                       "only; 0 turns the filter off.", examples=[50])
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                         description="Nucleus sampling: sample from the likeliest tokens "
                         "whose probabilities add up to `top_p`; 1 turns it off.",
                         examples=[0.95])
    do_sample: bool = Field(True, description="False decodes greedily (same as temperature "
                            "0): deterministic, ignores the sampling settings.",
                            examples=[True])
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Random seed: the same seed, parameters and "
        "model give the same reply. `null` picks one (returned in the response).",
        examples=[42])
    stop: list[StopString] = Field(
        default_factory=list, max_length=MAX_STOP,
        description=f"Up to {MAX_STOP} strings (1–{MAX_STOP_CHARS} characters each) that end "
        "the reply; the stop string itself is not returned.", examples=[["\n\n"]])
    stream: bool = Field(False, description="Send the reply as server-sent events while it "
                         "is generated.", examples=[False])

    @model_validator(mode="after")
    def _check_source(self) -> "ChatRequest":
        if self.messages is None and self.prompt is None:
            raise FieldError("messages", "give `messages` (a conversation) or `prompt`")
        if self.messages is not None and self.prompt is not None:
            raise FieldError("prompt", "give either `messages` or `prompt`, not both")
        if self.system_prompt is not None and self.prompt is None:
            raise FieldError("system_prompt", "`system_prompt` goes with `prompt`; with "
                             "`messages`, send a system message first instead")
        if self.messages is not None:
            _check_conversation([m.role for m in self.messages])
        return self

    def to_params(self) -> ChatParams:
        if self.messages is not None:
            messages = [m.model_dump() for m in self.messages]
        else:
            messages = [{"role": "user", "content": self.prompt}]
            if self.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        return ChatParams(messages, max_new_tokens=self.max_new_tokens,
                          temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                          do_sample=self.do_sample, seed=self.seed, stop=list(self.stop))


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0, description="Tokens in the prompt after the chat "
                               "template.", examples=[32])
    completion_tokens: int = Field(ge=0, description="Tokens generated (the final "
                                   "end-of-sequence token included).", examples=[100])
    total_tokens: int = Field(ge=0, description="prompt_tokens + completion_tokens.",
                              examples=[132])

    @classmethod
    def of(cls, result: ChatResult) -> "Usage":
        return cls(prompt_tokens=result.prompt_tokens,
                   completion_tokens=result.completion_tokens,
                   total_tokens=result.prompt_tokens + result.completion_tokens)


class ChatResponse(StrictModel):
    text: str = Field(description="The assistant's reply (only the new message).",
                      examples=["Cats nap in the sun."])
    finish_reason: FinishReason = Field(
        description="`stop`: the model ended its turn or a stop string was hit; `length`: "
        "`max_new_tokens` or the context ran out.", examples=["stop"])
    usage: Usage = Field(description="Token counts.")
    seed: int = Field(ge=0, le=MAX_SEED, description="The seed used (send it to reproduce "
                      "this reply).", examples=[42])
    model: str = Field(description="The model that answered.",
                       examples=["TinyLlama/TinyLlama-1.1B-Chat-v1.0"])

    @classmethod
    def from_result(cls, result: ChatResult, model: str) -> "ChatResponse":
        return cls(text=result.text, finish_reason=result.finish_reason,
                   usage=Usage.of(result), seed=result.seed, model=model)


# -- OpenAI-compatible request -----------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(description="Only text parts are served.", examples=["text"])
    text: str = Field(max_length=MAX_MESSAGE_CHARS, description="The text.",
                      examples=["Hello!"])


class OpenAIMessage(BaseModel):
    # `name` and other per-message extras are accepted and ignored, as the API allows them.
    model_config = ConfigDict(extra="ignore")

    role: Literal["developer", "system", "user", "assistant"] = Field(
        description="Who wrote the message; `developer` is OpenAI's new name for `system`. "
        "Tool messages are not served.", examples=["user"])
    content: str | list[TextPart] = Field(
        description="The text, or a list of text parts (joined with newlines).",
        examples=["Hello!"])

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    @model_validator(mode="after")
    def _check_text(self) -> "OpenAIMessage":
        if not 1 <= len(self.text) <= MAX_MESSAGE_CHARS:
            raise FieldError("content", f"message content must have 1–{MAX_MESSAGE_CHARS} "
                             f"characters but has {len(self.text)}")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with token usage and "
                                "no choices.", examples=[True])


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`, as OpenAI's API. Defaults are OpenAI's (temperature 1,
    no top-k); `top_k` is a genserve extension, as in vLLM."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256, description="Served model id (see "
                       "`GET /v1/models`).", examples=["TinyLlama/TinyLlama-1.1B-Chat-v1.0"])
    messages: list[OpenAIMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES,
        description=f"The conversation (1–{MAX_MESSAGES} messages): system/developer messages "
        "first, the last one from `user`.",
        examples=[[{"role": "user", "content": "Say hello."}]])
    temperature: float | None = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False,
                                      description="Sampling temperature; 0 is greedy. "
                                      "`null` means 1.", examples=[0.7])
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                                description="Nucleus sampling mass; `null` means 1 (off).",
                                examples=[0.95])
    top_k: int | None = Field(None, ge=0, le=1000, description="genserve extension: sample "
                              "from the k likeliest tokens; `null`/0 is off.", examples=[50])
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description=f"Most tokens to generate (1–"
        f"{MAX_NEW_TOKENS}); `null`: {MAX_NEW_TOKENS} or what the context leaves.",
        examples=[256])
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Older name of `max_completion_tokens`, "
        "used when that is not given.", examples=[256])
    stream: bool | None = Field(False, description="Send `chat.completion.chunk` events "
                                "(server-sent events, ending with `data: [DONE]`).",
                                examples=[False])
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    stop: StopString | list[StopString] | None = Field(
        None, description=f"A string or up to {MAX_STOP} strings that end the reply.",
        examples=[["\n\n"]])
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed for "
                             f"reproducible sampling (0–{MAX_SEED}).", examples=[42])
    n: int | None = Field(1, ge=1, le=1, description="Choices to generate: only 1 is served.",
                          examples=[1])
    presence_penalty: float | None = Field(
        0.0, ge=-2.0, le=2.0, allow_inf_nan=False,
        description="Accepted only as 0 (not served).", examples=[0.0])
    frequency_penalty: float | None = Field(
        0.0, ge=-2.0, le=2.0, allow_inf_nan=False,
        description="Accepted only as 0 (not served).", examples=[0.0])
    logprobs: bool | None = Field(False, description="Accepted only as false (not served).",
                                  examples=[False])
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=0, description="Tool calling is not served; send none.",
        examples=[None])
    response_format: dict[str, Any] | None = Field(
        None, description='Only `{"type": "text"}` is served.', examples=[{"type": "text"}])
    user: str | None = Field(None, max_length=256, description="End-user id, for your logs.",
                             examples=["user-1234"])

    @model_validator(mode="after")
    def _check_supported(self) -> "ChatCompletionRequest":
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise FieldError(name, f"`{name}` is not supported; send 0 or leave it out "
                                 f"(got {getattr(self, name)})")
        if self.logprobs:
            raise FieldError("logprobs", "`logprobs` is not supported; send false")
        if self.response_format and self.response_format.get("type") != "text":
            raise FieldError("response_format", "only `{\"type\": \"text\"}` is supported; "
                             f"got {self.response_format.get('type')!r}")
        if len(self.stop_list) > MAX_STOP:
            raise FieldError("stop", f"at most {MAX_STOP} stop strings; got "
                             f"{len(self.stop_list)}")
        _check_conversation(["system" if m.role == "developer" else m.role
                             for m in self.messages])
        return self

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_params(self) -> ChatParams:
        # The leading system/developer messages become one system message: many chat
        # templates (Llama 2, Mistral) accept a single one only.
        messages: list[dict[str, str]] = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            if role == "system" and messages:
                messages[0]["content"] += "\n\n" + m.text
            else:
                messages.append({"role": role, "content": m.text})
        temperature = 1.0 if self.temperature is None else self.temperature
        return ChatParams(
            messages,
            max_new_tokens=self.max_completion_tokens or self.max_tokens or MAX_NEW_TOKENS,
            temperature=temperature, top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p, do_sample=temperature > 0,
            seed=self.seed, stop=self.stop_list)


# -- OpenAI-compatible responses ---------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class CompletionMessage(BaseModel):
    role: Literal["assistant"] = Field("assistant", description="Always `assistant`.")
    content: str = Field(description="The reply.", examples=["Hello! How can I help?"])


class CompletionChoice(BaseModel):
    index: int = Field(0, ge=0, le=0, description="Choice index (one choice only).")
    message: CompletionMessage = Field(description="The generated message.")
    finish_reason: FinishReason = Field(description="`stop` or `length`.", examples=["stop"])
    logprobs: None = Field(None, description="Not served; always null.")


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id, description="`chatcmpl-` + a random hex.",
                    examples=["chatcmpl-3f2a0c9e1b7d4e6f8a5b2c1d0e9f8a7b"])
    object: Literal["chat.completion"] = Field("chat.completion", description="Object type.")
    created: int = Field(default_factory=lambda: int(time.time()),
                         description="Unix time (seconds).", examples=[1767225600])
    model: str = Field(description="The model that answered.",
                       examples=["TinyLlama/TinyLlama-1.1B-Chat-v1.0"])
    choices: list[CompletionChoice] = Field(min_length=1, max_length=1,
                                            description="The one choice.")
    usage: Usage = Field(description="Token counts.")
    system_fingerprint: str | None = Field(None, description="Not served; null.")

    @classmethod
    def from_result(cls, result: ChatResult, model: str) -> "ChatCompletion":
        return cls(model=model, usage=Usage.of(result), choices=[CompletionChoice(
            message=CompletionMessage(content=result.text),
            finish_reason=result.finish_reason)])


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = Field(None, description="`assistant` in the first "
                                              "chunk only.")
    content: str | None = Field(None, description="The next piece of the reply.",
                                examples=["Hel"])


class ChunkChoice(BaseModel):
    index: int = Field(0, ge=0, le=0, description="Choice index (one choice only).")
    delta: ChoiceDelta = Field(description="What this chunk adds.")
    finish_reason: FinishReason | None = Field(None, description="Set in the last content "
                                               "chunk only.", examples=[None])
    logprobs: None = Field(None, description="Not served; always null.")


class ChatCompletionChunk(BaseModel):
    id: str = Field(description="Same id in every chunk of one completion.",
                    examples=["chatcmpl-3f2a0c9e1b7d4e6f8a5b2c1d0e9f8a7b"])
    object: Literal["chat.completion.chunk"] = Field("chat.completion.chunk",
                                                     description="Object type.")
    created: int = Field(description="Unix time (seconds), same in every chunk.",
                         examples=[1767225600])
    model: str = Field(description="The model that answers.",
                       examples=["TinyLlama/TinyLlama-1.1B-Chat-v1.0"])
    choices: list[ChunkChoice] = Field(max_length=1, description="One choice; empty in the "
                                       "usage chunk.")
    usage: Usage | None = Field(None, description="Only in the last chunk, and only with "
                                "`stream_options.include_usage`.")

    def sse(self) -> str:
        """The chunk as one server-sent event."""
        return f"data: {self.model_dump_json()}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class CompletionStream:
    """Formats one streamed completion as OpenAI's server-sent events: a role chunk first,
    one chunk per text delta, a chunk with the finish reason, optionally a usage chunk,
    then ``[DONE]``. Shared by the sync `sse_stream` and the ingress's async stream."""

    def __init__(self, model: str, include_usage: bool = False):
        self.head = {"id": completion_id(), "created": int(time.time()), "model": model}
        self.include_usage = include_usage

    def _chunk(self, delta: ChoiceDelta, finish: str | None = None) -> str:
        return ChatCompletionChunk(**self.head, choices=[
            ChunkChoice(delta=delta, finish_reason=finish)]).sse()

    def start(self) -> str:
        return self._chunk(ChoiceDelta(role="assistant", content=""))

    def event(self, event: str | ChatResult) -> list[str]:
        if isinstance(event, str):
            return [self._chunk(ChoiceDelta(content=event))] if event else []
        out = [self._chunk(ChoiceDelta(), event.finish_reason)]
        if self.include_usage:
            out.append(ChatCompletionChunk(**self.head, choices=[], usage=Usage.of(event)).sse())
        return out

    @staticmethod
    def end() -> str:
        return SSE_DONE


def sse_stream(events: Iterator[str | ChatResult], model: str,
               include_usage: bool = False) -> Iterator[str]:
    """Turn `LLMPipeline.stream_events` into OpenAI's event stream (see `CompletionStream`)."""
    stream = CompletionStream(model, include_usage)
    yield stream.start()
    for event in events:
        yield from stream.event(event)
    yield stream.end()


# -- models ------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str = Field(description="Model id to send as `model`.",
                    examples=["TinyLlama/TinyLlama-1.1B-Chat-v1.0"])
    object: Literal["model"] = Field("model", description="Object type.")
    created: int = Field(default_factory=lambda: int(time.time()),
                         description="Unix time (seconds) the server loaded it.",
                         examples=[1767225600])
    owned_by: str = Field("genserve", description="Owner shown to clients.",
                          examples=["genserve"])


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description="Object type.")
    data: list[ModelCard] = Field(description="The served models.")
