"""LoRAs on an already-loaded SDXL pipeline: find them, load them, switch per request, unload.

- `LoraStore` maps a request's ``lora_id`` / ``lora_name`` to files: ``<lora_dir>/<id>/`` in
  `genserve.lora_format`'s layout (what the personalization job writes) and
  ``<public_dir>/<name>.safetensors`` (kohya or diffusers files). Only safetensors are read.
- `LoraHost` owns what the loaded LoRAs added to one pipeline's components (peft adapters in
  the UNet and text encoders, new tokens in the tokenizers and embedding rows) and the lock
  that makes "activate this request's adapter, run the pipeline" one step.
- `LoadedLora` is the handle Ray Serve's multiplexer caches; evicting it unloads the LoRA.

Why one lock per pipeline: the active adapter and its scale are state of the shared layers,
and the tokenizers are swapped when tokens come and go, so two runs at once could see each
other's LoRA. Serialising runs costs nothing that matters: a GPU runs one SDXL batch at a time
anyway, and the replica's second ongoing request waits ready behind the first.

Every trained LoRA calls its tokens ``<s0>``, ``<s1>``…; each load renames them to random
names of its own (``<lora_3fa0c1d2e4b5-0>``) and `LoadedLora.rewrite` maps the prompt's
``TOK`` (the token abstraction) and ``<s0>``… onto them. Random, not derived from the id, so no
prompt can name another LoRA's tokens.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genserve import lora_format as LF
from genserve.errors import GenserveError, InvalidInput, NotFound, Unavailable
from genserve.pipelines.params import PUBLIC, TRAINED, split_adapter_key

log = logging.getLogger(__name__)

FIELDS = {TRAINED: "lora_id", PUBLIC: "lora_name"}  # the request field a key came from
PUBLIC_SUFFIX = ".safetensors"
# Which components take adapters, and which (tokenizer, text encoder) pair takes each row set
# of an embeddings file. The refiner has only text encoder 2 and its own UNet: it takes the
# clip_g tokens (so a prompt's TOK still means the subject there) and no adapter, since a
# UNet LoRA trained on the base does not fit the refiner's UNet.
BASE_ADAPTERS = ("unet", "text_encoder", "text_encoder_2")
BASE_TOKENS = {"clip_l": ("tokenizer", "text_encoder"), "clip_g": ("tokenizer_2", "text_encoder_2")}
REFINER_TOKENS = {"clip_g": ("tokenizer_2", "text_encoder_2")}


@dataclass(frozen=True)
class LoraRef:
    """Where one LoRA's files are. ``field`` is the request field named in errors."""

    key: str
    field: str
    name: str
    weights: Path
    embeddings: Path | None = None


class LoraStore:
    """Resolves LoRA names to files; never reads anything but ``.safetensors``.

    >>> LoraStore("/srv/loras", None).resolve_key("id:user-1")  # doctest: +SKIP
    LoraRef(key='id:user-1', field='lora_id', name='user-1', weights=PosixPath(...), ...)
    """

    def __init__(self, lora_dir: str | Path | None, public_dir: str | Path | None):
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.public_dir = Path(public_dir) if public_dir else None

    def resolve_key(self, key: str) -> LoraRef:
        try:
            namespace, name = split_adapter_key(key)
        except ValueError as exc:
            raise InvalidInput(str(exc), "lora_id") from None
        field_name = FIELDS[namespace]
        # Names become path components: the strict pattern is what keeps `../x` out.
        if not LF.LORA_ID.fullmatch(name):
            raise InvalidInput(f"`{field_name}` must match {LF.LORA_ID_PATTERN} but is "
                               f"{name[:80]!r}", field_name)
        if namespace == TRAINED:
            if self.lora_dir is None:
                raise NotFound(f"`lora_id` {name!r} not found: this server has no LoRA "
                               "directory", field_name)
            weights = self.lora_dir / name / LF.WEIGHTS_NAME
            if not weights.is_file():
                raise NotFound(f"`lora_id` {name!r} not found (no {LF.WEIGHTS_NAME}; only "
                               "safetensors files are served)", field_name)
            embeddings = weights.with_name(LF.EMBEDDINGS_NAME)
            return LoraRef(key, field_name, name, weights,
                           embeddings if embeddings.is_file() else None)
        if self.public_dir is None:
            raise NotFound(f"`lora_name` {name!r} not found: this server has no public LoRAs "
                           "(public_lora_dir is not set)", field_name)
        weights = self.public_dir / f"{name}{PUBLIC_SUFFIX}"
        if not weights.is_file():
            raise NotFound(f"`lora_name` {name!r} is not a public LoRA here; available: "
                           f"{self.public_names()}", field_name)
        return LoraRef(key, field_name, name, weights)

    def public_names(self) -> list[str]:
        if self.public_dir is None or not self.public_dir.is_dir():
            return []
        return sorted(p.stem for p in self.public_dir.glob(f"*{PUBLIC_SUFFIX}")
                      if LF.LORA_ID.fullmatch(p.stem))


