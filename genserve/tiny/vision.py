"""Tiny random-weight vision aids for the personalization trainer: a BLIP captioner and CLIPSeg.

Stand-ins for `Salesforce/blip-image-captioning-large` and `CIDAS/clipseg-rd64-refined`: the
same model and processor classes and the same special-token layout, saved with
`save_pretrained`, so `training.captions` and `training.masks` load them through the exact
`from_pretrained` calls they use for the real repos. Random weights caption in word salad and
segment noise, but shapes, decoding and the mask arithmetic run as with trained ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.tiny.tokenizer import _WORDS, BOS_ID, EOS_ID, VOCAB_SIZE, save_clip_tokenizer

HIDDEN = 32
# BERT's special tokens in BERT's order, then BLIP's decoder-start token. BLIP starts every
# caption with [DEC] (its bos) and stops at [SEP]; the model config must use these same ids.
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
PAD_ID, SEP_ID, DEC_ID = 0, 3, 5
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCT = ".,!?'-"


def _wordpiece_vocab() -> dict[str, int]:
    """A BERT-style WordPiece vocabulary by construction (no training, so no hash-order ties):
    every letter and digit as a word start and as a ``##`` continuation, so any lower-case
    word tokenizes without [UNK], plus whole words from the shared tiny word list."""
    pieces = [*_BERT_SPECIALS, *_CHARS, *_PUNCT, *(f"##{c}" for c in _CHARS), *sorted(set(_WORDS))]
    vocab: dict[str, int] = {}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    return vocab


def build_captioner(out: Path) -> None:
    """Write a tiny `BlipForConditionalGeneration` + `BlipProcessor` into ``out``.

    >>> build_captioner(Path("/tmp/tiny-blip"))  # doctest: +SKIP
    >>> AutoModelForImageTextToText.from_pretrained("/tmp/tiny-blip")  # doctest: +SKIP
    """
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    # model_max_length as the real repo's (512); the captions themselves stay far shorter.
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=512)
    # The PIL backend: it needs no torchvision, and the auto classes load it either way.
    # 32 px where the real model takes 384: 4 × 4 patches of 8 px keep the encoder trivial.
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)

    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": HIDDEN, "encoder_hidden_size": HIDDEN,
            "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            # Room for [DEC] + max_new_tokens; the trainer asks for 30 at most by default.
            "max_position_embeddings": 64,
            "bos_token_id": DEC_ID, "pad_token_id": PAD_ID, "sep_token_id": SEP_ID,
            "eos_token_id": SEP_ID,
        },
        # BLIP's vision default initializer_range is 1e-10 (the real weights are loaded over
        # it); at that scale every image embeds alike and all captions come out the same.
        vision_config={"hidden_size": HIDDEN, "intermediate_size": 37, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                       "initializer_range": 0.02},
        projection_dim=HIDDEN,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def build_clipseg(out: Path) -> None:
    """Write a tiny `CLIPSegForImageSegmentation` + `CLIPSegProcessor` into ``out``.

    As in the real repo, the processor's image size (48) differs from the vision model's (32),
    so every call runs the position-embedding interpolation the real model runs (352 vs 224).
    """
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
    )
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = save_clip_tokenizer(out / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    # ImageNet statistics, as the real processor uses (not CLIP's).
    image_processor = ViTImageProcessorPil(
        size={"height": 48, "width": 48}, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225])
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)

    config = CLIPSegConfig(
        # The CLIP tokenizer's special ids: the text model pools at the EOS position.
        text_config={"vocab_size": VOCAB_SIZE, "hidden_size": HIDDEN, "intermediate_size": 37,
                     "num_attention_heads": 4, "num_hidden_layers": 2,
                     "max_position_embeddings": 77, "bos_token_id": BOS_ID,
                     "eos_token_id": EOS_ID, "pad_token_id": EOS_ID},
        vision_config={"hidden_size": HIDDEN, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 3, "image_size": 32, "patch_size": 4},
        projection_dim=HIDDEN,
        # One decoder stage per extracted vision layer, as the real (3, 6, 9) of 12 layers.
        extract_layers=(1, 2), reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
