"""Text-to-speech: Bark (`suno/bark-small` in production) or VITS/MMS (`facebook/mms-tts-eng`),
one class; `config.model_type` says which.

No Ray in here, and no torch or transformers at import time: the HTTP ingress imports
`SpeechParams`/`SpeechResult` cheaply; the heavy imports happen in `TTSPipeline.__init__`.

Seeds. Each request draws its randomness from its own generators, seeded by its `seed`, never
from torch's global RNG: concurrent calls in one replica cannot disturb each other, and a
request's audio is the same alone or in a batch. The models' own random calls
(`torch.multinomial` in Bark's sampling, `torch.randn`/`randn_like` for VITS's noise) are
answered row by row by a thread-local torch function mode (`_per_row_random`), so the
transformers code runs unmodified.

Batching. VITS runs a padded batch in one forward pass; only its vocoder runs per row (it has no
padding mask, see `_decode_rows_separately`). Bark's autoregressive stages (semantic, coarse)
run batched, since they are where the time goes; its non-causal fine stage and codec would let
a short row see its batch-mates' padding, so they run per row at the row's own length. Bark
takes one voice preset per batch, so `synthesize_batch` groups requests by preset.
"""

from __future__ import annotations

import io
import logging
import math
import time
import wave
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from genserve.errors import InvalidInput, PipelineBroken, Unavailable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
KINDS = ("bark", "vits")
# Separate random streams per stage, so a row's draws in one stage never depend on how many
# draws the batch made in an earlier one (a batch keeps sampling rows that already finished).
SEMANTIC, COARSE, FINE, VITS_NOISE = range(4)


@dataclass
class SpeechParams:
    """One synthesis. ``voice_preset`` names a Bark speaker prompt (`TTSPipeline.voice_presets`),
    or a speaker of a multi-speaker VITS; None lets Bark pick a voice at random."""

    text: str
    voice_preset: str | None = None
    seed: int = 0


@dataclass
class SpeechResult:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def to_wav(self) -> bytes:
        """16-bit PCM mono RIFF WAV, what every player and browser reads.

        >>> SpeechResult(np.zeros(800, np.float32), 16_000).to_wav()[:4]
        b'RIFF'
        """
        pcm = np.rint(np.clip(self.samples, -1.0, 1.0) * 32767.0).astype("<i2")
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(pcm.tobytes())
        return buffer.getvalue()


