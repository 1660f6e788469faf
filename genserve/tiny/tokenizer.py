"""Offline CLIP-style BPE tokenizers, trained locally so no hub download is needed.

`CLIPTokenizer` reads a byte-level BPE whose word-final pieces end in ``</w>``; we write one for
a fixed word list in the same file format as the real SDXL tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# Special tokens are trained first, so their ids are fixed: the text encoders' configs must use
# the same ids, or the pooled output (taken at the EOS position) reads the wrong token.
BOS_ID, EOS_ID = 0, 1
VOCAB_SIZE = 1000
MAX_LENGTH = 77  # CLIP's context; without it padding overflows (OverflowError: int too big)

_WORDS = (
    "a an the of in on at with and or photo portrait picture painting drawing render image "
    "cat dog hat man woman person boy girl baby face eyes hair smile red green blue yellow "
    "black white orange purple pink gold silver bright dark light shadow sky sea river "
    "mountain forest tree flower city street house car boat train space star moon sun "
    "night day morning evening cinematic detailed sharp blurry high quality best worst "
    "lowres ugly beautiful epic style art oil watercolor sketch anime realistic photograph "
    "camera lens bokeh studio lighting golden hour wide angle close up full body standing "
    "sitting running flying wearing holding looking smiling tok sks subject pattern "
    "checkerboard stripes dots zigzag spiral astronaut horse riding rainbow castle dragon"
).split()


def _vocab_and_merges(alphabet: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE built by construction rather than trained: every byte as a piece and as
    a word-final ``c</w>`` piece, plus left-to-right merges that spell each word of the list.
    Training gives a different vocabulary in every process (ties between equally frequent
    pairs are broken in hash order), which would renumber tokens and so change every tiny
    model's output from one build to the next; this is the same on every build."""
    vocab: dict[str, int] = {BOS: BOS_ID, EOS: EOS_ID}
    for piece in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(_WORDS)):
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair, merged = (parts[0], parts[1]), parts[0] + parts[1]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append(pair)
            parts = [merged, *parts[2:]]
    return vocab, merges


def save_clip_tokenizer(directory: Path, pad_token: str = EOS) -> Path:
    """Write a byte-level BPE as a `CLIPTokenizer` directory (deterministic, no download)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    directory = Path(directory)
    raw_dir = directory / "_bpe"
    raw_dir.mkdir(parents=True, exist_ok=True)
    # Every byte gets a piece, so no input ever maps to the unknown token (which is EOS here,
    # and an early EOS would cut the prompt short). Sorted: the library lists it in hash order.
    vocab, merges = _vocab_and_merges(sorted(pre_tokenizers.ByteLevel.alphabet()))
    assert len(vocab) <= VOCAB_SIZE, len(vocab)
    (raw_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (raw_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")

    clip = CLIPTokenizer.from_pretrained(
        raw_dir,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )
    clip.save_pretrained(directory)
    for f in raw_dir.iterdir():
        f.unlink()
    raw_dir.rmdir()
    return directory


def vocab_size(directory: Path) -> int:
    from transformers import CLIPTokenizer

    return len(CLIPTokenizer.from_pretrained(directory))
