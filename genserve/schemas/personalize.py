"""The personalization training job: fal's ``fal-ai/personalization`` input, field for field,
plus the Ray Train options (``ray``), and its output.

SDXL DreamBooth-LoRA with pivotal tuning (diffusers' ``train_dreambooth_lora_sdxl_advanced``):
new tokens (``token_abstraction`` → ``<s0><s1>``) are learned by textual inversion while a LoRA
trains on the UNet; face-masked loss (CLIPSeg), prior preservation with class images of
``photo_class`` and face-aware cropping tune it for photos of one person.

The same model validates a `POST` body and a YAML job file (`PersonalizeRequest.from_yaml`,
read by ``python -m training.personalize --config job.yaml``); ``to_config()`` is the plain
JSON-able dict the job receives.

Where fal's page contradicts itself, the schema's *default value* wins (it is what fal's API
applies when the field is left out) and the prose is treated as stale:

=============================  ==========================  ===============================  ======
field                          fal's prose says            fal's default value / marker     chosen
=============================  ==========================  ===============================  ======
optimizer                      "Default is prodigy"        "adamw"                          adamw
batch_size                     "Default is 1"              6                                6
class_image_mask_style         "Default is 'invert'"       "normal"                         normal
instance_prompt                "Default to None and per    "A photograph of a TOK"          the
                               image captions"                                              prompt
variant                        "Default is fp16"           none given (null)                None
photo_class                    "Default is Man"            marked *required*                required
debug_dataset                  "Directory to save debug    boolean, false                   bool
                               images"
=============================  ==========================  ===============================  ======

fal's page lists no default line for falsy values (``False``, ``0``, ``0.0``, ``None``): those
are taken from the prose (e.g. ``caption_dropout`` 0.0, ``min_timestep_trained`` 0).

Rules this schema adds (cross-field checks raise `FieldError` naming the field):

- ``train_text_encoder`` and ``train_text_encoder_ti`` are mutually exclusive, as in diffusers'
  advanced SDXL script (LoRA on the text encoders *or* textual inversion); fal's prose agrees
  ("False since textual inversion is used by default"). Turning on ``train_text_encoder``
  therefore needs ``train_text_encoder_ti=false``.
- ``use_dora`` (default true) only applies to ``lora_type="lora"``: DoRA is a LoRA variant in
  peft; LoKr/LoHa need ``use_dora=false``.
- ``min_timestep_trained < max_timestep_trained`` (timesteps are sampled in [min, max), SDXL
  has 1000); ``random_rotation_start <= random_rotation_end``.
- With textual inversion on and ``instance_prompt`` as the only caption source (no captions
  file, ``skip_caption_generation=true``) the prompt must contain ``token_abstraction``, or
  the new tokens would never be seen.
- Allowed but without effect (documented on the fields, not refused): ``prodigy_*`` with
  ``optimizer="adamw"``; ``lr_num_cycles``/``lr_power``/``lr_warmup_steps`` with schedulers that
  do not use them; ``rank``/``lora_type``/``use_dora`` with ``use_lora=false``;
  ``train_text_encoder_ti_frac``/``disable_unet_during_ti_training`` without textual inversion.

Locations (``images_data_url``, ``captions_file_url``, ``model_url``, ``vae_url``,
``ray.storage_path``) are checked for shape only; nothing is fetched here. Accepted: http(s)
URLs (no credentials in them), ``data:`` URIs (archives and captions only, at most
`genserve.fetch.MAX_BYTES` decoded), ``s3://bucket/key`` and *absolute* local paths (no ``..``);
``model_url``/``vae_url`` also take a Hugging Face repo id (``owner/name``). The job fetches
http(s) through `genserve.fetch.Fetcher` (SSRF checks). Local paths are meant for operator-run
YAML jobs: an HTTP ingress must refuse them from users, or a request could name any file the
server can read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StringConstraints, field_validator, model_validator

from genserve.errors import InvalidInput
from genserve.schemas.common import FieldError, File, StrictModel
from genserve.schemas.personalize_options import (  # noqa: F401 (re-exported)
    _FILE_KINDS,
    _MODEL_KINDS,
    HF_REPO_ID,
    MAX_DATA_URI_CHARS,
    MAX_PATH_CHARS,
    MAX_PROMPT_CHARS,
    MAX_URL_CHARS,
    MAX_WORKERS,
    PreprocessingOptions,
    RayOptions,
    _shown,
    check_location,
)

PhotoClass = Literal["Man", "Woman", "Person", "Boy", "Girl", "Baby"]
Optimizer = Literal["adamw", "prodigy"]
# diffusers.optimization.SchedulerType names that make sense for a fixed-length run.
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                      "constant_with_warmup"]
MaskStyle = Literal["none", "normal", "invert"]
LoraType = Literal["lora", "lokr", "loha"]
# The seed gives no values; these are the archive formats `shutil.make_archive` writes.
ArchiveFormat = Literal["zip", "tar", "gztar", "bztar", "xztar"]

MIN_SIDE, MAX_SIDE = 64, 2048
MAX_RANK = 256
MAX_TRAIN_STEPS = 50_000      # 1000 is the default; 50× that is hours on an H100 at 768²
MAX_EPOCHS = 10_000
MAX_LR = 1.0                  # Prodigy's recommended lr is 1.0; AdamW LoRA runs use ~1e-4
NUM_TIMESTEPS = 1000          # SDXL's DDPM schedule: timesteps 0..999, sampled in [min, max)
MAX_NEW_TOKENS = 8            # per abstraction; each is one learned embedding per encoder
MAX_MODULES = 32
MAX_SEED = 2**32 - 1

# "TOK", "sks", "ohwx_2": letters, digits, underscore; it goes into captions and the tokenizer,
# so nothing that could split into several words or smuggle markup.
TOKEN_PATTERN = r"^[A-Za-z0-9_]{1,32}$"
# Module names as peft's `target_modules` takes them: "to_k", "to_out.0", "ff.net.0.proj".
MODULE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.]{0,99}$"
# Revisions: branch, tag or commit ("main", "refs/pr/1", a 40-hex sha).
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$"
VARIANT_PATTERN = r"^[A-Za-z0-9_]{1,16}$"

DEFAULT_UNET_MODULES = ("to_k", "to_q", "to_v", "to_out.0", "conv1", "conv2")
DEFAULT_TEXT_ENCODER_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

ModuleName = Annotated[str, StringConstraints(pattern=MODULE_PATTERN)]


class PersonalizeRequest(StrictModel):
    """fal's personalization trainer input (plus ``ray``): learn a person from ~10+ photos.

    >>> PersonalizeRequest(images_data_url="https://example.com/me.zip", photo_class="Man").rank
    32
    """

    # -- data ------------------------------------------------------------------------------
    images_data_url: str = Field(
        min_length=1, max_length=MAX_DATA_URI_CHARS,
        description="Zip archive of the training photos (10 or more recommended): http(s) URL, "
        "data: URI, s3:// URI or absolute path.", examples=["https://example.com/photos.zip"])
    data_archive_format: ArchiveFormat | None = Field(
        None, description="Archive format for the training artifacts; `null` lets the job "
        "choose (zip).", examples=["zip"])
    captions_file_url: str | None = Field(
        None, min_length=1, max_length=MAX_DATA_URI_CHARS,
        description="JSONL captions, one object per image: `file_name` (as in the archive) and "
        "the caption column, using `TOK`-style tokens. Without it captions are generated "
        "(LLaVA) with the token prepended.", examples=["https://example.com/captions.jsonl"])
    caption_column: str = Field("text", min_length=1, max_length=64,
                                description="Key of the caption in each captions-file line.",
                                examples=["text"])
    instance_prompt: str = Field(
        "A photograph of a TOK", min_length=1, max_length=MAX_PROMPT_CHARS,
        description="Prompt for the training photos, used where no per-image caption exists.",
        examples=["A photograph of a TOK"])
    skip_caption_generation: bool = Field(
        False, description="Do not generate captions when no captions file is given (then "
        "`instance_prompt` captions every image).", examples=[False])
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                                   description="Fraction of captions replaced by empty text.",
                                   examples=[0.0])
    photo_class: PhotoClass = Field(
        description="Who the photos show; names the class for prior-preservation images and "
        "masks. Required (fal marks it so).", examples=["Man"])

    # -- base model ------------------------------------------------------------------------
    model_url: str = Field(
        "stabilityai/stable-diffusion-xl-base-1.0", min_length=1, max_length=MAX_URL_CHARS,
        description="Base SDXL model: Hugging Face repo id, URL, s3:// URI or absolute path.",
        examples=["stabilityai/stable-diffusion-xl-base-1.0"])
    vae_url: str = Field(
        "madebyollin/sdxl-vae-fp16-fix", min_length=1, max_length=MAX_URL_CHARS,
        description="VAE to encode images with; the default stays finite in fp16.",
        examples=["madebyollin/sdxl-vae-fp16-fix"])
    revision: str | None = Field(None, pattern=REVISION_PATTERN,
                                 description="Hub revision (branch, tag or commit) of "
                                 "`model_url`; `null` is the default branch.", examples=["main"])
    variant: str | None = Field(None, pattern=VARIANT_PATTERN,
                                description="Weights variant of `model_url` to load, e.g. "
                                "`fp16`; `null` loads the full-precision files.",
                                examples=["fp16"])

    # -- tokens (pivotal tuning) -------------------------------------------------------------
    token_abstraction: str = Field(
        "TOK", pattern=TOKEN_PATTERN, description="Placeholder for the person in captions "
        "(letters, digits, underscore; 1–32 characters); replaced by the learned tokens.",
        examples=["TOK"])
    num_new_tokens_per_abstraction: int = Field(
        2, ge=1, le=MAX_NEW_TOKENS, description="Learned tokens inserted per placeholder "
        "(`TOK` → `<s0><s1>` for 2).", examples=[2])
    train_text_encoder_ti: bool = Field(
        True, description="Learn the new token embeddings (textual inversion). Excludes "
        "`train_text_encoder`.", examples=[True])
    train_text_encoder_ti_frac: float = Field(
        0.5, ge=0.0, le=1.0, allow_inf_nan=False, description="Fraction of training spent on "
        "textual inversion (then the embeddings freeze).", examples=[0.5])
    disable_unet_during_ti_training: bool = Field(
        False, description="Freeze the UNet while textual inversion runs.", examples=[False])
    train_text_encoder: bool = Field(
        False, description="Train LoRA on the text encoders. Excludes "
        "`train_text_encoder_ti` (set it false).", examples=[False])
    train_text_encoder_frac: float = Field(
        1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Fraction of training during "
        "which the text encoders are tuned.", examples=[1.0])

    # -- adapter ---------------------------------------------------------------------------
    use_lora: bool = Field(True, description="Train an adapter; false fine-tunes the UNet "
                           "weights themselves.", examples=[True])
    lora_type: LoraType = Field("lora", description="Adapter kind: LoRA, LoKr or LoHa.",
                                examples=["lora"])
    use_dora: bool = Field(True, description="Weight-decomposed LoRA (DoRA). LoRA only: set "
                           "false for `lokr`/`loha`.", examples=[True])
    rank: int = Field(32, ge=1, le=MAX_RANK, description="Adapter rank: capacity vs. size.",
                      examples=[32])
    target_unet_modules: list[ModuleName] = Field(
        default_factory=lambda: list(DEFAULT_UNET_MODULES), min_length=1,
        max_length=MAX_MODULES, description="UNet module names that get adapters.",
        examples=[list(DEFAULT_UNET_MODULES)])
    target_text_encoder_modules: list[ModuleName] = Field(
        default_factory=lambda: list(DEFAULT_TEXT_ENCODER_MODULES), min_length=1,
        max_length=MAX_MODULES, description="Text-encoder module names that get adapters "
        "(with `train_text_encoder`).", examples=[list(DEFAULT_TEXT_ENCODER_MODULES)])

    # -- images and augmentation -------------------------------------------------------------
    resolution_width: int = Field(768, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                                  description="Training width in pixels (multiple of 8).",
                                  examples=[768])
    resolution_height: int = Field(768, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                                   description="Training height in pixels (multiple of 8).",
                                   examples=[768])
    center_crop: bool = Field(False, description="Crop images at the center instead of at "
                              "random.", examples=[False])
    random_flip: bool = Field(False, description="Mirror images horizontally at random.",
                              examples=[False])
    face_aware_cropping: bool = Field(True, description="Keep the detected face inside the "
                                      "crop.", examples=[True])
    random_crop_offset_x: int = Field(0, ge=0, le=MAX_SIDE, description="With `center_crop`: "
                                      "shift each photo's crop window by up to ± this many "
                                      "pixels (of the training size) horizontally.",
                                      examples=[0])
    random_crop_offset_y: int = Field(0, ge=0, le=MAX_SIDE, description="With `center_crop`: "
                                      "the same, vertically.", examples=[0])
    random_rotation_start: int = Field(-2, ge=-180, le=180, description="Lower end of the "
                                       "random rotation, in degrees.", examples=[-2])
    random_rotation_end: int = Field(2, ge=-180, le=180, description="Upper end of the random "
                                     "rotation, in degrees (≥ start).", examples=[2])
    cache_latents: bool = Field(False, description="Encode every image once and reuse the "
                                "latents (faster; fixes each image's augmentation).",
                                examples=[False])
    upscale_vae_32bit: bool = Field(True, description="Run the VAE in float32 while encoding.",
                                    examples=[True])

    # -- masks and prior preservation --------------------------------------------------------
    clip_seg_mask_prompt: str = Field(
        "head", min_length=1, max_length=200, description="What CLIPSeg segments to weight "
        "the loss (the region to learn).", examples=["head"])
    clip_seg_mask_temperature: float = Field(
        1.0, gt=0.0, le=100.0, allow_inf_nan=False, description="Softness of the CLIPSeg mask: "
        "higher is smoother.", examples=[1.0])
    clip_seg_mask_bias: float = Field(
        0.001, ge=0.0, le=1.0, allow_inf_nan=False, description="Floor added to the mask so "
        "no pixel's loss weight is zero.", examples=[0.001])
    class_image_mask_style: MaskStyle = Field(
        "normal", description="Loss mask on class (prior) images: none, the CLIPSeg mask, or "
        "its inverse.", examples=["normal"])
    with_prior_preservation: bool = Field(
        True, description="Also train on generated images of `photo_class` so the model keeps "
        "its idea of the class.", examples=[True])
    prior_loss_weight: float = Field(1.0, ge=0.0, le=10.0, allow_inf_nan=False,
                                     description="Weight of the prior-preservation loss.",
                                     examples=[1.0])

    # -- schedule ----------------------------------------------------------------------------
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed for initialization, shuffling "
                      "and augmentation: same inputs, same run.", examples=[42])
    num_train_epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="Epochs to train; when set it replaces "
        "`max_train_steps`. `null` trains for `max_train_steps`.", examples=[None])
    max_train_steps: int = Field(1000, ge=1, le=MAX_TRAIN_STEPS,
                                 description="Optimizer steps to train.", examples=[1000])
    batch_size: int = Field(6, ge=1, le=64, description="Images per step per worker.",
                            examples=[6])
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=128, description="Batches accumulated per optimizer step.", examples=[1])
    learning_rate: float = Field(8e-5, gt=0.0, le=MAX_LR, allow_inf_nan=False,
                                 description="Initial UNet learning rate (about 1.0 with "
                                 "Prodigy).", examples=[8e-5])
    text_encoder_lr: float = Field(8e-5, gt=0.0, le=MAX_LR, allow_inf_nan=False,
                                   description="Text-encoder and token-embedding learning "
                                   "rate.", examples=[8e-5])
    lr_scheduler: LrScheduler = Field("constant", description="Learning-rate schedule "
                                      "(diffusers' names).", examples=["constant"])
    lr_warmup_steps: int = Field(500, ge=0, le=MAX_TRAIN_STEPS, description="Warm-up steps "
                                 "(ignored by `constant`).", examples=[500])
    lr_num_cycles: int = Field(1, ge=1, le=100, description="Hard restarts for "
                               "`cosine_with_restarts`.", examples=[1])
    lr_power: float = Field(1.0, gt=0.0, le=10.0, allow_inf_nan=False,
                            description="Exponent of `polynomial` decay.", examples=[1.0])
    snr_gamma: float = Field(0.5, gt=0.0, le=100.0, allow_inf_nan=False,
                             description="Min-SNR loss weighting γ.", examples=[0.5])
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="Offset noise: lets the model learn very dark and "
                                "bright images.", examples=[0.0])
    min_timestep_trained: int = Field(0, ge=0, le=NUM_TIMESTEPS, description="Lowest diffusion "
                                      "timestep sampled in training.", examples=[0])
    max_timestep_trained: int = Field(1000, ge=0, le=NUM_TIMESTEPS, description="Timesteps are "
                                      "sampled below this (exclusive; > min).", examples=[1000])
    max_grad_norm: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False,
                                 description="Gradient-norm clip.", examples=[1.0])

    # -- optimizer ---------------------------------------------------------------------------
    optimizer: Optimizer = Field("adamw", description="Optimizer: AdamW, or Prodigy (adapts "
                                 "its step size; use a learning rate near 1.0).",
                                 examples=["adamw"])
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, allow_inf_nan=False,
                              description="β1 (AdamW and Prodigy).", examples=[0.9])
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, allow_inf_nan=False,
                              description="β2 (AdamW and Prodigy).", examples=[0.999])
    adam_weight_decay: float = Field(1e-4, ge=0.0, le=1.0, allow_inf_nan=False,
                                     description="Weight decay for UNet parameters.",
                                     examples=[1e-4])
    adam_weight_decay_text_encoder: float = Field(
        1e-3, ge=0.0, le=1.0, allow_inf_nan=False, description="Weight decay for text-encoder "
        "parameters.", examples=[1e-3])
    adam_epsilon: float = Field(1e-8, gt=0.0, le=1e-2, allow_inf_nan=False,
                                description="Optimizer ε, for numerical stability.",
                                examples=[1e-8])
    prodigy_beta3: float | None = Field(
        None, ge=0.0, lt=1.0, allow_inf_nan=False, description="Prodigy only: β3 of its step-"
        "size estimate; `null` is √β2.", examples=[None])
    prodigy_decouple: bool = Field(True, description="Prodigy only: AdamW-style decoupled "
                                   "weight decay.", examples=[True])
    prodigy_use_bias_correction: bool = Field(True, description="Prodigy only: Adam's bias "
                                              "correction.", examples=[True])
    prodigy_safeguard_warmup: bool = Field(True, description="Prodigy only: keep the lr out of "
                                           "the step-size estimate's denominator during "
                                           "warm-up.", examples=[True])

    # -- debugging ---------------------------------------------------------------------------
    debug_dataset: bool = Field(False, description="Save the preprocessed training images "
                                "(returned as `debug_dataset_file`).", examples=[False])
    debug_loss_masks: bool = Field(False, description="Save the loss masks (returned as "
                                   "`debug_masks_file`).", examples=[False])

    # -- genserve extensions -------------------------------------------------------------------
    preprocessing: PreprocessingOptions = Field(
        default_factory=PreprocessingOptions, description="Captioning, segmentation and class-"
        "image settings (genserve extension).", examples=[{"num_class_images": None}])
    ray: RayOptions = Field(default_factory=RayOptions,
                            description="Ray Train options (genserve extension, not in fal's "
                            "API).", examples=[{"num_workers": 1, "use_gpu": True}])

    @field_validator("images_data_url", "captions_file_url")
    @classmethod
    def _check_file_location(cls, value: str | None) -> str | None:
        return None if value is None else check_location(value, _FILE_KINDS)

    @field_validator("revision")
    @classmethod
    def _check_revision(cls, value: str | None) -> str | None:
        # Revisions name files in the hub cache (refs/<revision>): keep them inside it.
        if value is not None and (".." in value or value.endswith("/")):
            raise ValueError(f"revision {_shown(value)} must not contain '..' or end with '/'")
        return value

    @field_validator("model_url", "vae_url")
    @classmethod
    def _check_model_location(cls, value: str) -> str:
        return check_location(value, _MODEL_KINDS)

    @model_validator(mode="after")
    def _check_combinations(self) -> PersonalizeRequest:
        if self.min_timestep_trained >= self.max_timestep_trained:
            raise FieldError("min_timestep_trained", f"`min_timestep_trained` "
                             f"({self.min_timestep_trained}) must be below "
                             f"`max_timestep_trained` ({self.max_timestep_trained})")
        if self.random_rotation_start > self.random_rotation_end:
            raise FieldError("random_rotation_start", f"`random_rotation_start` "
                             f"({self.random_rotation_start}) must not exceed "
                             f"`random_rotation_end` ({self.random_rotation_end})")
        if self.use_dora and self.lora_type != "lora":
            raise FieldError("lora_type", f"`lora_type` {self.lora_type!r} cannot be combined "
                             "with `use_dora`=true (DoRA exists for LoRA only); set "
                             "use_dora=false")
        if self.train_text_encoder and self.train_text_encoder_ti:
            raise FieldError("train_text_encoder", "`train_text_encoder`=true and "
                             "`train_text_encoder_ti`=true: train either the text encoders "
                             "(LoRA) or new token embeddings (textual inversion); set one false")
        only_prompt = self.captions_file_url is None and self.skip_caption_generation
        if (self.train_text_encoder_ti and only_prompt
                and self.token_abstraction not in self.instance_prompt):
            raise FieldError("instance_prompt", f"`instance_prompt` {self.instance_prompt!r} "
                             f"must contain `token_abstraction` {self.token_abstraction!r}: it "
                             "is the only caption (no captions file, skip_caption_generation="
                             "true), so the new tokens would never be trained")
        return self

    def to_config(self) -> dict[str, Any]:
        """The job's configuration as plain JSON values (also valid YAML for `from_yaml`)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_yaml(cls, path: str | Path) -> PersonalizeRequest:
        """Read a YAML job file holding the request's fields (``ray:`` nested).

        Raises `InvalidInput` when the file is not a mapping, pydantic's ``ValidationError``
        when a field is wrong.
        """
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict):
            raise InvalidInput(f"{path}: a job file must be a mapping of request fields, got "
                               f"{type(data).__name__}")
        return cls.model_validate(data)


