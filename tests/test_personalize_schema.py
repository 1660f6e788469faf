"""The personalization job schema on its own (milliseconds, no Ray, no models)."""

from __future__ import annotations

import json
import math
from typing import get_args

import pytest
import yaml
from pydantic import ValidationError

from genserve.errors import InvalidInput
from genserve.schemas.common import FieldError
from genserve.schemas.personalize import (
    MAX_DATA_URI_CHARS,
    MAX_SEED,
    MAX_TRAIN_STEPS,
    ArchiveFormat,
    LoraType,
    LrScheduler,
    MaskStyle,
    Optimizer,
    PersonalizeOutput,
    PersonalizeRequest,
    PhotoClass,
    RayOptions,
)

REQUIRED = {"images_data_url": "https://example.com/photos.zip", "photo_class": "Man"}

# fal's stated defaults: its "Default value" lines, and the prose for falsy values (fal lists no
# default line for false/0/null). Where prose and default value disagree, the value is here.
SEED_DEFAULTS = {
    "data_archive_format": None, "captions_file_url": None, "caption_column": "text",
    "instance_prompt": "A photograph of a TOK", "rank": 32,
    "model_url": "stabilityai/stable-diffusion-xl-base-1.0",
    "vae_url": "madebyollin/sdxl-vae-fp16-fix", "revision": None, "variant": None,
    "token_abstraction": "TOK", "num_new_tokens_per_abstraction": 2, "seed": 42,
    "resolution_width": 768, "resolution_height": 768, "center_crop": False,
    "random_flip": False, "train_text_encoder": False, "num_train_epochs": None,
    "max_train_steps": 1000, "learning_rate": 0.00008, "text_encoder_lr": 0.00008,
    "lr_scheduler": "constant", "snr_gamma": 0.5, "lr_warmup_steps": 500, "lr_num_cycles": 1,
    "lr_power": 1, "train_text_encoder_ti": True, "train_text_encoder_ti_frac": 0.5,
    "train_text_encoder_frac": 1, "optimizer": "adamw", "adam_beta1": 0.9,
    "adam_beta2": 0.999, "prodigy_beta3": None, "prodigy_decouple": True,
    "adam_weight_decay": 0.0001, "adam_weight_decay_text_encoder": 0.001,
    "adam_epsilon": 1e-8, "prodigy_use_bias_correction": True,
    "prodigy_safeguard_warmup": True, "batch_size": 6, "caption_dropout": 0.0,
    "skip_caption_generation": False, "max_grad_norm": 1, "with_prior_preservation": True,
    "prior_loss_weight": 1,
    "target_unet_modules": ["to_k", "to_q", "to_v", "to_out.0", "conv1", "conv2"],
    "target_text_encoder_modules": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "cache_latents": False, "use_lora": True, "debug_dataset": False,
    "random_crop_offset_x": 0, "random_crop_offset_y": 0, "clip_seg_mask_prompt": "head",
    "class_image_mask_style": "normal", "clip_seg_mask_temperature": 1,
    "clip_seg_mask_bias": 0.001, "random_rotation_start": -2, "random_rotation_end": 2,
    "use_dora": True, "lora_type": "lora", "face_aware_cropping": True, "noise_offset": 0.0,
    "gradient_accumulation_steps": 1, "upscale_vae_32bit": True, "debug_loss_masks": False,
    "max_timestep_trained": 1000, "min_timestep_trained": 0,
    "disable_unet_during_ti_training": False,
}
RAY_DEFAULTS = {"num_workers": 1, "use_gpu": True, "resources_per_worker": None,
                "storage_path": None, "max_failures": 2, "checkpoint_every_n_steps": 100,
                "report_every_n_steps": 10}


def make(**overrides) -> PersonalizeRequest:
    return PersonalizeRequest(**{**REQUIRED, **overrides})


