"""The shared zoo tokenizer: grammar round trips, Video-LLaVA specials, save/load through AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade_sd_ros.core.spec.prompt import build_prompt_ids, format_prompt
from cascade_sd_ros.core.synth.scene import VOCABULARY, caption, sample_scene
from cascade_sd_ros.core.zoo.tokenizer import (
    BOS,
    DEFAULT_QUESTION,
    EOS,
    IMAGE,
    PAD,
    UNK,
    VIDEO,
    build_tokenizer,
    load_tokenizer,
    vocabulary,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(folder)
    return folder


def test_ids_are_fixed_and_unique() -> None:
    words = vocabulary()
    assert len(words) == len(set(words))
    assert words[:6] == [PAD, UNK, BOS, EOS, IMAGE, VIDEO]
    assert set(VOCABULARY) <= set(words) and {"USER:", "ASSISTANT:"} <= set(words)


def test_captions_round_trip_one_id_per_word(saved: Path) -> None:
    tok = load_tokenizer(saved)
    rng = np.random.default_rng(3)
    for _ in range(50):
        text = caption(sample_scene(rng))
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == len(text.split())
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_specials_and_prompt(saved: Path) -> None:
    tok = load_tokenizer(saved)
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == (PAD, UNK, BOS, EOS)
    ids = tok.encode(format_prompt(DEFAULT_QUESTION, "video"))
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[1:]) == ["USER:", VIDEO, "describe", "the", "scene", "ASSISTANT:"]
    assert tok.decode(ids, skip_special_tokens=True) == "USER: describe the scene ASSISTANT:"


def test_placeholder_expands_for_a_config(saved: Path) -> None:
    from cascade_sd_ros.core.zoo.configs import DATA, build_model

    tok = load_tokenizer(saved)
    model = build_model("target", tok)
    ids = build_prompt_ids(tok, DEFAULT_QUESTION, "video", model.config, num_frames=DATA.num_frames)
    patches = (DATA.image_size // model.config.vision_config.patch_size) ** 2
    assert ids.count(tok.convert_tokens_to_ids(VIDEO)) == DATA.num_frames * (patches + 1)


def test_missing_or_foreign_tokenizer_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
