"""Offline CLIP-style BPE tokenizers, trained locally so no hub download is needed.

`CLIPTokenizer` reads a byte-level BPE whose word-final pieces end in ``</w>``; training one with
`tokenizers` on a fixed word list gives the same file format as the real SDXL tokenizers.
"""

from __future__ import annotations

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


def _corpus(alphabet: list[str]) -> list[str]:
    # Deterministic pseudo-sentences: enough co-occurrence for merges, no randomness. Each byte
    # also appears as a word of its own, so every ``c</w>`` piece exists as well.
    n = len(_WORDS)
    sentences = [" ".join(_WORDS[(i * k) % n] for k in range(1, 12)) for i in range(1, 400)]
    return sentences + [" ".join(alphabet)]


def save_clip_tokenizer(directory: Path, pad_token: str = EOS) -> Path:
    """Train a byte-level BPE and save it as a `CLIPTokenizer` directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    directory = Path(directory)
    raw_dir = directory / "_bpe"
    raw_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    # Split like CLIP does (letters, digits, punctuation runs) so pieces match at encode time.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(True)]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        # Every byte gets a piece, so no input ever maps to the unknown token (which is EOS
        # here, and an early EOS would cut the prompt short).
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(alphabet), trainer=trainer)
    tokenizer.model.save(str(raw_dir))

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