def _same(text: str | None) -> str | None:
    return text


@dataclass(eq=False)
class _Loaded:
    """What one load added to the components."""

    key: str
    name: str  # peft adapter name and token prefix, unique per load
    has_adapter: bool = False
    tokens: dict[str, str] = field(default_factory=dict)  # trained name → this load's name
    pattern: re.Pattern | None = None
    pins: int = 0
    retired: bool = False
    unloaded: bool = False

    def rewrite(self, text: str | None) -> str | None:
        if text is None or self.pattern is None:
            return text
        joined = "".join(self.tokens.values())
        return self.pattern.sub(lambda m: self.tokens.get(m.group(0), joined), text)


class LoadedLora:
    """A loaded LoRA, as Ray Serve's multiplexer caches it.

    On LRU eviction the multiplexer calls ``__del__`` (in a worker thread), and Python calls it
    again when the object is collected; both only mark the LoRA retired. The host unloads it
    under its lock at the start of its next load or run (the multiplexer loads the next LoRA
    right after evicting), once no request holds it (`in_use`). Unloading inside ``__del__``
    would block on the lock, or deadlock if collection ran in the thread that holds it.
    """

    def __init__(self, host: LoraHost, record: _Loaded):
        self._host, self._record = host, record

    @property
    def key(self) -> str:
        return self._record.key

    def rewrite(self, text: str | None) -> str | None:
        """``text`` with the token abstraction and trained token names mapped to this load's
        tokens: ``"a TOK dog"`` → ``"a <lora_…-0><lora_…-1> dog"``."""
        return self._record.rewrite(text)

    @contextmanager
    def in_use(self) -> Iterator[LoadedLora]:
        """Pins the LoRA: eviction meanwhile defers the unload until the block ends."""
        self._host._pin(self._record, +1)
        try:
            yield self
        finally:
            self._host._pin(self._record, -1)

    def __del__(self) -> None:
        host = self.__dict__.get("_host")
        if host is not None:
            host._retire(self._record)


class _TokenSlot:
    """The new-token rows of one tokenizer / text encoder pair. The tokenizer is rebuilt from a
    pristine copy on every change and the embedding from the original rows, so unloading puts
    back exactly the vocabulary and embedding size the model was loaded with."""

    def __init__(self, components: dict[str, Any], tokenizer_key: str, encoder_key: str):
        self.tokenizer_key, self.encoder_key = tokenizer_key, encoder_key
        self.pristine = copy.deepcopy(components[tokenizer_key])
        weight = components[encoder_key].get_input_embeddings().weight
        self.n_tokens, self.n_rows = len(self.pristine), weight.shape[0]
        self.width = weight.shape[1]
        # New ids start at the tokenizer's length. Rows past it that the tokenizer never emits
        # (none in SDXL's encoders, a few in the tiny ones) are overwritten: keep them to restore.
        self.spare = weight.detach()[self.n_tokens:].clone()
        self.rows: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, components: dict[str, Any]) -> None:
        names = list(self.rows)
        tokenizer = copy.deepcopy(self.pristine)
        if names:
            tokenizer.add_tokens(names)
            ids = tokenizer.convert_tokens_to_ids(names)
            if ids != list(range(self.n_tokens, self.n_tokens + len(names))):
                raise RuntimeError(f"{self.tokenizer_key} gave new tokens ids {ids[:4]}…")
        encoder = components[self.encoder_key]
        old = encoder.get_input_embeddings().weight
        weight = old.new_empty((max(self.n_rows, self.n_tokens + len(names)), self.width))
        weight[: self.n_tokens] = old[: self.n_tokens]
        weight[self.n_tokens: self.n_rows] = self.spare
        if names:
            weight[self.n_tokens: self.n_tokens + len(names)] = torch.stack(
                [self.rows[n] for n in names]).to(old)
        encoder.set_input_embeddings(torch.nn.Embedding.from_pretrained(weight, freeze=True))
        encoder.config.vocab_size = weight.shape[0]
        components[self.tokenizer_key] = tokenizer


