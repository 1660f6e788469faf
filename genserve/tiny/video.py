"""Tiny random-weight Stable Video Diffusion (`stabilityai/stable-video-diffusion-img2vid`).

Same classes, file layout and scheduler config as the hub repo, at the sizes diffusers' own SVD
fast tests use, so `SVDPipeline` loads it with the exact `from_pretrained` call it uses for the
real model. Two deliberate differences from those tests:
- the VAE keeps four blocks (scale factor 8, like SVD's), so pixel sizes mean the same thing;
- the CLIP vision tower takes 224 px with 14 px patches (like the real ViT-H/14) instead of
  32 px / patch 1: the pipeline resizes a PIL image to 224×224 before CLIP, which a 32 px
  position table cannot take (diffusers' tests pass a 32 px tensor and skip that resize).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

IMAGE_EMBED = 32  # CLIP projection_dim; the UNet cross-attends to it (cross_attention_dim)
TIME_EMBED = 32  # addition_time_embed_dim; 3 ids (fps-1, motion bucket, noise aug) × 32 = 96
NUM_FRAMES = 14  # img2vid's default (img2vid-xt: 25); every call passes its own anyway
# The hub repo's scheduler/scheduler_config.json: v-prediction, Karras sigmas up to 700.
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
    steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
    use_karras_sigmas=True,
)


def _unet():
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
        in_channels=8,  # 4 noisy latent channels + 4 of the conditioning image's latent
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=IMAGE_EMBED, num_attention_heads=8,
        addition_time_embed_dim=TIME_EMBED, projection_class_embeddings_input_dim=3 * TIME_EMBED,
        num_frames=NUM_FRAMES,
    )


def _vae():
    from diffusers import AutoencoderKLTemporalDecoder

    # 32 channels per block: the temporal decoder's GroupNorm is hard-wired to 32 groups.
    return AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4, sample_size=64,
        scaling_factor=0.18215, force_upcast=True,
    )


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=IMAGE_EMBED, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, image_size=224, patch_size=14,
    ))


def build_svd(directory: Path) -> None:
    """Write a tiny `StableVideoDiffusionPipeline` (fp32 plus an fp16 variant) to ``directory``.

    >>> build_svd(Path("/tmp/tiny-svd"))  # doctest: +SKIP
    >>> StableVideoDiffusionPipeline.from_pretrained("/tmp/tiny-svd")  # doctest: +SKIP
    """
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    unet = _unet()
    torch.manual_seed(0)
    vae = _vae()
    torch.manual_seed(0)
    image_encoder = _image_encoder()
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        # Only its normalisation is used: the pipeline resizes to 224 itself.
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 224},
                                             crop_size={"height": 224, "width": 224}),
    )
    # An fp16 variant, as the hub repo ships, so the CUDA path (`variant="fp16"`) loads the
    # tiny model too; then fp32 for CPU. fp32 is saved last because both variants share one
    # config.json, and transformers 5 loads a model in the dtype that file records when the
    # caller names none.
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(
        directory, safe_serialization=True, variant="fp16")
    pipe.save_pretrained(directory, safe_serialization=True)
