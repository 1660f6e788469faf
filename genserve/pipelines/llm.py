"""LLM chat: any `AutoModelForCausalLM` with a chat template (TinyLlama-1.1B-Chat in production).

No Ray in here. Requests are decoded by a hand-written loop over the KV cache instead of
`generate`, because a batch must behave like its requests run alone: each row keeps its own
sampling settings, seed (its own CPU generator), stop sequences and token budget, and rows that
finish drop out of the batch. One forward pass per step serves every row.

torch and transformers are imported inside the methods: the ingress imports `ChatParams` and
`ChatResult` from here and must stay light.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from genserve.errors import InvalidInput, PipelineBroken

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_SEED = 2**32 - 1
DEFAULT_CONTEXT = 2048  # when neither the model config nor the tokenizer states one
REPLACEMENT = "\ufffd"  # what decoding shows for a multi-byte character cut between tokens


@dataclass
class ChatParams:
    """One chat request. ``temperature == 0`` or ``do_sample=False`` decodes greedily;
    ``top_k=0`` and ``top_p=1`` switch those filters off."""

    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}]
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    do_sample: bool = True
    seed: int | None = None  # None → one is picked and returned in the result
    stop: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class ChatResult:
    """The new assistant message only. ``finish_reason`` is "stop" (end-of-sequence token or a
    stop sequence, which is cut from ``text``) or "length" (``max_new_tokens`` or the context
    ran out). ``completion_tokens`` counts every token generated, the final EOS included."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seed: int


@dataclass
class _Row:
    """One request's decoding state inside a (possibly batched) run."""

    params: ChatParams
    prompt_ids: list[int]
    budget: int  # max_new_tokens, clamped to what is left of the context
    seed: int
    generator: Any  # torch.Generator on the CPU: per-row, so batch neighbours never matter
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    def result(self) -> ChatResult:
        return ChatResult(self.text, self.finish_reason or "length", len(self.prompt_ids),
                          len(self.ids), self.seed)


