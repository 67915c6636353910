"""The zoo drafter under another tokenizer: a drafter of a foreign vocabulary over the zoo's scenes.

Text drafting (:mod:`cascade_sd_ros.core.spec.text_drafts`) is for drafters whose tokenizer is not
the target's. Training one for the zoo costs most of an hour of both cores; this builds one in
seconds instead, from the shipped drafter: same weights, each row of its embedding and LM head moved
to where a different tokenizer puts the same word. That tokenizer differs from the zoo's in every way
a real one can without changing the words: SentencePiece-style word-start marks ("\u2581red") and
decoding, other special tokens (``<|startoftext|>`` / ``<|endoftext|>``), ids in another order, and
more of them (punctuation and digits the zoo never says). So its ids and fingerprint match nothing of
the zoo's, and only text crosses: what it drafts is what the zoo drafter would, which is what a
benchmark of the text path against same-vocabulary drafting wants.

``build_foreign_drafter(zoo_drafter_folder, out_folder)`` writes a Hugging Face folder (safetensors,
tokenizer, processor) that :func:`cascade_sd_ros.core.stage_model.load_stage_model` loads like any.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from cascade_sd_ros.core.zoo.tokenizer import BOS, EOS, IMAGE, PAD, UNK, VIDEO, load_tokenizer

__all__ = ["FOREIGN_SEED", "build_foreign_drafter", "foreign_tokenizer"]

FOREIGN_SEED = 16  # fixes the foreign ids' order
MARK = "\u2581"  # SentencePiece's word-start mark
F_BOS, F_EOS, F_UNK = "<|startoftext|>", "<|endoftext|>", "<unk>"
_EXTRA = tuple(f"{MARK}{c}" for c in ",;:!()0123456789") + (f"{MARK}the", f"{MARK}of", f"{MARK}with")
# zoo special -> foreign special (the media placeholders keep their names: configs point at them)
_SPECIAL_MAP = {PAD: F_EOS, BOS: F_BOS, EOS: F_EOS, UNK: F_UNK, IMAGE: IMAGE, VIDEO: VIDEO}


def _foreign_tokens(zoo_words: list[str]) -> list[str]:
    """Every foreign token in id order: specials, then the words and extras shuffled by the seed."""
    words = [f"{MARK}{w}" for w in zoo_words if w not in _SPECIAL_MAP]
    rest = words + [t for t in _EXTRA if t not in words]
    random.Random(FOREIGN_SEED).shuffle(rest)
    return [F_UNK, F_BOS, F_EOS, IMAGE, VIDEO, *rest]


def foreign_tokenizer(zoo_words: list[str]) -> PreTrainedTokenizerFast:
    """The foreign tokenizer for the zoo's words (``zoo_words``: the zoo tokenizer's tokens in id order)."""
    tokens = _foreign_tokens(zoo_words)
    vocab = {t: i for i, t in enumerate(tokens)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=F_UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme="always")]
    )
    core.decoder = decoders.Metaspace(replacement=MARK, prepend_scheme="always")
    core.post_processor = processors.TemplateProcessing(
        single=f"{F_BOS} $A", pair=f"{F_BOS} $A $B", special_tokens=[(F_BOS, vocab[F_BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=F_BOS,
        eos_token=F_EOS,
        unk_token=F_UNK,
        pad_token=F_EOS,
        extra_special_tokens=[IMAGE, VIDEO],
        model_max_length=1024,
    )


def _remap_config(config: dict, ids: dict[str, int], size: int) -> dict:
    """The zoo drafter's config.json with the foreign tokenizer's ids and vocabulary size."""
    out = json.loads(json.dumps(config))
    for cfg in (out, out.get("text_config", {})):
        for key, token in (("bos_token_id", F_BOS), ("eos_token_id", F_EOS), ("pad_token_id", F_EOS)):
            if key in cfg:
                cfg[key] = ids[token]
    if "text_config" in out:
        out["text_config"]["vocab_size"] = size
    for key in ("image_token_index", "image_token_id"):
        if key in out:
            out[key] = ids[IMAGE]
    return out


def build_foreign_drafter(zoo_drafter: Path, out: Path) -> Path:
    """Write the zoo drafter at ``zoo_drafter`` with the foreign tokenizer into ``out`` (replaced)."""
    zoo_tok = load_tokenizer(zoo_drafter)
    zoo_words = [t for t, _ in sorted(zoo_tok.get_vocab().items(), key=lambda kv: kv[1])]
    tok = foreign_tokenizer(zoo_words)
    ids = tok.get_vocab()
    size = len(ids)
    # zoo id -> foreign id of the same word (a special -> its counterpart)
    move = {i: ids[_SPECIAL_MAP.get(w, f"{MARK}{w}")] for i, w in enumerate(zoo_words)}
    state = load_file(str(zoo_drafter / "model.safetensors"))
    # the two vocabulary-sized tensors, under either of transformers' key layouts
    rows = [k for k in state if k.endswith(("embed_tokens.weight", "lm_head.weight"))]
    if len(rows) != 2:
        raise ValueError(f"{zoo_drafter}: expected one embedding and one LM head, found {rows}")
    for key in rows:
        old = state[key]  # [V_zoo, H]
        new = torch.zeros((size, old.shape[1]), dtype=old.dtype)
        if key.endswith("lm_head.weight"):  # tokens the zoo never had score as its unknown word does
            new[:] = old[zoo_words.index(UNK)]
        for i, j in move.items():
            if zoo_words[i] != PAD:  # pad and eos share one foreign token: eos's rows win
                new[j] = old[i]
        state[key] = new
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((zoo_drafter / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(_remap_config(config, ids, size), indent=2) + "\n")
    gen = json.loads((zoo_drafter / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps(_remap_config(gen, ids, size), indent=2) + "\n")
    shutil.copy(zoo_drafter / "preprocessor_config.json", out / "preprocessor_config.json")
    tok.save_pretrained(out)
    return out
