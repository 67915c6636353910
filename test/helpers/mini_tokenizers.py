"""Tokenizers of the real families' kinds, trained on the spot with `tokenizers` (no download), so that
two stages really have different vocabularies in tests:

* :func:`llama_style` -- SentencePiece-style BPE (Metaspace word-start mark, byte fallback, ``<s>``,
  ``</s>``, ``<unk>``), as Vicuna/Llama-2 and hence Video-LLaVA, LLaVA-1.5 and EventGPT use;
* :func:`qwen_style` -- byte-level BPE (GPT-2 pre-tokenisation, ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>``), as Qwen2 and hence llava-interleave-qwen / LLaVA-OneVision use.

Both know the media placeholders ``<image>`` and ``<video>`` as single special tokens, and return a
transformers ``PreTrainedTokenizerFast`` (saved and loaded back with ``AutoTokenizer``).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cascade_sd_ros.core.synth.scene import VOCABULARY

MEDIA = ("<image>", "<video>")
_EXTRA_TEXT = (
    "USER: describe the scene ASSISTANT: what do you see in this video? a person walks a dog "
    "across the street while cars pass by; the camera moves slowly. hello world, helpful, helicopter "
    "unbelievable events happen every day 12345 67890 don't isn't the quick brown fox jumps over the lazy dog"
)


def corpus(extra: Iterable[str] = ()) -> list[str]:
    """Captions of the zoo's grammar plus some ordinary English: both tokenizers learn both."""
    words = list(VOCABULARY)
    lines = [" ".join(words[i : i + 6]) for i in range(0, len(words), 3)]
    lines += [
        f"a {c} {s} moves {d}" for c in ("red", "green", "blue") for s in ("circle", "square") for d in ("left", "up")
    ]
    return [*lines, _EXTRA_TEXT, *extra]


def llama_style(vocab_size: int = 400, extra: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """SentencePiece-like BPE: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then the media placeholders."""
    specials = ["<unk>", "<s>", "</s>", *MEDIA]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(bytes_), special_tokens=[*specials, *bytes_], show_progress=False
    )
    tok.train_from_iterator(corpus(extra), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=list(MEDIA),
        model_max_length=4096,
    )


def qwen_style(vocab_size: int = 500, extra: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Byte-level BPE: ``<|endoftext|>`` 0 (pad and eos), ``<|im_start|>``, ``<|im_end|>``, media; no bos."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *MEDIA]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(extra), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>", *MEDIA],
        model_max_length=4096,
    )
