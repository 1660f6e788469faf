"""Tiny random-weight text-to-speech models: Bark (as `suno/bark-small`) and VITS (as
`facebook/mms-tts-eng`).

Same classes, file names and id layout as the hub repos, shrunk so one synthesis takes well under
a second on a CPU; the serving code loads them with the exact `from_pretrained` calls it uses for
the real ones. The audio is noise, but it has the real sample rates, frame rates (Bark 75 codec
frames/s, 320 samples each; VITS 256 samples per spectrogram frame) and batching behaviour.

Bark's token ids are offsets into one shared embedding table. The real layout, scaled down:

    semantic model input:  [0, S) semantic tokens, S = EOS/pad, ... | text ids + TEXT_OFFSET |
                           text pad, ..., infer token
    coarse model input:    [0, S) semantic | S + [0, 2C) two codebooks | pad | _ | infer

with S = 10_000 and C = 1024 in the real model, `SEMANTIC_VOCAB` and `CODEBOOK` here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# -- Bark ---------------------------------------------------------------------------------------
SEMANTIC_VOCAB = 40  # S: semantic tokens 0..S-1; S itself is EOS and the semantic pad
SEMANTIC_OUT = SEMANTIC_VOCAB + 8  # like 10_048: a few unused ids above EOS
CODEBOOK = 32  # C: entries per Encodec codebook
N_COARSE, N_FINE = 2, 8  # codebooks predicted by the coarse model, in total (6 kbps Encodec)
MAX_TEXT_TOKENS = 64  # real: 256; longer prompts are refused by the pipeline
BARK_SAMPLE_RATE = 24_000
# Generation caps that keep a tiny synthesis short: at least 8 and at most 24 semantic tokens
# (≈ 0.16–0.5 s of audio). Without `min_new_tokens` a random model may emit EOS first and
# produce no audio at all.
SEMANTIC_MIN_NEW, SEMANTIC_MAX_NEW = 8, 24
VOICE_PRESETS = ("v2/en_speaker_0", "v2/en_speaker_1")

# -- VITS ---------------------------------------------------------------------------------------
VITS_SAMPLE_RATE = 16_000  # MMS-TTS
VITS_BLANK = "_"  # id 0: `add_blank` puts it between characters, and it pads batches
_VITS_CHARS = [VITS_BLANK, " ", "'", "-", *"abcdefghijklmnopqrstuvwxyz", *"0123456789"]


def build_bark(directory: Path) -> None:
    """`BarkModel` + `BarkProcessor` (tokenizer and two voice presets) in ``directory``.

    >>> build_bark(Path("/tmp/tiny-bark"))  # doctest: +SKIP
    >>> BarkProcessor.from_pretrained("/tmp/tiny-bark").available_voice_presets  # doctest: +SKIP
    ['v2/en_speaker_0', 'v2/en_speaker_1']
    """
    from transformers import (
        BarkCoarseConfig,
        BarkConfig,
        BarkFineConfig,
        BarkModel,
        BarkSemanticConfig,
        EncodecConfig,
        GenerationConfig,
    )

    directory = Path(directory)
    tokenizer = _bert_tokenizer()
    text_vocab = len(tokenizer)
    text_offset = SEMANTIC_OUT  # text ids start right after the semantic output ids (10_048)
    text_pad = text_offset + text_vocab  # like 129_595 = 10_048 + 119_547
    semantic_infer = text_pad + 4  # like 129_599
    coarse_pad = SEMANTIC_VOCAB + N_COARSE * CODEBOOK  # like 12_048
    coarse_vocab = coarse_pad + 8  # like 12_096: pad, one spare, the infer token, unused

    sub = dict(hidden_size=32, num_layers=2, num_heads=2, dropout=0.0, bias=False)
    config = BarkConfig(
        # block_size ≥ the longest sequence each model sees: text + infer token + generated
        # tokens (semantic); semantic window + infer + coarse history + window (coarse).
        semantic_config=BarkSemanticConfig(
            **sub, block_size=128, input_vocab_size=semantic_infer + 1,
            output_vocab_size=SEMANTIC_OUT).to_dict(),
        coarse_acoustics_config=BarkCoarseConfig(
            **sub, block_size=128, input_vocab_size=coarse_vocab,
            output_vocab_size=coarse_vocab).to_dict(),
        fine_acoustics_config=BarkFineConfig(
            **sub, block_size=64, input_vocab_size=CODEBOOK + 8, output_vocab_size=CODEBOOK + 8,
            n_codes_total=N_FINE, n_codes_given=1).to_dict(),
        # Real Encodec frame geometry (hop 8·5·4·2 = 320 samples → 75 frames/s at 24 kHz) with
        # few channels. 6 kbps is the top bandwidth, so the quantizer has exactly 8 codebooks.
        codec_config=EncodecConfig(
            sampling_rate=BARK_SAMPLE_RATE, target_bandwidths=[1.5, 3.0, 6.0], hidden_size=16,
            num_filters=4, num_lstm_layers=1, codebook_size=CODEBOOK,
            upsampling_ratios=[8, 5, 4, 2]).to_dict(),
    )
    torch.manual_seed(0)
    model = BarkModel(config).eval()
    with torch.no_grad():
        # Encodec initialises its codebooks to zeros (they are learnt by k-means): every code
        # would decode to the same sound and seeds would make no audible difference.
        for layer in model.codec_model.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
    # A plain `GenerationConfig` holding the three stage configs as dicts: the layout of the
    # hub's generation_config.json, and what `BarkModel.generate` reads back.
    model.generation_config = GenerationConfig(
        semantic_config=dict(
            eos_token_id=SEMANTIC_VOCAB, semantic_vocab_size=SEMANTIC_VOCAB,
            text_encoding_offset=text_offset, text_pad_token=text_pad,
            semantic_infer_token=semantic_infer, max_input_semantic_length=MAX_TEXT_TOKENS,
            max_new_tokens=SEMANTIC_MAX_NEW, min_new_tokens=SEMANTIC_MIN_NEW),
        coarse_acoustics_config=dict(
            coarse_semantic_pad_token=coarse_pad, coarse_infer_token=coarse_pad + 2,
            n_coarse_codebooks=N_COARSE, max_coarse_input_length=32, max_coarse_history=48,
            sliding_window_len=16),
        fine_acoustics_config=dict(
            max_fine_history_length=32, max_fine_input_length=64, n_fine_codebooks=N_FINE),
        sample_rate=BARK_SAMPLE_RATE, codebook_size=CODEBOOK,
    )
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    _save_voice_presets(directory)


def _bert_tokenizer():
    """A cased WordPiece vocabulary like bert-base-multilingual-cased's (Bark's tokenizer): the
    five BERT specials, single characters, their ``##`` continuations and a few whole words."""
    from transformers import BertTokenizer

    chars = [*"abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *"0123456789",
             *".,!?;:'\"-()[]"]
    words = "hello world the a and is my dog cat cute speech voice".split()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars,
              *(f"##{c}" for c in chars if c.isalnum()), *words]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=False,
                         model_max_length=512)