class LoraHost:
    """The LoRAs loaded into one pipeline's ``components`` (the dict the pipeline builds its
    per-request pipeline objects from; tokenizers in it are replaced as tokens change)."""

    def __init__(self, components: dict[str, Any], *, adapters: tuple[str, ...] = BASE_ADAPTERS,
                 tokens: dict[str, tuple[str, str]] | None = None):
        self.components = components
        self.adapter_components = tuple(c for c in adapters if components.get(c) is not None)
        self.slots = {k: _TokenSlot(components, *pair)
                      for k, pair in (BASE_TOKENS if tokens is None else tokens).items()}
        self._lock = threading.Lock()  # components + pipeline runs
        self._state = threading.RLock()  # pins/retired flags; taken from __del__, never blocks
        self._records: dict[str, _Loaded] = {}
        self._layers: list | None = None

    def loaded(self) -> list[str]:
        """Keys of the LoRAs loaded and not evicted."""
        with self._state:
            return sorted(r.key for r in self._records.values() if not r.retired)

    def load(self, ref: LoraRef) -> LoadedLora:
        """Load ``ref``'s adapter weights and tokens (blocks while a run holds the lock)."""
        with self._lock:
            self._purge()
            started = time.perf_counter()
            record = _Loaded(ref.key, f"lora_{secrets.token_hex(6)}")
            try:
                if self.adapter_components:
                    self._load_adapter(ref, record.name)
                    record.has_adapter = True
                if ref.embeddings is not None and self.slots:
                    self._load_tokens(ref, record)
            except Exception as exc:
                record.has_adapter = True  # remove whatever a half-finished load injected
                self._unload(record)
                if isinstance(exc, GenserveError):
                    raise
                raise InvalidInput(f"`{ref.field}` {ref.name!r} does not fit this model: "
                                   f"{exc}", ref.field) from exc
            with self._state:
                self._records[record.name] = record
            log.info("loaded LoRA %s as %s in %.2fs (%d tokens)", ref.key, record.name,
                     time.perf_counter() - started, len(record.tokens))
            return LoadedLora(self, record)

    @contextmanager
    def active(self, lora: LoadedLora | None,
               scale: float = 1.0) -> Iterator[Callable[[str | None], str | None]]:
        """Holds the lock with exactly ``lora``'s adapter active at ``scale`` (none when
        ``lora`` is None); yields the prompt rewrite to use. Scale 0 disables the adapter
        rather than multiplying it by 0, so it is exact for DoRA's magnitude too."""
        record = lora._record if lora is not None else None
        if lora is not None and lora._host is not self:
            raise ValueError(f"LoRA {lora.key} was loaded into another pipeline")
        with self._lock:
            self._purge()
            if record is not None and record.unloaded:
                raise Unavailable(f"LoRA {record.key} was unloaded meanwhile; retry")
            on = record is not None and record.has_adapter and scale != 0
            for layer in self._tuner_layers():
                if on:
                    layer.set_adapter(record.name, inference_mode=True)
                    layer.set_scale(record.name, scale)
                layer.enable_adapters(on)
            yield record.rewrite if record is not None else _same

    # -- loading ----------------------------------------------------------------------------

    def _load_adapter(self, ref: LoraRef, name: str) -> None:
        if ref.field == "lora_id" and LF.has_peft_configs(ref.weights):
            self._load_with_peft(ref.weights, name)
        else:
            self._load_with_diffusers(ref.weights, name)
        self._layers = None
        if not any(_holds(layer, name) for layer in self._tuner_layers()):
            raise InvalidInput(f"`{ref.field}` {ref.name!r} holds no adapter weights for this "
                               "model's modules", ref.field)

    def _load_with_peft(self, path: Path, name: str) -> None:
        """genserve's files: every adapter kind peft has (LoRA, DoRA, LoKr, LoHa), rebuilt
        from the config stored in the file."""
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        weights = LF.load_lora_weights(path)
        for component, state in weights.states.items():
            module = self.components.get(component)
            config = weights.configs.get(component)
            if module is None or component not in self.adapter_components or config is None:
                raise ValueError(f"{component} weights cannot be applied here (component "
                                 f"{'missing' if module is None else 'without peft config'})")
            with _several_adapters_expected():
                inject_adapter_in_model(config, module, adapter_name=name)
            result = set_peft_model_state_dict(module, state, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}" in k]
            if result.unexpected_keys or missing:
                raise ValueError(f"{component}: keys the model lacks "
                                 f"{result.unexpected_keys[:3]}, adapter keys the file lacks "
                                 f"{missing[:3]}")
            module.eval()  # new dropout modules start in training mode

    def _load_with_diffusers(self, path: Path, name: str) -> None:
        """Files without genserve's configs (kohya, A1111, diffusers' own writer): diffusers
        converts the keys. A path, so it reads the file's metadata (alphas) too;
        ``use_safetensors`` keeps it from falling back to pickle."""
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(**self.components, add_watermarker=False)
        with _several_adapters_expected():
            pipe.load_lora_weights(str(path), adapter_name=name, use_safetensors=True)
        for component in self.adapter_components:
            self.components[component].eval()

    def _load_tokens(self, ref: LoraRef, record: _Loaded) -> None:
        emb = LF.load_embeddings(ref.embeddings)
        if not emb.tokens or len(set(emb.tokens)) != len(emb.tokens):
            raise ValueError(f"embeddings name no distinct tokens: {emb.tokens}")
        names = [f"<{record.name}-{i}>" for i in range(len(emb.tokens))]
        for key, slot in self.slots.items():
            rows = getattr(emb, key)
            if tuple(rows.shape) != (len(names), slot.width):
                raise ValueError(f"{key} rows are {tuple(rows.shape)}; this model's "
                                 f"{slot.encoder_key} needs ({len(names)}, {slot.width})")
        record.tokens = dict(zip(emb.tokens, names, strict=True))
        for key, slot in self.slots.items():
            slot.rows.update(zip(names, getattr(emb, key).float(), strict=True))
            slot.apply(self.components)
        # Trained names first (longest first, so <s10> is not read as <s1>), then the whole
        # word abstraction, e.g. TOK but not TOKEN.
        alternatives = [re.escape(t) for t in sorted(emb.tokens, key=len, reverse=True)]
        if emb.token_abstraction:
            alternatives.append(rf"(?<!\w){re.escape(emb.token_abstraction)}(?!\w)")
        record.pattern = re.compile("|".join(alternatives))

    # -- unloading --------------------------------------------------------------------------

    def _pin(self, record: _Loaded, delta: int) -> None:
        with self._state:
            record.pins += delta

    def _retire(self, record: _Loaded) -> None:
        with self._state:
            record.retired = True

    def _purge(self) -> None:
        """Unload retired LoRAs no request holds (caller holds the lock)."""
        with self._state:
            stale = [r for r in self._records.values() if r.retired and r.pins == 0]
        for record in stale:
            self._unload(record)

    def _unload(self, record: _Loaded) -> None:
        if record.has_adapter:
            self._remove_adapter(record.name)
        if record.tokens:
            for slot in self.slots.values():
                for name in record.tokens.values():
                    slot.rows.pop(name, None)
                slot.apply(self.components)
        record.unloaded = True
        with self._state:
            self._records.pop(record.name, None)
        log.info("unloaded LoRA %s (%s)", record.key, record.name)

    def _remove_adapter(self, name: str) -> None:
        self._layers = None  # a failed load may have injected layers the cache lacks
        for layer in self._tuner_layers():
            layer.set_adapter([], inference_mode=True)  # no "active adapter deleted" fallback
            layer.delete_adapter(name)
        for component in self.adapter_components:
            module = self.components[component]
            getattr(module, "peft_config", {}).pop(name, None)
            _unwrap_empty_layers(module)
        self._layers = None

    def _tuner_layers(self) -> list:
        if self._layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._layers = [m for c in self.adapter_components
                            for m in self.components[c].modules()
                            if isinstance(m, BaseTunerLayer)]
        return self._layers


def _unwrap_empty_layers(module: torch.nn.Module) -> None:
    """Put back the plain layer wherever an adapter wrapper holds no adapter any more. peft
    leaves wrappers behind on delete, and a LoRA loaded after a LoKr wraps the LoKr wrapper:
    without this, alternating adapter kinds would nest wrappers without bound."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    changed = True
    while changed:
        changed = False
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer) and not _holds(child):
                    setattr(parent, child_name, child.base_layer)
                    changed = True


@contextmanager
def _several_adapters_expected() -> Iterator[None]:
    # peft warns when a model already has adapters; holding several is the point here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        yield


def _holds(layer: Any, name: str | None = None) -> bool:
    """Whether a peft layer holds adapter ``name`` (any adapter when None)."""
    return any((name in getattr(layer, n)) if name else len(getattr(layer, n))
               for n in layer.adapter_layer_names)