def error_path(exc: ValidationError) -> tuple:
    """Where the first error points: pydantic's loc, plus the field a FieldError names."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    loc = tuple(err["loc"])
    return (*loc, cause.field) if isinstance(cause, FieldError) else loc


def test_fields_are_fals_plus_our_extensions():
    extensions = {"ray", "preprocessing"}
    assert set(PersonalizeRequest.model_fields) == set(SEED_DEFAULTS) | set(REQUIRED) | extensions
    required = {n for n, f in PersonalizeRequest.model_fields.items() if f.is_required()}
    assert required == set(REQUIRED)


def test_defaults_match_the_seed():
    config = make().to_config()
    for name, value in SEED_DEFAULTS.items():
        assert config[name] == value, name
    assert config["ray"] == RAY_DEFAULTS
    assert config["preprocessing"]["captioning_model"] == "Salesforce/blip-image-captioning-large"
    assert config["preprocessing"]["segmentation_model"] == "CIDAS/clipseg-rd64-refined"


@pytest.mark.parametrize("model", [PersonalizeRequest, RayOptions, PersonalizeOutput])
def test_every_field_documented(model):
    for name, field in model.model_fields.items():
        assert field.description and len(field.description) <= 300, name
        assert field.examples or not field.is_required(), name
        assert field.examples, f"{model.__name__}.{name} has no example"


def test_examples_make_a_valid_request_and_output():
    fields = PersonalizeRequest.model_fields
    request = PersonalizeRequest(**{n: f.examples[0] for n, f in fields.items()})
    assert request.ray.num_workers == 1
    output = PersonalizeOutput(**{n: f.examples[0]
                                  for n, f in PersonalizeOutput.model_fields.items()})
    assert output.config_file.file_name == "config.json"


@pytest.mark.parametrize("alias,values", [
    (PhotoClass, ("Man", "Woman", "Person", "Boy", "Girl", "Baby")),
    (Optimizer, ("adamw", "prodigy")),
    (MaskStyle, ("none", "normal", "invert")),
    (LoraType, ("lora", "lokr", "loha")),
    (LrScheduler, ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                   "constant_with_warmup")),
    (ArchiveFormat, ("zip", "tar", "gztar", "bztar", "xztar")),
])
def test_enum_values(alias, values):
    assert get_args(alias) == values


@pytest.mark.parametrize("field,value", [
    ("photo_class", "Baby"), ("optimizer", "prodigy"), ("class_image_mask_style", "invert"),
    ("lr_scheduler", "cosine_with_restarts"), ("data_archive_format", "gztar"),
])
def test_enum_members_accepted(field, value):
    assert getattr(make(**{field: value}), field) == value


BAD_VALUES = [
    ("photo_class", "Dog"), ("optimizer", "sgd"), ("lr_scheduler", "cosine_annealing"),
    ("class_image_mask_style", "inverted"), ("lora_type", "lycoris"),
    ("data_archive_format", "rar"),
    ("rank", 0), ("rank", 257),
    ("resolution_width", 56), ("resolution_width", 2056), ("resolution_width", 770),
    ("resolution_height", 56), ("resolution_height", 2056), ("resolution_height", 770),
    ("learning_rate", 0.0), ("learning_rate", 1.5), ("learning_rate", math.nan),
    ("text_encoder_lr", 0.0), ("text_encoder_lr", 2.0),
    ("train_text_encoder_ti_frac", -0.1), ("train_text_encoder_ti_frac", 1.1),
    ("train_text_encoder_frac", 1.5), ("caption_dropout", 1.5),
    ("max_train_steps", 0), ("max_train_steps", MAX_TRAIN_STEPS + 1),
    ("num_train_epochs", 0), ("lr_warmup_steps", -1), ("lr_num_cycles", 0), ("lr_power", 0.0),
    ("snr_gamma", 0.0), ("snr_gamma", math.inf),
    ("seed", -1), ("seed", MAX_SEED + 1),
    ("num_new_tokens_per_abstraction", 0), ("num_new_tokens_per_abstraction", 9),
    ("token_abstraction", ""), ("token_abstraction", "a b"), ("token_abstraction", "<s0>"),
    ("token_abstraction", "x" * 33),
    ("min_timestep_trained", -1), ("max_timestep_trained", 1001),
    ("random_rotation_start", -181), ("random_rotation_end", 181),
    ("batch_size", 0), ("batch_size", 65), ("gradient_accumulation_steps", 0),
    ("adam_beta1", 1.0), ("adam_beta2", -0.1), ("adam_epsilon", 0.0),
    ("adam_weight_decay", -0.1), ("adam_weight_decay_text_encoder", 1.5),
    ("prodigy_beta3", 1.0), ("max_grad_norm", 0.0), ("prior_loss_weight", -1.0),
    ("clip_seg_mask_temperature", 0.0), ("clip_seg_mask_bias", 2.0), ("noise_offset", -0.1),
    ("random_crop_offset_x", -1), ("random_crop_offset_y", 4096),
    ("target_unet_modules", []), ("target_unet_modules", ["to k"]),
    ("target_text_encoder_modules", ["q_proj; rm"]),
    ("variant", "fp16; rm"), ("revision", "../main"), ("revision", "main/../../x"), ("caption_column", ""),
    ("instance_prompt", ""), ("clip_seg_mask_prompt", ""),
    ("images_data_url", ""), ("images_data_url", "photos.zip"),
    ("images_data_url", "ftp://host/photos.zip"), ("images_data_url", "file:///etc/passwd"),
    ("images_data_url", "/data/../etc/passwd"), ("images_data_url", "https://u:p@host/a.zip"),
    ("images_data_url", "http:///a.zip"), ("images_data_url", "https://h/" + "a" * 3000),
    ("images_data_url", "data:application/zip;base64"), ("images_data_url", "s3:///key.zip"),
    ("images_data_url", "stabilityai/stable-diffusion-xl-base-1.0"),
    ("captions_file_url", "captions.jsonl"),
    ("model_url", "data:application/octet-stream;base64,AAAA"), ("model_url", "not a repo"),
    ("model_url", "../models/sdxl"), ("vae_url", "owner/../vae"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bound_rejected_naming_the_field(field, value):
    with pytest.raises(ValidationError) as exc:
        make(**{field: value})
    assert error_path(exc.value)[0] == field


def test_oversized_data_uri_rejected():
    with pytest.raises(ValidationError) as exc:
        make(images_data_url="data:application/zip;base64," + "A" * MAX_DATA_URI_CHARS)
    assert error_path(exc.value) == ("images_data_url",)


@pytest.mark.parametrize("field,value", [
    ("num_workers", 0), ("num_workers", 65), ("max_failures", -1), ("max_failures", 11),
    ("checkpoint_every_n_steps", 0), ("checkpoint_every_n_steps", 10_001),
    ("storage_path", "relative/dir"), ("storage_path", "https://host/dir"),
    ("storage_path", "s3://"), ("resources_per_worker", {"CPU": -1}),
    ("resources_per_worker", {"bad name!": 1}), ("resources_per_worker", {"GPU": math.inf}),
])
def test_ray_bound_rejected_naming_the_field(field, value):
    with pytest.raises(ValidationError) as exc:
        make(ray={field: value})
    assert error_path(exc.value)[:2] == ("ray", field)


@pytest.mark.parametrize("field,value", [
    ("images_data_url", "https://example.com/photos.zip"),
    ("images_data_url", "http://example.com/photos.zip?sig=abc"),
    ("images_data_url", "data:application/zip;base64,UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="),
    ("images_data_url", "s3://bucket/users/1/photos.zip"),
    ("images_data_url", "/mnt/data/photos.zip"),
    ("captions_file_url", "data:application/jsonl,%7B%7D"),
    ("model_url", "stabilityai/stable-diffusion-xl-base-1.0"),
    ("model_url", "https://example.com/sdxl.safetensors"), ("model_url", "/models/sdxl"),
    ("vae_url", "s3://bucket/vae"), ("revision", "refs/pr/1"), ("variant", "fp16"),
    ("token_abstraction", "ohwx_2"),
])
def test_locations_and_names_accepted(field, value):
    assert getattr(make(**{field: value}), field) == value


@pytest.mark.parametrize("overrides,field,shown", [
    ({"min_timestep_trained": 500, "max_timestep_trained": 500}, "min_timestep_trained", "500"),
    ({"min_timestep_trained": 900, "max_timestep_trained": 100}, "min_timestep_trained", "900"),
    ({"random_rotation_start": 10, "random_rotation_end": 5}, "random_rotation_start", "10"),
    ({"lora_type": "lokr"}, "lora_type", "lokr"),
    ({"lora_type": "loha", "use_dora": True}, "lora_type", "loha"),
    ({"train_text_encoder": True}, "train_text_encoder", "train_text_encoder_ti"),
    ({"skip_caption_generation": True, "instance_prompt": "a photo of a man"},
     "instance_prompt", "a photo of a man"),
])
def test_cross_field_rule_names_the_field(overrides, field, shown):
    with pytest.raises(ValidationError) as exc:
        make(**overrides)
    assert error_path(exc.value) == (field,)
    assert shown in str(exc.value)


@pytest.mark.parametrize("ray,shown", [
    ({"use_gpu": False, "resources_per_worker": {"CPU": 2, "GPU": 1}}, "GPU=1"),
    ({"use_gpu": True, "resources_per_worker": {"CPU": 2, "GPU": 0}}, "GPU=0"),
])
def test_ray_gpu_rule_names_the_field(ray, shown):
    with pytest.raises(ValidationError) as exc:
        make(ray=ray)
    assert error_path(exc.value) == ("ray", "resources_per_worker")
    assert shown in str(exc.value)


@pytest.mark.parametrize("overrides", [
    {"lora_type": "lokr", "use_dora": False},
    {"train_text_encoder": True, "train_text_encoder_ti": False},
    {"optimizer": "adamw", "prodigy_beta3": 0.9, "prodigy_decouple": False},  # ignored, allowed
    {"skip_caption_generation": True, "instance_prompt": "a photo of a man",
     "train_text_encoder_ti": False},
    {"skip_caption_generation": True, "instance_prompt": "a photo of a man",
     "captions_file_url": "https://example.com/captions.jsonl"},
    {"min_timestep_trained": 999, "max_timestep_trained": 1000},
    {"random_rotation_start": 5, "random_rotation_end": 5},
    {"ray": {"use_gpu": False, "resources_per_worker": {"CPU": 2}}},
    {"ray": {"use_gpu": True, "resources_per_worker": {"CPU": 4}}},
])
def test_allowed_combinations(overrides):
    make(**overrides)


@pytest.mark.parametrize("body", [
    {**REQUIRED, "num_train_step": 10},
    {**REQUIRED, "ray": {"num_worker": 2}},
])
def test_unknown_field_rejected(body):
    with pytest.raises(ValidationError) as exc:
        PersonalizeRequest(**body)
    assert exc.value.errors()[0]["type"] == "extra_forbidden"


def test_output_requires_config_file_only():
    config = {"url": "s3://b/job/config.json", "content_type": "application/json",
              "file_name": "config.json", "file_size": 10}
    out = PersonalizeOutput(config_file=config)
    assert out.diffusers_lora_file is None and out.config_file.file_size == 10
    with pytest.raises(ValidationError):
        PersonalizeOutput()
    with pytest.raises(ValidationError):
        PersonalizeOutput(config_file=config, lora_file=config)


def test_to_config_is_json_and_round_trips():
    request = make(photo_class="Woman", rank=16, optimizer="prodigy", learning_rate=1.0,
                   ray={"num_workers": 2, "resources_per_worker": {"CPU": 4, "GPU": 1},
                        "storage_path": "s3://bucket/jobs"})
    config = request.to_config()
    assert json.loads(json.dumps(config)) == config
    assert PersonalizeRequest.model_validate(config) == request


def test_from_yaml_round_trip(tmp_path):
    request = make(photo_class="Girl", max_train_steps=2, resolution_width=64,
                   resolution_height=64, ray={"use_gpu": False, "storage_path": str(tmp_path)})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(request.to_config()))
    assert PersonalizeRequest.from_yaml(path) == request


def test_from_yaml_handwritten(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "images_data_url: s3://bucket/users/7/photos.zip\n"
        "photo_class: Person\n"
        "max_train_steps: 2\n"
        "target_unet_modules: [to_q, to_v]\n"
        "ray:\n"
        "  num_workers: 2\n"
        "  resources_per_worker: {CPU: 2, GPU: 0.5}\n")
    job = PersonalizeRequest.from_yaml(str(path))
    assert (job.photo_class, job.max_train_steps, job.rank) == ("Person", 2, 32)
    assert job.target_unet_modules == ["to_q", "to_v"]
    assert job.ray.resources_per_worker == {"CPU": 2.0, "GPU": 0.5}


@pytest.mark.parametrize("text,error", [
    ("- a\n- b\n", InvalidInput), ("", InvalidInput),
    ("images_data_url: https://e.com/a.zip\nphoto_class: Man\nrnak: 4\n", ValidationError),
])
def test_from_yaml_rejects_bad_files(tmp_path, text, error):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(error):
        PersonalizeRequest.from_yaml(path)