def _save_voice_presets(directory: Path) -> None:
    """Write presets in the layout `BarkProcessor.save_pretrained` produces: one ``.npy`` per
    prompt and an index json. Shapes follow the real ones: semantic ``(n,)``, coarse
    ``(2, m)`` and fine ``(8, m)`` with m ≈ 1.5 n (75 codec frames/s vs 49.9 semantic/s)."""
    rng = np.random.default_rng(0)
    index: dict[str, object] = {"repo_or_path": str(directory)}
    for name in VOICE_PRESETS:
        n_semantic, n_frames = 20, 30
        fine = rng.integers(0, CODEBOOK, size=(N_FINE, n_frames), dtype=np.int64)
        arrays = {
            "semantic_prompt": rng.integers(0, SEMANTIC_VOCAB, size=n_semantic, dtype=np.int64),
            "coarse_prompt": fine[:N_COARSE].copy(),  # coarse = the first 2 fine codebooks
            "fine_prompt": fine,
        }
        entry = {}
        for key, array in arrays.items():
            relative = f"speaker_embeddings/{name}_{key}.npy"
            (directory / relative).parent.mkdir(parents=True, exist_ok=True)
            np.save(directory / relative, array, allow_pickle=False)
            entry[key] = relative
        index[name] = entry
    (directory / "speaker_embeddings_path.json").write_text(json.dumps(index, indent=2))


def build_vits(directory: Path) -> None:
    """`VitsModel` + `VitsTokenizer` (characters, no phonemizer), like MMS-TTS."""
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_VITS_CHARS)}
    vocab["<unk>"] = len(vocab)  # in the vocabulary, so it never becomes an added token
    config = VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ffn_dim=32, flow_size=16, spectrogram_bins=16, prior_encoder_num_flows=2,
        prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
        duration_predictor_num_flows=2, duration_predictor_filter_channels=16,
        # MMS geometry (hop 8·8·2·2 = 256 samples at 16 kHz) with few channels.
        upsample_initial_channel=16, upsample_rates=[8, 8, 2, 2],
        upsample_kernel_sizes=[16, 16, 4, 4], resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], sampling_rate=VITS_SAMPLE_RATE,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    VitsModel(config).eval().save_pretrained(directory, safe_serialization=True)
    vocab_file = directory / "_vocab.json"
    vocab_file.write_text(json.dumps(vocab))
    tokenizer = VitsTokenizer(vocab_file=str(vocab_file), pad_token=VITS_BLANK, unk_token="<unk>",
                              language="eng", add_blank=True, normalize=True, phonemize=False)
    tokenizer.save_pretrained(directory)
    vocab_file.unlink()
