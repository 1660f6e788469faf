"""Tiny random-weight SDXL base, refiner, VAE and safety checker.

Same classes and file layout as the hub models, at the sizes diffusers' own fast tests use, so
the serving code loads them with the exact `from_pretrained` calls it uses for the real ones.
The VAE keeps four blocks (scale factor 8, like SDXL's) so pixel sizes mean the same thing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.tiny.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, save_clip_tokenizer

TEXT_HIDDEN = 32  # both encoders; the base UNet cross-attends to their concatenation (64)
TIME_EMBED = 8  # addition_time_embed_dim
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    timestep_spacing="leading", num_train_timesteps=1000,
)


def _text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_size=TEXT_HIDDEN,
        intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=VOCAB_SIZE, hidden_act="gelu", projection_dim=32,
    )


def _unet(cross_attention_dim: int, n_time_ids: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED, transformer_layers_per_block=(1, 2),
        # time ids × embed dim + the pooled text embedding (projection_dim 32)
        projection_class_embeddings_input_dim=n_time_ids * TIME_EMBED + 32,
        cross_attention_dim=cross_attention_dim, norm_num_groups=32,
    )


def base_unet():
    """The base's UNet architecture (random weights): both encoders, 6 time ids."""
    return _unet(cross_attention_dim=2 * TEXT_HIDDEN, n_time_ids=6)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025,
    )


def _save(pipe, directory: Path) -> None:
    # An fp16 variant, as the hub repos ship, so the CUDA path (`variant="fp16"`) loads the
    # tiny models too; then fp32 for CPU. fp32 goes last because both share one config.json
    # and transformers loads a text encoder in the dtype that file records.
    pipe.to(torch.float16).save_pretrained(directory, safe_serialization=True, variant="fp16")
    pipe.to(torch.float32).save_pretrained(directory, safe_serialization=True)


def build_base(directory: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok_dir = save_clip_tokenizer(directory / "_tok")
    torch.manual_seed(0)
    unet = base_unet()
    torch.manual_seed(0)
    vae = _vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        # SDXL's second tokenizer pads with "!", not EOS; keep that difference.
        tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir, pad_token="!"),
        unet=unet, scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
    _save(pipe, directory)
    _rmtree(tok_dir)


def build_refiner(directory: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tok_dir = save_clip_tokenizer(directory / "_tok")
    torch.manual_seed(1)
    # Encoder 2 only; 5 time ids because the aesthetic score replaces the target size.
    unet = _unet(cross_attention_dim=TEXT_HIDDEN, n_time_ids=5)
    torch.manual_seed(0)
    vae = _vae()  # same seed as the base's: SDXL's base and refiner share one VAE
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
        tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir, pad_token="!"),
        unet=unet, scheduler=EulerDiscreteScheduler(**SCHEDULER),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    _save(pipe, directory)
    _rmtree(tok_dir)


def build_vae(directory: Path) -> None:
    """Stand-in for `madebyollin/sdxl-vae-fp16-fix`: a bare `AutoencoderKL` repo."""
    torch.manual_seed(0)
    _vae().save_pretrained(directory, safe_serialization=True)


def build_safety_checker(directory: Path) -> None:
    """A tiny `StableDiffusionSafetyChecker` whose one active concept is "magenta".

    A random CLIP maps every image to nearly the same direction (cosine ~0.9 between a cat and
    a magenta square), so a random concept would flag all or nothing. The projection is set to
    remove the 4 principal directions of a set of plain non-magenta images; in what is left,
    magenta-like images sit at cosine > 0.99 to the concept and tiny-SDXL outputs below 0.5
    (measured on 30 of them), so a 0.9 threshold fires on magenta and on nothing else.
    Every other concept is disabled (threshold above any cosine).
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    hidden = 32
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=37, num_attention_heads=2,
                         bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                         num_hidden_layers=1, vocab_size=1000),
        vision_config=dict(hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                           num_hidden_layers=2, image_size=32, patch_size=4),
        projection_dim=hidden,
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})

    def pooled(images):
        pixels = processor(images=images, return_tensors="pt").pixel_values
        return checker.vision_model(pixels)[1]

    with torch.no_grad():
        common = pooled(_reference_images())
        top = torch.linalg.svd(common, full_matrices=False).Vh[:4]
        checker.visual_projection.weight.copy_(torch.eye(hidden) - top.T @ top)
        checker.concept_embeds[0] = checker.visual_projection(pooled([magenta_image()]))[0]
        checker.concept_embeds_weights.fill_(2.0)
        checker.concept_embeds_weights[0] = 0.9
        checker.special_care_embeds_weights.fill_(2.0)
    checker.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)


def magenta_image(size: int = 64):
    """The image the tiny safety checker flags."""
    import numpy as np

    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = img[..., 2] = 255
    return img


def _reference_images():
    import numpy as np

    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 255, 0),
               (0, 0, 255), (255, 255, 0), (0, 255, 255), (60, 120, 90)]
    images = [np.full((64, 64, 3), c, dtype=np.uint8) for c in colours]
    rng = np.random.default_rng(1)
    images += [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    return images + [np.stack([ramp] * 3, axis=-1)]


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