class LLMPipeline:
    """Loads a chat model once; `chat`, `chat_batch` and `stream` run requests.

    >>> llm = LLMPipeline("TinyLlama/TinyLlama-1.1B-Chat-v1.0")  # doctest: +SKIP
    >>> llm.chat(ChatParams([{"role": "user", "content": "Hi!"}], seed=1)).text  # doctest: +SKIP
    'Hello! How can I help you today?'
    """

    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto", max_context: int | None = None):
        import inspect

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from genserve.pipelines.loading import HealthState, Placement

        self.placement = Placement.resolve(device, dtype)
        self.model_id = model_id
        started = time.perf_counter()
        kwargs = self.placement.from_pretrained_kwargs(revision)
        # Chat LLM repos ship one set of safetensors (TinyLlama's are bf16), not an fp16
        # variant as the diffusers repos do; the dtype argument converts on load instead.
        kwargs.pop("variant", None)
        self.tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{model_id!r} has no chat template; LLMPipeline serves chat models")
        self.model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
        self.model.to(self.placement.device).eval()

        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else []
        # Llama 3 and others end a turn with one of several tokens; any of them stops a row.
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        # Pad only fills masked positions, so its value never matters, only that it exists.
        self.pad_id = next((i for i in (self.tokenizer.pad_token_id, gen.pad_token_id,
                                        *sorted(self.eos_ids)) if i is not None), 0)
        self.max_context = self._context_limit(max_context)
        forward_args = inspect.signature(self.model.forward).parameters
        # Only the last position's logits are needed: a 2048-token prompt would otherwise
        # materialise 2048 × 32000 logits per row during prefill.
        self._forward_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in forward_args else {}
        template_args = inspect.signature(self.tokenizer.apply_chat_template).parameters
        # Encode "</s>" typed by a user as text, not as the end-of-turn token (transformers ≥ 5).
        self._template_kwargs = ({"sanitize_control_tokens": True}
                                 if "sanitize_control_tokens" in template_args else {})
        # Rust tokenizers raise "Already borrowed" when two threads encode while one of them
        # changes padding/truncation state; Serve runs sync methods on a thread pool.
        self._tokenizer_lock = threading.Lock()
        self.health = HealthState()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s/%s in %.1fs (context %d tokens)", model_id,
                 self.placement.device, self.placement.dtype, self.load_seconds, self.max_context)

    def _context_limit(self, requested: int | None) -> int:
        # tokenizer.model_max_length is a huge sentinel (1e30) when the repo does not set it.
        known = [n for n in (getattr(self.model.config, "max_position_embeddings", None),
                             self.tokenizer.model_max_length)
                 if isinstance(n, int) and 0 < n < 10**7]
        limit = min(known) if known else DEFAULT_CONTEXT
        if requested is None:
            return limit
        if not 1 < requested <= limit:
            raise ValueError(f"`max_context` must be in 2..{limit} for {self.model_id!r} "
                             f"but is {requested}.")
        return requested

    def check_health(self) -> None:
        """A 1-token forward pass must give finite logits: catches NaN weights and a dead
        device for a millisecond of compute."""
        import torch

        self.health.raise_if_broken()
        bos = self.tokenizer.bos_token_id
        token = torch.tensor([[self.pad_id if bos is None else bos]],
                             device=self.placement.device)
        with torch.inference_mode():
            logits = self.model(input_ids=token).logits
        if not torch.isfinite(logits).all():
            raise PipelineBroken(f"{self.model_id}: 1-token probe gave non-finite logits")

    def check_inputs(self, p: ChatParams) -> int:
        """Validate ``p`` against this model; returns the prompt's token count.

        Deployments that batch call this before queueing, so one bad request is refused alone
        instead of failing the batch it would have joined.
        """
        return len(self._checked_prompt(p))

    def _checked_prompt(self, p: ChatParams) -> list[int]:
        if not isinstance(p.messages, list) or not p.messages:
            raise InvalidInput("`messages` must be a non-empty list of {role, content}.",
                               "messages")
        for i, m in enumerate(p.messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES \
                    or not isinstance(m.get("content"), str):
                raise InvalidInput(f"`messages[{i}]` must be {{role: one of {list(ROLES)}, "
                                   f"content: str}} but is {m!r:.200}.", "messages")
        checks = (
            ("max_new_tokens", p.max_new_tokens >= 1, "≥ 1"),
            ("temperature", 0 <= p.temperature < float("inf"), "finite and ≥ 0"),
            ("top_k", p.top_k >= 0, "≥ 0 (0 = off)"),
            ("top_p", 0 < p.top_p <= 1, "in (0, 1]"),
            ("seed", p.seed is None or 0 <= p.seed <= MAX_SEED, f"in 0..{MAX_SEED}"),
            ("stop", all(isinstance(s, str) and s for s in p.stop), "non-empty strings"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise InvalidInput(f"`{name}` must be {rule} but is {getattr(p, name)!r}.", name)
        prompt_ids = self._encode(p.messages)
        if (n := len(prompt_ids)) >= self.max_context:
            raise InvalidInput(f"the conversation is {n} tokens after the chat template but "
                               f"{self.model_id} has a context of {self.max_context} tokens "
                               "(prompt plus at least one new token); shorten `messages`.",
                               "messages")
        return prompt_ids

    def chat(self, p: ChatParams) -> ChatResult:
        """Run one request to completion."""
        return self.chat_batch([p])[0]

    def chat_batch(self, ps: list[ChatParams]) -> list[ChatResult]:
        """Run several requests in one batch; result ``i`` is what ``chat(ps[i])`` returns."""
        rows = [self._prepare(p) for p in ps]
        if rows:
            for _ in self._decode(rows):
                pass
        return [row.result() for row in rows]

    def stream(self, p: ChatParams) -> Iterator[str]:
        """Yield the reply as text deltas while it is generated;
        ``"".join(stream(p)) == chat(p).text``."""
        for event in self.stream_events(p):
            if isinstance(event, str):
                yield event

    def stream_events(self, p: ChatParams) -> Iterator[str | ChatResult]:
        """Like `stream`, then one final `ChatResult` (finish reason and token counts, which an
        OpenAI stream's last chunk and usage need)."""
        row = self._prepare(p)
        sent = 0
        for _ in self._decode([row]):
            ready = _sendable(row.text, p.stop, finished=row.finish_reason is not None)
            if ready > sent:
                yield row.text[sent:ready]
                sent = ready
        yield row.result()

    # -- decoding ------------------------------------------------------------------------------

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        from jinja2 import TemplateError

        try:
            with self._tokenizer_lock:
                return list(self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False,
                    **self._template_kwargs))
        except TemplateError as exc:  # e.g. a template that refuses system messages
            raise InvalidInput(f"{self.model_id}'s chat template refused `messages`: {exc}",
                               "messages") from None

    def _prepare(self, p: ChatParams) -> _Row:
        from genserve.device import cpu_generator

        prompt_ids = self._checked_prompt(p)
        seed = p.seed if p.seed is not None else secrets.randbelow(MAX_SEED + 1)
        budget = min(p.max_new_tokens, self.max_context - len(prompt_ids))
        return _Row(p, prompt_ids, budget, seed, cpu_generator(seed))

    def _decode(self, rows: list[_Row]) -> Iterator[None]:
        """Decode ``rows`` together; yields after every step (each unfinished row has one more
        token and its text updated) and returns when all are finished."""
        import torch

        self.health.raise_if_broken()
        device = self.placement.device
        # Left padding: every row's last prompt token sits in the last column, so one slice
        # gives each row's next-token logits. Positions count real tokens only, so a padded
        # row sees the same positions (and rotary phases) as when it runs alone.
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = list(range(len(rows)))  # which rows the KV cache holds, in order
        past = None
        with self.health.guard(f"out of GPU memory for {len(rows)} chat request(s) of up to "
                                f"{width} prompt tokens; retry later"):
            while True:
                with torch.inference_mode():
                    out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                     past_key_values=past, use_cache=True,
                                     **self._forward_kwargs)
                past = out.past_key_values
                # Sampling runs per row on the CPU in fp32, each row drawing from its own
                # generator: a row's tokens never depend on its batch neighbours.
                logits = out.logits[:, -1].float().cpu()
                for k, i in enumerate(batch):
                    if rows[i].finish_reason is None:
                        self._append(rows[i], _pick(logits[k], rows[i]))
                yield
                live = [k for k, i in enumerate(batch) if rows[i].finish_reason is None]
                if not live:
                    return
                if len(live) < len(batch) and hasattr(past, "batch_select_indices"):
                    # Finished rows leave the batch; caches that cannot drop rows keep them,
                    # fed their last token, with their logits ignored.
                    keep = torch.tensor(live, device=device)
                    past.batch_select_indices(keep)
                    mask, positions = mask[keep], positions[keep]
                    batch = [batch[k] for k in live]
                ids = torch.tensor([[rows[i].ids[-1]] for i in batch], device=device)
                mask = torch.cat([mask, mask.new_ones((len(batch), 1))], dim=-1)
                positions = positions[:, -1:] + 1

    def _append(self, row: _Row, token: int) -> None:
        row.ids.append(token)
        if token in self.eos_ids:
            row.finish_reason = "stop"  # the EOS token itself never reaches the text
            return
        # Decode all generated ids every step, not token by token: byte-level tokens may hold
        # half a character that only the next token completes. No clean-up of spaces, which
        # could rewrite text already streamed.
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
        cut = min((i for i in (text.find(s) for s in row.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, row.finish_reason = text[:cut], "stop"
        elif len(row.ids) >= row.budget:
            row.finish_reason = "length"
        row.text = text


def _pick(logits: "torch.Tensor", row: _Row) -> int:
    """Next token for one row from its fp32 CPU logits: greedy, or temperature → top-k →
    top-p → a draw from the row's own generator."""
    import torch

    p = row.params
    if p.greedy:
        return int(torch.argmax(logits))
    logits = logits / p.temperature
    if 0 < p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Keep the smallest top set whose probability reaches top_p (the best token always).
        drop = (probs.cumsum(-1) - probs) >= p.top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=row.generator))


def _sendable(text: str, stops: list[str], finished: bool) -> int:
    """How much of ``text`` a stream may send now: all of it once finished; before that, hold
    back a trailing half character and any tail that could still grow into a stop sequence
    (sent text cannot be taken back when the stop completes)."""
    if finished:
        return len(text)
    end = len(text.rstrip(REPLACEMENT))
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), held, -1):
            if text.endswith(stop[:k], 0, end):
                held = k
                break
    return end - held
