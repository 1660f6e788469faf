"""The text-to-speech request and its JSON response.

`POST` a `SpeechRequest`; by default the answer is the WAV file itself (`audio/wav`), which any
player or `<audio>` tag takes as is. With ``response_format="json"`` it is a `SpeechResponse`
whose `audio` is a File object (a `data:` URI with name, type and size), for clients that want
the metadata alongside.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from genserve.pipelines.tts import MAX_SEED, SpeechParams, SpeechResult
from genserve.schemas.common import File, StrictModel

# About a minute of speech for VITS. Bark reads at most 256 tokens; the pipeline refuses longer
# texts with a message naming `text`.
MAX_TEXT_CHARS = 1000
MAX_PRESET_CHARS = 64
# Preset names as the models spell them ("v2/en_speaker_6", "speaker_3"): no dots, so a name
# can never climb out of the presets folder, and no spaces or quotes to echo back.
PRESET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_/-]*$"
WAV_TYPE = "audio/wav"


class SpeechRequest(StrictModel):
    """Text to speak, with an optional voice and a seed for reproducible audio."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                      description="What to say. Bark also reads cues like `[laughs]` or `♪`.",
                      examples=["Hello, my dog is cute."])
    voice_preset: str | None = Field(
        None, min_length=1, max_length=MAX_PRESET_CHARS, pattern=PRESET_PATTERN,
        description="Speaker to use: a Bark voice preset such as `v2/en_speaker_6`, or "
        "`speaker_<n>` for a multi-speaker VITS model. Unknown names are refused with the "
        "list of valid ones; `null` lets Bark pick a random voice.",
        examples=["v2/en_speaker_6"])
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="Random seed: the same text, voice and seed give the same "
                      "audio, alone or batched with other requests.", examples=[0])
    response_format: Literal["wav", "json"] = Field(
        "wav", description="`wav`: the response body is the WAV file. `json`: a "
        "`SpeechResponse` with the WAV as a `data:` URI.", examples=["wav"])

    @field_validator("text")
    @classmethod
    def _something_to_say(cls, text: str) -> str:
        if not text.strip():
            raise ValueError(f"`text` must contain something to say but is only whitespace "
                             f"({len(text)} characters)")
        return text

    def to_params(self) -> SpeechParams:
        return SpeechParams(text=self.text, voice_preset=self.voice_preset, seed=self.seed)


class AudioFile(File):
    """A `File` whose type defaults to WAV."""

    content_type: str = Field(WAV_TYPE, description="MIME type of the audio.",
                              examples=[WAV_TYPE])


class SpeechResponse(StrictModel):
    """`response_format="json"`: the audio and what it is."""

    audio: AudioFile = Field(description="The WAV file (16-bit PCM, mono).")
    sample_rate: int = Field(gt=0, description="Samples per second.", examples=[24000])
    duration_s: float = Field(ge=0.0, description="Length of the audio in seconds.",
                              examples=[2.0])
    seed: int = Field(ge=0, le=MAX_SEED, description="The seed used.", examples=[0])

    @classmethod
    def from_result(cls, result: SpeechResult, seed: int,
                    file_name: str = "speech.wav") -> "SpeechResponse":
        return cls(audio=AudioFile.inline(result.to_wav(), WAV_TYPE, file_name),
                   sample_rate=result.sample_rate, duration_s=result.duration_s, seed=seed)