_WEIGHTS = "application/octet-stream"


def _file_example(name: str, content_type: str = _WEIGHTS, size: int = 0) -> dict[str, Any]:
    return {"url": f"s3://genserve-artifacts/personalize/job-123/{name}",
            "content_type": content_type, "file_name": name, "file_size": size}


class PersonalizeOutput(StrictModel):
    """The trained artifacts. fal's page shows only ``config_file`` by name (its example
    output, so the one always present); the other names follow its descriptions, in its order.
    Each of those is present when the run produced it."""

    diffusers_lora_file: File | None = Field(
        None, description="LoRA weights in diffusers format (`load_lora_weights`).",
        examples=[_file_example("pytorch_lora_weights.safetensors", size=93_000_000)])
    kohya_lora_file: File | None = Field(
        None, description="LoRA weights in kohya format (A1111, ComfyUI).",
        examples=[_file_example("lora_kohya.safetensors", size=93_000_000)])
    unet_file: File | None = Field(
        None, description="Full UNet weights (`use_lora=false`).",
        examples=[_file_example("unet.safetensors", size=5_135_000_000)])
    text_encoder_file: File | None = Field(
        None, description="Text encoder 1 weights, when the text encoders were trained.",
        examples=[_file_example("text_encoder.safetensors", size=246_000_000)])
    text_encoder_2_file: File | None = Field(
        None, description="Text encoder 2 weights, when the text encoders were trained.",
        examples=[_file_example("text_encoder_2.safetensors", size=1_390_000_000)])
    embeddings_file: File | None = Field(
        None, description="Learned token embeddings, with textual inversion.",
        examples=[_file_example("embeddings.safetensors", size=16_500)])
    config_file: File = Field(
        description="The training configuration (`to_config()` as JSON).",
        examples=[_file_example("config.json", "application/json", 3_200)])
    debug_dataset_file: File | None = Field(
        None, description="The preprocessed training images (`debug_dataset`).",
        examples=[_file_example("debug_dataset.zip", "application/zip", 12_000_000)])
    debug_masks_file: File | None = Field(
        None, description="The loss masks (`debug_loss_masks`).",
        examples=[_file_example("debug_masks.zip", "application/zip", 4_000_000)])
