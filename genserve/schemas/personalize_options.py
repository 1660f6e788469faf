"""Pieces of the personalization job's input that are not fal's fields: where files may come
from (`check_location`), how Ray Train runs the job (`RayOptions`) and how its data is
prepared (`PreprocessingOptions`). `genserve.schemas.personalize` re-exports them."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, StringConstraints, field_validator, model_validator

from genserve.fetch import MAX_BYTES
from genserve.schemas.common import FieldError, StrictModel

MAX_PROMPT_CHARS = 1000       # CLIP reads 77 tokens; more is only cost
MAX_URL_CHARS = 2048
MAX_PATH_CHARS = 4096
MAX_DATA_URI_CHARS = MAX_BYTES * 4 // 3 + 256  # base64 of the fetcher's byte cap + header
MAX_WORKERS = 64
# Hugging Face repo ids: "stabilityai/stable-diffusion-xl-base-1.0".
HF_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
RESOURCE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,63}$"

ResourceName = Annotated[str, StringConstraints(pattern=RESOURCE_PATTERN)]
ResourceAmount = Annotated[float, Field(ge=0, le=1024, allow_inf_nan=False)]

Kind = Literal["http", "data", "s3", "path", "repo"]


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def check_location(value: str, kinds: frozenset[Kind] | set[Kind]) -> str:
    """Return ``value`` if it has one of the accepted shapes, else raise ``ValueError``.

    >>> check_location("s3://bucket/photos.zip", {"s3"})
    's3://bucket/photos.zip'
    """
    scheme = urlsplit(value).scheme.lower() if ":" in value else ""
    if scheme in ("http", "https") and "http" in kinds:
        parts = urlsplit(value)
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"URL is {len(value)} characters; the limit is {MAX_URL_CHARS}")
        if not parts.hostname:
            raise ValueError(f"URL {_shown(value)} has no host")
        if parts.username or parts.password:
            raise ValueError(f"URL {_shown(value)} must not carry credentials")
        return value
    if scheme == "data" and "data" in kinds:
        if len(value) > MAX_DATA_URI_CHARS:
            raise ValueError(f"data: URI is {len(value)} characters; the limit is "
                             f"{MAX_DATA_URI_CHARS} (about {MAX_BYTES} bytes decoded); host "
                             "larger files and pass their URL")
        if "," not in value:
            raise ValueError(f"data: URI {_shown(value)} has no ',' before its payload")
        return value
    if scheme == "s3" and "s3" in kinds:
        parts = urlsplit(value)
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"URI is {len(value)} characters; the limit is {MAX_URL_CHARS}")
        if not parts.netloc or parts.username or parts.password:
            raise ValueError(f"s3 URI {_shown(value)} needs a bucket: s3://bucket/key")
        return value
    if value.startswith("/") and "path" in kinds:
        if len(value) > MAX_PATH_CHARS or "\x00" in value:
            raise ValueError(f"local path {_shown(value)} is too long or holds a NUL byte")
        if ".." in PurePosixPath(value).parts:
            raise ValueError(f"local path {_shown(value)} must not contain '..'")
        return value
    if "repo" in kinds and not scheme and HF_REPO_ID.match(value) and ".." not in value:
        return value
    names = {"http": "an http(s) URL", "data": "a data: URI", "s3": "an s3://bucket/key URI",
             "path": "an absolute local path", "repo": "a Hugging Face repo id (owner/name)"}
    accepted = [names[k] for k in ("repo", "http", "data", "s3", "path") if k in kinds]
    raise ValueError(f"{_shown(value)} is not a usable location; give "
                     f"{', '.join(accepted[:-1])} or {accepted[-1]}")


_FILE_KINDS: frozenset[Kind] = frozenset({"http", "data", "s3", "path"})
_MODEL_KINDS: frozenset[Kind] = frozenset({"repo", "http", "s3", "path"})
_STORAGE_KINDS: frozenset[Kind] = frozenset({"s3", "path"})


class RayOptions(StrictModel):
    """How Ray Train runs the job: `ScalingConfig`, `RunConfig` storage, `FailureConfig` and
    the checkpoint cadence. A genserve extension; fal has no equivalent."""

    num_workers: int = Field(1, ge=1, le=MAX_WORKERS, description="Training workers (data-"
                             "parallel replicas, one process each).", examples=[1])
    use_gpu: bool = Field(True, description="Give each worker a GPU. CPU-only training is for "
                          "tests with tiny models.", examples=[True])
    resources_per_worker: dict[ResourceName, ResourceAmount] | None = Field(
        None, max_length=16,
        description="Ray resources per worker, e.g. `{\"CPU\": 4, \"GPU\": 1}`. `null` keeps Ray "
        "Train's default: `{\"GPU\": 1}` with `use_gpu` (no CPU reserved, so CPUs are not "
        "contended), `{\"CPU\": 1}` without. With `use_gpu` a missing `GPU` key means 1.",
        examples=[{"CPU": 4, "GPU": 1}])
    storage_path: str | None = Field(
        None, max_length=MAX_PATH_CHARS,
        description="Where checkpoints and results go: an absolute local directory (shared by "
        "all nodes) or an `s3://bucket/prefix` URI. `null` uses the server's default.",
        examples=["s3://genserve-artifacts/personalize"])
    max_failures: int = Field(2, ge=0, le=10, description="Worker failures to recover from "
                              "(restarting from the latest checkpoint) before the job fails.",
                              examples=[2])
    checkpoint_every_n_steps: int = Field(
        100, ge=1, le=10_000, description="Save a checkpoint every this many optimizer steps "
        "(and always at the end).", examples=[100])
    report_every_n_steps: int = Field(
        10, ge=1, le=10_000, description="Report loss/lr/step to Ray Train every this many "
        "steps (and with every checkpoint). Each report is a round trip through Ray Train's "
        "controller; reporting every fast step would pace training to its poll interval.",
        examples=[10])

    @field_validator("storage_path")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        return None if value is None else check_location(value, _STORAGE_KINDS)

    @model_validator(mode="after")
    def _check_gpu(self) -> RayOptions:
        # Ray's ScalingConfig refuses these two combinations too; say so before the job starts.
        gpus = (self.resources_per_worker or {}).get("GPU")
        if not self.use_gpu and gpus:
            raise FieldError("resources_per_worker", f"`resources_per_worker` asks for GPU={gpus} "
                             "but `use_gpu` is false; set use_gpu=true or drop the GPU entry")
        if self.use_gpu and gpus == 0:
            raise FieldError("resources_per_worker", "`resources_per_worker` sets GPU=0 but "
                             "`use_gpu` is true; set use_gpu=false or request a positive GPU")
        return self


class PreprocessingOptions(StrictModel):
    """Models and sizes of the data preparation (captions, masks, class images). A genserve
    extension: fal picks these itself."""

    captioning_model: str = Field(
        "Salesforce/blip-image-captioning-large", min_length=1, max_length=MAX_URL_CHARS,
        description="Image-to-text model captioning photos that have no caption (hub id or "
        "absolute path).", examples=["Salesforce/blip-image-captioning-large"])
    segmentation_model: str = Field(
        "CIDAS/clipseg-rd64-refined", min_length=1, max_length=MAX_URL_CHARS,
        description="CLIPSeg model for the loss masks (hub id or absolute path).",
        examples=["CIDAS/clipseg-rd64-refined"])
    class_prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS, description="Prompt of the prior-"
        "preservation images; `null` is \"a photo of a <photo_class>\".",
        examples=["a photo of a man"])
    num_class_images: int | None = Field(
        None, ge=1, le=1000, description="Class images to generate; `null` is one per "
        "training photo.", examples=[None])
    class_image_steps: int = Field(25, ge=1, le=100, description="Denoising steps per class "
                                   "image.", examples=[25])

    @field_validator("captioning_model", "segmentation_model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        return check_location(value, frozenset({"repo", "path"}))
