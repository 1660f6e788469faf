"""Text-to-speech without Ray: tiny Bark and VITS built offline, loaded through `TTSPipeline`,
audio contracts, seeds, batching, input errors, health; plus the request schema and the
cheap-import promise the ingress relies on. (Tier b: tiny models, well under a second each.)"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import wave

import numpy as np
import pytest
from pydantic import ValidationError

from genserve.errors import InvalidInput, PipelineBroken
from genserve.pipelines.tts import SpeechParams, SpeechResult, TTSPipeline
from genserve.schemas.common import FieldError
from genserve.schemas.tts import MAX_TEXT_CHARS, SpeechRequest, SpeechResponse
from genserve.tiny import tts as tiny_tts

TEXT = "Hello world, my dog is cute"


@pytest.fixture(scope="module")
def bark(tmp_path_factory) -> TTSPipeline:
    directory = tmp_path_factory.mktemp("tiny-bark")
    tiny_tts.build_bark(directory)
    return TTSPipeline(str(directory))


@pytest.fixture(scope="module")
def vits(tmp_path_factory) -> TTSPipeline:
    directory = tmp_path_factory.mktemp("tiny-vits")
    tiny_tts.build_vits(directory)
    return TTSPipeline(str(directory))


@pytest.fixture(params=["bark", "vits"])
def tts(request) -> TTSPipeline:
    return request.getfixturevalue(request.param)


def preset_of(tts: TTSPipeline) -> str | None:
    return tts.voice_presets[0] if tts.voice_presets else None


# -- loading and audio ---------------------------------------------------------------------------


def test_loads_both_kinds_on_cpu(bark, vits):
    import torch

    assert (bark.kind, vits.kind) == ("bark", "vits")
    assert bark.voice_presets == list(tiny_tts.VOICE_PRESETS) and vits.voice_presets == []
    # Bark's rate is its generation config's; VITS's its model config's.
    assert bark.sample_rate == bark._model.generation_config.sample_rate == 24_000
    assert vits.sample_rate == vits._model.config.sampling_rate == 16_000
    for pipe in (bark, vits):
        assert pipe.placement.device.type == "cpu" and pipe.placement.dtype == torch.float32


def test_synthesize_gives_mono_float_audio(tts):
    result = tts.synthesize(SpeechParams(TEXT, preset_of(tts), seed=3))
    samples = result.samples
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
    assert np.abs(samples).max() > 0  # not silence
    assert result.sample_rate == tts.sample_rate
    assert result.duration_s == pytest.approx(len(samples) / tts.sample_rate)
    assert result.timings["tts"] > 0


def test_wav_parses_back(tts):
    result = tts.synthesize(SpeechParams(TEXT, preset_of(tts)))
    with wave.open(io.BytesIO(result.to_wav())) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, tts.sample_rate)
        assert w.getnframes() == len(result.samples)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.abs(pcm / 32767.0 - result.samples).max() <= 1 / 32767


def test_wav_clips_out_of_range_samples():
    wav = SpeechResult(np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32), 8000).to_wav()
    with wave.open(io.BytesIO(wav)) as w:
        pcm = np.frombuffer(w.readframes(5), dtype="<i2")
    assert pcm.tolist() == [-32767, -32767, 0, 32767, 32767]


# -- seeds and batching --------------------------------------------------------------------------


def test_same_seed_same_audio_other_seed_differs(tts):
    preset = preset_of(tts)
    a = tts.synthesize(SpeechParams(TEXT, preset, seed=7)).samples
    b = tts.synthesize(SpeechParams(TEXT, preset, seed=7)).samples
    c = tts.synthesize(SpeechParams(TEXT, preset, seed=8)).samples
    assert np.array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)


def test_batch_equals_single_calls(tts):
    # Different lengths (so rows are padded) and, for Bark, two presets plus none (three groups).
    presets = [*tts.voice_presets, None] if tts.voice_presets else [None]
    texts = [TEXT, "hi", "a much longer text to say here, twice as long", "ok then"]
    ps = [SpeechParams(t, presets[i % len(presets)], seed=i + 1) for i, t in enumerate(texts)]
    batch = tts.synthesize_batch(ps)
    for p, got in zip(ps, batch):
        alone = tts.synthesize(p).samples
        assert len(got.samples) == len(alone)
        np.testing.assert_allclose(got.samples, alone, atol=1e-5)
    assert len({len(r.samples) for r in batch}) > 1  # padding was really exercised


def test_concurrent_calls_keep_their_seeds(vits):
    # Each request's randomness is thread-local: two threads at once give the sequential audio.
    ps = [SpeechParams(TEXT, seed=11), SpeechParams(TEXT, seed=12)]
    expected = [vits.synthesize(p).samples for p in ps]
    got: dict[int, np.ndarray] = {}

    def run(i):
        for _ in range(3):
            got[i] = vits.synthesize(ps[i]).samples

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_allclose(got[i], expected[i], atol=1e-6)


# -- input errors ------------------------------------------------------------------------------


def test_unknown_preset_names_field_and_lists_valid_ones(bark):
    with pytest.raises(InvalidInput) as exc:
        bark.synthesize(SpeechParams(TEXT, "v2/en_speaker_9"))
    assert exc.value.field == "voice_preset"
    assert "v2/en_speaker_9" in exc.value.message
    assert all(name in exc.value.message for name in bark.voice_presets)


def test_preset_for_model_without_presets(vits):
    with pytest.raises(InvalidInput) as exc:
        vits.synthesize(SpeechParams(TEXT, "v2/en_speaker_0"))
    assert exc.value.field == "voice_preset" and "no voice presets" in exc.value.message


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_refused(tts, text):
    with pytest.raises(InvalidInput) as exc:
        tts.synthesize(SpeechParams(text))
    assert exc.value.field == "text"


def test_text_beyond_barks_window_refused(bark):
    text = "a " * (bark.max_text_tokens + 1)
    with pytest.raises(InvalidInput) as exc:
        bark.synthesize(SpeechParams(text))
    assert exc.value.field == "text" and str(bark.max_text_tokens) in exc.value.message


def test_unpronounceable_text_refused(vits):
    with pytest.raises(InvalidInput) as exc:
        vits.synthesize(SpeechParams("!!! ???"))  # MMS drops punctuation: nothing is left
    assert exc.value.field == "text"


def test_bad_seed_refused(vits):
    with pytest.raises(InvalidInput) as exc:
        vits.synthesize(SpeechParams(TEXT, seed=-1))
    assert exc.value.field == "seed"


# -- health ------------------------------------------------------------------------------------


def test_health_probe_catches_corrupt_weights(bark, vits):
    import torch

    probed = [(bark, bark._model.semantic), (bark, bark._model.coarse_acoustics),
              (bark, bark._model.fine_acoustics), (bark, bark._model.codec_model.decoder),
              (vits, vits._model.decoder)]
    for pipe, module in probed:
        pipe.check_health()
        weight = next(module.parameters())
        saved = weight.detach().clone()
        with torch.no_grad():
            weight.fill_(float("nan"))
        try:
            with pytest.raises(PipelineBroken):
                pipe.check_health()
        finally:
            with torch.no_grad():
                weight.copy_(saved)
        pipe.check_health()


def test_fatal_device_error_marks_pipeline_broken(vits):
    vits.health.broken = "CUDA error: an illegal memory access was encountered"
    try:
        with pytest.raises(PipelineBroken):
            vits.synthesize(SpeechParams(TEXT))
        with pytest.raises(PipelineBroken):
            vits.check_health()
    finally:
        vits.health.broken = None


# -- schema ------------------------------------------------------------------------------------


def field_of(exc: ValidationError) -> str:
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    return cause.field if isinstance(cause, FieldError) else err["loc"][-1]


def test_request_defaults_and_params():
    r = SpeechRequest(text="Hi there", voice_preset="v2/en_speaker_6")
    assert (r.seed, r.response_format) == (0, "wav")
    assert r.to_params() == SpeechParams("Hi there", "v2/en_speaker_6", 0)


@pytest.mark.parametrize("body,field", [
    ({"text": ""}, "text"),
    ({"text": " \t\n "}, "text"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
    ({"text": "hi", "response_format": "mp3"}, "response_format"),
    ({"text": "hi", "voice_preset": "../../etc/passwd"}, "voice_preset"),
    ({"text": "hi", "voice_preset": "x" * 65}, "voice_preset"),
    ({"text": "hi", "seed": -1}, "seed"),
    ({"text": "hi", "seed": 2**32}, "seed"),
    ({"text": "hi", "speed": 2}, "speed"),
])
def test_request_refuses_bad_input_naming_the_field(body, field):
    with pytest.raises(ValidationError) as exc:
        SpeechRequest.model_validate(body)
    assert field_of(exc.value) == field


def test_json_response_carries_the_wav():
    result = SpeechResult(np.linspace(-0.5, 0.5, 1600, dtype=np.float32), 16_000)
    response = SpeechResponse.from_result(result, seed=5)
    prefix = "data:audio/wav;base64,"
    assert response.audio.url.startswith(prefix) and response.audio.content_type == "audio/wav"
    wav = base64.b64decode(response.audio.url[len(prefix):])
    assert wav == result.to_wav() and response.audio.file_size == len(wav)
    assert (response.sample_rate, response.duration_s, response.seed) == (16_000, 0.1, 5)
    assert response.audio.file_name.endswith(".wav")


def test_imports_stay_cheap():
    # The ingress imports these; torch/transformers there would cost seconds and memory.
    code = ("import sys, genserve.pipelines.tts, genserve.schemas.tts; "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
