"""Captions for training photos that came without a captions file.

The default model is BLIP large (`Salesforce/blip-image-captioning-large`). transformers 5 has
no ``AutoModelForVision2Seq``; its ``AutoModelForImageTextToText`` maps BLIP's ``model_type``
to `BlipForConditionalGeneration`, and the same two auto classes load other captioners that
caption from the image alone (GIT, BLIP-2, Florence-2 …). Chat-style VLMs that need a text
prompt are out of scope: they would caption nothing useful without one.

Decoding is greedy, so one photo always gets the same caption, and a re-run of a training job
trains on the same text.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

from genserve.pipelines.loading import Placement

log = logging.getLogger(__name__)

DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-large"


class Captioner:
    """Image-to-text captioning, loaded once and run in batches.

    >>> captioner = Captioner(DEFAULT_CAPTION_MODEL)           # doctest: +SKIP
    >>> captioner.caption([Image.open("me.jpg")])              # doctest: +SKIP
    ['a man in a blue shirt standing in front of a wall']
    """

    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto"):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_id = model_id
        self.placement = Placement.resolve(device, dtype)
        # Captioning repos ship one set of fp32 weights and no fp16 variant file.
        self.model = self.placement.load(AutoModelForImageTextToText, model_id, revision,
                                         fp16_variant=False)
        self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        self.tokenizer = self.processor.tokenizer
        # Stripped again after decoding: added tokens such as BLIP's [DEC] are not always
        # flagged special, and a random-weight model may emit any of them.
        self._specials = sorted(set(self.tokenizer.all_special_tokens), key=len, reverse=True)

    def caption(self, images: list[Image.Image], *, max_new_tokens: int = 30,
                batch_size: int = 8) -> list[str]:
        """One clean single-line caption per image, in order (possibly empty, never None)."""
        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1 but is {max_new_tokens}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1 but is {batch_size}.")
        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            # RGBA, palette and grayscale photos all occur in user uploads; the processors
            # expect three channels.
            chunk = [img.convert("RGB") for img in images[start:start + batch_size]]
            captions.extend(self._caption_batch(chunk, max_new_tokens))
        return captions

    def _caption_batch(self, images: list[Image.Image], max_new_tokens: int) -> list[str]:
        inputs = self.processor(images=images, return_tensors="pt")
        inputs = inputs.to(self.placement.device, dtype=self.placement.dtype)
        with torch.inference_mode():
            # do_sample/num_beams pinned: a repo's generation_config.json may ask for sampling
            # or beams, and captions must not change between runs.
            ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      num_beams=1)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [self._clean(text) for text in texts]

    def _clean(self, text: str | None) -> str:
        text = text or ""
        for token in self._specials:
            text = text.replace(token, " ")
        return " ".join(text.split())