class TTSPipeline:
    """Loads a Bark or VITS model once; `synthesize` speaks one text.

    >>> tts = TTSPipeline("suno/bark-small")  # doctest: +SKIP
    >>> p = SpeechParams("Hello, my dog is cute.", voice_preset="v2/en_speaker_6", seed=3)
    >>> speech = tts.synthesize(p)  # doctest: +SKIP
    >>> speech.sample_rate, open("hello.wav", "wb").write(speech.to_wav())  # doctest: +SKIP
    (24000, ...)
    """

    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto"):
        import torch
        from transformers import AutoConfig

        from genserve.pipelines.loading import HealthState, Placement

        self.model_id = model_id
        started = time.perf_counter()
        kind = AutoConfig.from_pretrained(model_id, revision=revision).model_type
        if kind not in KINDS:
            raise ValueError(f"`model_id` {model_id!r} is a {kind!r} model; TTSPipeline "
                             f"serves {list(KINDS)}")
        self.kind: str = kind
        if kind == "vits" and dtype == "auto":
            # VITS is small (~36M parameters) and its flows exponentiate log-scales, which
            # overflow easily in fp16: fp32 costs little and is safe.
            dtype = "float32"
        self.placement = Placement.resolve(device, dtype)
        # Not `placement.from_pretrained_kwargs()`: these repos ship no fp16 variant; fp32
        # weights are cast to the dtype while loading.
        kwargs: dict[str, Any] = {"dtype": self.placement.dtype, "use_safetensors": True}
        if revision:
            kwargs["revision"] = revision
        try:
            if kind == "bark":
                self._load_bark(model_id, revision, kwargs)
            else:
                self._load_vits(model_id, revision, kwargs)
        except torch.OutOfMemoryError as exc:
            raise Unavailable(f"out of GPU memory loading {model_id}") from exc
        self.health = HealthState()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) on %s/%s in %.1fs", model_id, kind, self.placement.device,
                 self.placement.dtype, self.load_seconds)

    def _load_bark(self, model_id: str, revision: str | None, kwargs: dict[str, Any]) -> None:
        from transformers import BarkModel, BarkProcessor
        from transformers.models.bark.generation_configuration_bark import (
            BarkCoarseGenerationConfig,
            BarkFineGenerationConfig,
            BarkSemanticGenerationConfig,
        )

        self._model = BarkModel.from_pretrained(model_id, **kwargs).to(self.placement.device)
        self._processor = BarkProcessor.from_pretrained(model_id, revision=revision)
        self._tokenizer = self._processor.tokenizer
        gen = self._model.generation_config
        # What `BarkModel.generate` builds on every call; built once here. Sampling is on, as
        # on the model card (`do_sample=True`): greedy Bark repeats itself.
        self._semantic = BarkSemanticGenerationConfig(**{**gen.semantic_config, "do_sample": True})
        self._coarse = BarkCoarseGenerationConfig(
            **{**gen.coarse_acoustics_config, "do_sample": True})
        self._fine = BarkFineGenerationConfig(**gen.fine_acoustics_config)
        self._codebook_size = gen.codebook_size
        self.sample_rate: int = int(gen.sample_rate)
        self.max_text_tokens: int | None = self._semantic.max_input_semantic_length
        self.voice_presets: list[str] = sorted(self._processor.available_voice_presets)
        self._voices: dict[str, dict[str, np.ndarray]] = {}  # preset → prompts, loaded on use

    def _load_vits(self, model_id: str, revision: str | None, kwargs: dict[str, Any]) -> None:
        from transformers import VitsModel, VitsTokenizer

        self._model = VitsModel.from_pretrained(model_id, **kwargs).to(self.placement.device)
        self._model.decoder = _decode_rows_separately(self._model.decoder)
        self._tokenizer = VitsTokenizer.from_pretrained(model_id, revision=revision)
        self.sample_rate = int(self._model.config.sampling_rate)
        self.max_text_tokens = None  # relative attention: no positional limit
        speakers = self._model.config.num_speakers
        self.voice_presets = [f"speaker_{i}" for i in range(speakers)] if speakers > 1 else []

    # -- checks ----------------------------------------------------------------------------------

    def check_health(self) -> None:
        """Run every sub-model on a few zero tokens (Bark: semantic, coarse, fine, codec; VITS
        end to end on one character) and require finite output: catches NaN weights and a dead
        device in milliseconds."""
        import torch

        self.health.raise_if_broken()
        device, model = self.placement.device, self._model
        with torch.inference_mode():
            if self.kind == "bark":
                tokens = torch.zeros(1, 4, dtype=torch.long, device=device)
                codes = torch.zeros(1, self._fine.n_fine_codebooks, 4, dtype=torch.long,
                                    device=device)
                outputs = [model.semantic(input_ids=tokens).logits,
                           model.coarse_acoustics(input_ids=tokens).logits,
                           model.fine_acoustics(self._coarse.n_coarse_codebooks,
                                                codes.transpose(1, 2)).logits,
                           model.codec_decode(codes)]
            else:
                ids = self._tokenizer("a", return_tensors="pt").to(device)
                with _per_row_random([0], VITS_NOISE):
                    outputs = [model(**ids).waveform]
            bad = [i for i, out in enumerate(outputs)
                   if out.numel() == 0 or not bool(torch.isfinite(out).all())]  # syncs CUDA
        if bad:
            raise PipelineBroken(f"{self.kind} health probe {bad} produced non-finite or empty "
                                 "output; weights are corrupt or the device is dead")

    def check_inputs(self, p: SpeechParams) -> None:
        """Everything that can be refused before the model runs, with messages naming the
        argument. Call it per request before batching, so one bad request cannot fail a batch."""
        if not p.text or not p.text.strip():
            raise InvalidInput("`text` must contain something to say but is empty or only "
                               "whitespace.", "text")
        if not 0 <= p.seed <= MAX_SEED:
            raise InvalidInput(f"`seed` must be in [0, {MAX_SEED}] but is {p.seed}.", "seed")
        if p.voice_preset is not None and p.voice_preset not in self.voice_presets:
            if not self.voice_presets:
                raise InvalidInput(f"`voice_preset` {p.voice_preset!r} was given but "
                                   f"{self.model_id} has no voice presets; leave it out.",
                                   "voice_preset")
            raise InvalidInput(f"`voice_preset` {p.voice_preset!r} is unknown; valid presets: "
                               f"{', '.join(self.voice_presets)}.", "voice_preset")
        if self.kind == "vits":
            # MMS silently drops characters outside its alphabet (punctuation, other scripts).
            spoken = self._tokenizer.prepare_for_tokenization(p.text)[0]
            if not spoken.strip():
                alphabet = "".join(sorted(c for c in self._tokenizer.encoder if len(c) == 1))
                raise InvalidInput(f"`text` has no characters {self.model_id} can pronounce "
                                   f"(its alphabet: {alphabet!r}).", "text")
            return
        ids = self._tokenizer(p.text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_text_tokens:
            raise InvalidInput(f"`text` is {len(ids)} tokens long but {self.model_id} reads at "
                               f"most {self.max_text_tokens}; split it into shorter requests.",
                               "text")

    # -- synthesis -------------------------------------------------------------------------------

    def synthesize(self, p: SpeechParams) -> SpeechResult:
        """Speak one text; the same text, preset and seed give the same samples."""
        return self.synthesize_batch([p])[0]

    def synthesize_batch(self, ps: list[SpeechParams]) -> list[SpeechResult]:
        """Speak several texts, batching requests that share a voice preset. Each result is
        the one `synthesize` gives for the same params (up to float rounding in batched
        matrix products)."""
        import torch

        self.health.raise_if_broken()
        for p in ps:
            self.check_inputs(p)
        groups: dict[str | None, list[int]] = {}
        for i, p in enumerate(ps):
            groups.setdefault(p.voice_preset, []).append(i)
        results: list[SpeechResult | None] = [None] * len(ps)
        with self.health.guard(f"out of GPU memory for a batch of {len(ps)} texts; retry later "
                                "or send shorter texts"):
            for preset, rows in groups.items():
                started = time.perf_counter()
                batch = [ps[i] for i in rows]
                with torch.inference_mode():
                    audio = (self._bark(batch, preset) if self.kind == "bark"
                             else self._vits(batch, preset))
                seconds = time.perf_counter() - started
                for i, samples in zip(rows, audio):
                    results[i] = SpeechResult(samples, self.sample_rate, {"tts": seconds})
        return results

    def _bark(self, batch: list[SpeechParams], preset: str | None) -> list[np.ndarray]:
        """`BarkModel.generate`, split so each stage batches only where that is exact."""
        device, model = self.placement.device, self._model
        inputs = self._processor([p.text for p in batch], voice_preset=self._voice(preset),
                                 max_length=self.max_text_tokens, return_tensors="pt")
        history = inputs.pop("history_prompt", None)
        if history is not None:
            history = {k: v.to(device) for k, v in history.items()}
        seeds = [p.seed for p in batch]
        stage = dict(history_prompt=history, semantic_generation_config=self._semantic)
        with _per_row_random(seeds, SEMANTIC):
            semantic = model.semantic.generate(
                inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device),
                **stage)
        with _per_row_random(seeds, COARSE):
            coarse, lengths = model.coarse_acoustics.generate(
                semantic, coarse_generation_config=self._coarse, codebook_size=self._codebook_size,
                return_output_lengths=True, **stage)
        audio = []
        for row, (seed, length) in enumerate(zip(seeds, lengths.tolist())):
            if length == 0:  # EOS came first: nothing to decode
                audio.append(np.zeros(0, np.float32))
                continue
            with _per_row_random([seed], FINE):
                fine = model.fine_acoustics.generate(
                    coarse[row:row + 1, :length], coarse_generation_config=self._coarse,
                    fine_generation_config=self._fine, codebook_size=self._codebook_size, **stage)
            audio.append(_to_samples(model.codec_decode(fine)[0]))
        return audio

    def _voice(self, preset: str | None) -> dict[str, np.ndarray] | None:
        """The preset's prompt arrays, loaded through the processor once and then reused (the
        processor would fetch three files on every call otherwise)."""
        if preset is None:
            return None
        if preset not in self._voices:
            loaded = self._processor("", voice_preset=preset, return_tensors="np")
            self._voices[preset] = dict(loaded["history_prompt"])
        return self._voices[preset]

    def _vits(self, batch: list[SpeechParams], preset: str | None) -> list[np.ndarray]:
        inputs = self._tokenizer([p.text for p in batch], padding=True, return_tensors="pt")
        speaker = None if preset is None else int(preset.removeprefix("speaker_"))
        with _per_row_random([p.seed for p in batch], VITS_NOISE):
            out = self._model(**inputs.to(self.placement.device), speaker_id=speaker)
        lengths = out.sequence_lengths.tolist()
        return [_to_samples(audio[:n]) for audio, n in zip(out.waveform, lengths)]


