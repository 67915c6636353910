"""The one word-level tokenizer all three zoo models share.

Built in-process with `tokenizers` (no download), saved next to each model, and loaded back with
`transformers.AutoTokenizer` / `PreTrainedTokenizerFast`. Word-level keeps captions short (one id per
word, ~10-20 per caption) and makes every id a grammar word, so per-attribute accuracy is easy to read.

Ids are fixed by construction order: the specials first (pad 0, unk 1, bos 2, eos 3, then the media
placeholders), then prompt words, then the caption grammar of `core.synth.scene.VOCABULARY`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from cascade_sd_ros.core.synth.scene import VOCABULARY

__all__ = [
    "PAD",
    "UNK",
    "BOS",
    "EOS",
    "IMAGE",
    "VIDEO",
    "PROMPT_WORDS",
    "DEFAULT_QUESTION",
    "build_tokenizer",
    "load_tokenizer",
    "decode_text",
]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
IMAGE, VIDEO = "<image>", "<video>"  # Video-LLaVA's media placeholders
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE, VIDEO)
DEFAULT_QUESTION = "describe the scene"
# Video-LLaVA's turn words plus a few question words, so a user can ask in more than one way.
PROMPT_WORDS: tuple[str, ...] = (
    "USER:",
    "ASSISTANT:",
    "describe",
    "the",
    "scene",
    "what",
    "do",
    "you",
    "see",
    "in",
    "this",
    "video",
    "image",
    "?",
    ".",
)


def vocabulary() -> list[str]:
    """Every token, in id order (specials, prompt words, caption grammar; no duplicates)."""
    words: list[str] = []
    for w in (*SPECIALS, *PROMPT_WORDS, *VOCABULARY):
        if w not in words:
            words.append(w)
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The zoo tokenizer: whitespace-split words, bos prepended like Llama's, specials never split."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=[IMAGE, VIDEO],
        padding_side="right",
        model_max_length=1024,
    )
    # Placeholders stay single tokens even when glued to text ("<video>\ndescribe").
    tok.add_special_tokens({"extra_special_tokens": [IMAGE, VIDEO]})
    return tok


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved zoo tokenizer from a local folder; a clear error when it is missing."""
    path = Path(folder)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}: not a saved tokenizer folder")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for special in (IMAGE, VIDEO):
        if tok.convert_tokens_to_ids(special) in (None, tok.unk_token_id):
            raise ValueError(f"tokenizer in {path} lacks the {special} placeholder token")
    return tok


def decode_text(tokenizer: PreTrainedTokenizerBase, token_ids: list[int], skip_special_tokens: bool = False) -> str:
    """``tokenizer.decode`` of one sequence (typed ``str | list[str]`` by transformers, for batches)."""
    text = tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"decoding one sequence gave a {type(text).__name__}, not text")
    return text
