"""Tiny random-weight chat LLM: a 2-layer Llama with a locally trained byte-level BPE.

Stand-in for `TinyLlama/TinyLlama-1.1B-Chat-v1.0`: same model class, same special tokens
(``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) and the same Zephyr-style chat template, saved with
`save_pretrained`, so `LLMPipeline` loads it with the exact calls it uses for the real one.
Random weights speak gibberish, but every token is a real byte sequence, so decoding,
streaming and stop sequences are exercised as with a trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
# Trained first, in this order, so the ids are fixed; the model config must use the same ids
# or generation never sees its end-of-sequence token.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
VOCAB_SIZE = 512  # 256 byte pieces + 4 special tokens + ~250 merges
MAX_POSITIONS = 512  # context of the tiny model; the real TinyLlama has 2048

# TinyLlama-1.1B-Chat-v1.0's template (Zephyr style), rewritten without the whitespace tricks:
# "<|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n". The role markers are plain text,
# not special tokens, exactly as in the real tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_TEXT = (
    "hello hi how are you today I am fine thanks the a an of to in is it that for on with "
    "as was he she they we you this be at by not or from have has had but what all were "
    "when there can said which do their if will each about up out them then many some so "
    "these would other into more her two like him see time could no make than first been "
    "its who now people my made over did down only way find use may water long little very "
    "after words called just where most know system user assistant answer question please "
    "tell me write story poem code explain why because cat dog hat sun moon sea tree"
).split()


def _corpus() -> list[str]:
    # Deterministic pseudo-chat lines: enough co-occurrence for merges, no randomness. The
    # template's own markers are included so they merge like they do in a trained tokenizer.
    n = len(_TEXT)
    lines = [" ".join(_TEXT[(i * k) % n] for k in range(1, 14)) for i in range(1, 300)]
    markers = ["<|system|>\n", "<|user|>\n", "<|assistant|>\n", "Hello, world! 123 ÄÖÜ é 猫"]
    return lines + markers * 20


def build_tokenizer(directory: Path):
    """Train the byte-level BPE and save it as a `PreTrainedTokenizerFast` directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Byte-level (GPT-2 style): any UTF-8 input maps to byte pieces, never to <unk>, and
    # multi-byte characters can be split across tokens, which streaming must cope with.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    # Like Llama: plain encoding prepends <s>. Chat templates are encoded without it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=MAX_POSITIONS, padding_side="left", clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    # transformers 5 records its internal class name ("TokenizersBackend"); the public alias
    # loads the same tokenizer.json on transformers 4.x as well.
    config_file = Path(directory) / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2))
    return fast


def build_llm(directory: Path) -> None:
    """Write a tiny `LlamaForCausalLM` + tokenizer + generation config into ``directory``.

    >>> build_llm(Path("/tmp/tiny-llm"))  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("/tmp/tiny-llm")  # doctest: +SKIP
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,  # grouped-query attention, as TinyLlama
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, max_length=MAX_POSITIONS,
    ).save_pretrained(directory)