def _to_samples(audio: "torch.Tensor") -> np.ndarray:
    # Encodec's decoder has no output squashing; clip so the result is valid PCM.
    return np.clip(audio.float().cpu().numpy().reshape(-1), -1.0, 1.0).astype(np.float32)


def _row_seed(seed: int, stream: int, call: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, stream, call])


def _per_row_random(seeds: list[int], stream: int):
    """A context in which the model's random calls draw row ``b`` from ``seeds[b]`` alone.

    `torch.multinomial(probs)` samples each row of ``probs`` on the CPU with that row's own
    generator (one draw per row per step, so a row's sequence does not depend on its
    batch-mates). `torch.randn`/`randn_like` noise of shape ``(batch, ..., time)`` is drawn per
    row time-major from numpy: the first ``t`` time steps are the same whether the row is
    padded to 50 steps or to 500, which is what keeps a padded VITS batch equal to single
    calls. Any other shape (none in the models served) is drawn as one block, still seeded.
    Torch function modes are thread-local, so concurrent requests never see each other's.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    generators = [torch.Generator().manual_seed(int(_row_seed(s, stream).generate_state(1)[0]))
                  for s in seeds]

    class PerRowRandom(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (torch.multinomial, torch.Tensor.multinomial):
                return self.multinomial(args[0], *args[1:], **kwargs)
            if func is torch.randn:
                size = kwargs.get("size") or (args[0] if len(args) == 1
                                              and not isinstance(args[0], int) else args)
                return self.normal(tuple(size), kwargs.get("dtype") or torch.float32,
                                   kwargs.get("device") or "cpu")
            if func is torch.randn_like:
                ref = args[0]
                return self.normal(tuple(ref.shape), kwargs.get("dtype") or ref.dtype,
                                   kwargs.get("device") or ref.device)
            return func(*args, **kwargs)

        def multinomial(self, probs, *args, **kwargs):
            cpu = probs.float().cpu()
            if probs.dim() == 2 and len(probs) == len(generators) > 1:
                rows = [torch.multinomial(cpu[b:b + 1], *args, generator=g, **kwargs)
                        for b, g in enumerate(generators)]
                return torch.cat(rows).to(probs.device)
            return torch.multinomial(cpu, *args, generator=generators[0], **kwargs).to(probs.device)

        def normal(self, shape, dtype, device):
            self.calls += 1
            if len(shape) >= 2 and shape[0] == len(seeds):
                per_row = math.prod(shape[1:-1])
                rows = [np.random.default_rng(_row_seed(s, stream, self.calls))
                        .standard_normal((shape[-1], per_row), dtype=np.float32).T
                        for s in seeds]
                noise = np.stack(rows).reshape(shape)
            else:
                noise = (np.random.default_rng(_row_seed(seeds[0], stream, self.calls))
                         .standard_normal(shape, dtype=np.float32))
            return torch.from_numpy(noise).to(device=device, dtype=dtype)

    return PerRowRandom()


def _decode_rows_separately(hifigan):
    """Wrap VITS's HiFi-GAN vocoder so each batch row is decoded at its own length.

    The vocoder has no padding mask: in a padded batch, the frames after a short row's end
    pass through biases and activations and bleed into its last few hundred samples. Decoding
    row by row keeps a batched row identical to the same text spoken alone.
    """
    import torch

    class RowwiseDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hifigan = hifigan

        def forward(self, spectrogram, global_conditioning=None):
            if spectrogram.shape[0] == 1:
                return self.hifigan(spectrogram, global_conditioning)
            # VitsModel zeroes every frame past a row's predicted length, so the last frame
            # with any non-zero bin is the row's end.
            frames = spectrogram.shape[-1]
            filled = spectrogram.ne(0).any(dim=1).flip(-1).int()
            lengths = (frames - filled.argmax(dim=-1)).tolist()
            rows = []
            for b, n in enumerate(lengths):
                cond = None if global_conditioning is None else global_conditioning[b:b + 1]
                rows.append(self.hifigan(spectrogram[b:b + 1, :, :n], cond))
            total = frames * (rows[0].shape[-1] // lengths[0])  # frames × hop
            return torch.cat([torch.nn.functional.pad(r, (0, total - r.shape[-1])) for r in rows])

    return RowwiseDecoder()
