"""Text drafting across tokenizers (issue 16): a draft crosses as text and the receiver re-tokenises it
into its own ids, continuing its committed ids with nothing lost or doubled at the boundary, and a
cascade with a drafter of another vocabulary keeps the target's output exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.mini_tokenizers import llama_style, qwen_style
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_sd_ros.core.spec.text_drafts import (
    CommitTexts,
    TextDrafter,
    continuation_ids,
    draft_text,
    rebase_text_draft,
    resolve_draft_ids,
)
from cascade_sd_ros.core.stage_model import default_stage_source, source_vocabulary
from cascade_sd_ros.core.synth.scene import VOCABULARY

ZOO_TARGET = default_stage_source("target")
WORDS = [*VOCABULARY, "hello", "helicopter", "world", "don't", "12345", "fox", "unseen", "zebra"]


@pytest.fixture(scope="module")
def codecs() -> dict[str, Any]:
    from transformers import AutoTokenizer

    from cascade_sd_ros.core.zoo.foreign import foreign_tokenizer

    zoo = AutoTokenizer.from_pretrained(ZOO_TARGET, local_files_only=True)
    words = [t for t, _ in sorted(zoo.get_vocab().items(), key=lambda kv: kv[1])]
    return {"llama": llama_style(), "qwen": qwen_style(), "zoo": zoo, "foreign": foreign_tokenizer(words)}


def _enc(codec: Any, text: str) -> list[int]:
    return list(codec.encode(text, add_special_tokens=False))


def _dec(codec: Any, ids: list[int]) -> str:
    return str(codec.decode(ids, skip_special_tokens=True))


# ------------------------------------------------------------------------------------------ modes
def test_draft_ids_mode_auto_follows_the_handshake() -> None:
    assert resolve_draft_ids("auto", "aa", "aa") == "same-vocab"
    assert resolve_draft_ids("auto", "aa", "bb") == "text"
    assert resolve_draft_ids("text", "aa", "aa") == "text"
    assert resolve_draft_ids("same-vocab", "aa", "bb") == "same-vocab"  # then the handshake sets them aside
    with pytest.raises(ValueError, match="draft_ids must be one of"):
        resolve_draft_ids("ids", "aa", "aa")


def test_the_two_trained_tokenizers_really_differ(codecs: dict[str, Any]) -> None:
    prints = {name: source_vocabulary_of(c) for name, c in codecs.items()}
    assert len(set(prints.values())) == 4
    text = "a red circle moves left and hello world"
    assert _enc(codecs["llama"], text) != _enc(codecs["qwen"], text)
    assert all(_dec(c, _enc(c, text)) == text for n, c in codecs.items() if n in ("llama", "qwen"))


def source_vocabulary_of(codec: Any) -> str:
    from cascade_sd_ros.core.stage_model import tokenizer_vocabulary

    return tokenizer_vocabulary(codec).fingerprint


# ------------------------------------------------------------------------------------------ boundaries
@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_a_draft_that_starts_mid_word_continues_the_committed_ids(codecs: dict[str, Any], name: str) -> None:
    codec = codecs[name]
    prefix = _enc(codec, "a red circ")  # the target committed part of a word
    ids = continuation_ids(codec, prefix, "le moves left")
    assert _dec(codec, [*prefix, *ids]) == "a red circle moves left"


@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_a_draft_whose_first_characters_merge_with_the_last_committed_token(codecs: dict[str, Any], name: str) -> None:
    codec = codecs[name]
    for cut in range(1, len("hello")):  # every committed cut of "hello"
        prefix = _enc(codec, "hello"[:cut])
        ids = continuation_ids(codec, prefix, "hello world"[cut:])
        assert _dec(codec, [*prefix, *ids]) == "hello world", cut


def test_text_the_receiver_cannot_say_is_cut_never_doubled(codecs: dict[str, Any]) -> None:
    zoo = codecs["zoo"]  # word level: no "zebra"
    prefix = _enc(zoo, "a red")
    ids = continuation_ids(zoo, prefix, " circle zebra moves")
    assert _dec(zoo, [*prefix, *ids]) == "a red circle"
    assert continuation_ids(zoo, prefix, "") == []


def test_draft_text_is_what_the_draft_adds_and_eos_adds_nothing(codecs: dict[str, Any]) -> None:
    llama = codecs["llama"]
    prefix, rest = _enc(llama, "a red"), continuation_ids(llama, _enc(llama, "a red"), " circle moves")
    assert draft_text(llama, prefix, rest) == " circle moves"  # the space before "circle" is kept
    assert draft_text(llama, prefix, [*rest, llama.eos_token_id]) == " circle moves"
    assert draft_text(llama, [], _enc(llama, "a red")) == "a red"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=2, max_size=10),
    cut=st.floats(0.0, 1.0),
    pair=st.sampled_from(
        [("llama", "qwen"), ("qwen", "llama"), ("foreign", "zoo"), ("zoo", "foreign"), ("llama", "llama")]
    ),
)
def test_a_caption_split_anywhere_crosses_between_tokenizers_whole(
    codecs: dict[str, Any], words: list[str], cut: float, pair: tuple[str, str]
) -> None:
    """Publisher A drafts the rest of a caption whose start receiver B committed (cut at any character,
    mid-word included for the subword pairs): B's committed ids plus the re-tokenised draft decode to
    the whole caption, exactly."""
    a, b = (codecs[n] for n in pair)
    full = " ".join(words)
    word_level = {"zoo", "foreign"} & set(pair)
    if word_level:  # word-level vocabularies: only their words, cut between words
        known = set(VOCABULARY)
        full = " ".join(w for w in words if w in known) or "a"
        spaces = [i for i, ch in enumerate(full) if ch == " "] or [len(full)]
        at = spaces[int(cut * (len(spaces) - 1))]
    else:
        at = max(1, int(cut * len(full)))
    committed = full[:at]
    prefix_b = _enc(b, committed)  # what the receiver committed, its own ids
    own_a = _enc(a, _dec(b, prefix_b))  # the publisher's view of that text (TextDrafter.own_prefix)
    draft_a = continuation_ids(a, own_a, full[len(_dec(b, prefix_b)) :])
    text = draft_text(a, own_a, draft_a)
    ids = continuation_ids(b, prefix_b, text)
    assert _dec(b, [*prefix_b, *ids]) == full


def test_a_draft_written_after_an_older_commit_is_rebased_or_dropped(codecs: dict[str, Any]) -> None:
    """Across topics a draft continues the commit its publisher had seen (start_position, in the
    receiver's tokens); the receiver may have committed more since."""
    qwen = codecs["qwen"]
    committed = _enc(qwen, "a red circle moves")
    older = len(_enc(qwen, "a red circle"))
    ids = rebase_text_draft(qwen, committed, older, " moves left and")  # agrees with what came since
    assert ids is not None and _dec(qwen, [*committed, *ids]) == "a red circle moves left and"
    assert rebase_text_draft(qwen, committed, older, " is still") is None  # contradicts it: stale
    assert rebase_text_draft(qwen, committed, older, " mov") == []  # nothing beyond the commit
    assert rebase_text_draft(qwen, committed, len(committed) + 1, " left") is None  # a commit not seen here
    ids = rebase_text_draft(qwen, committed, len(committed), " left")
    assert ids is not None and _dec(qwen, [*committed, *ids]) == "a red circle moves left"


def test_commit_texts_carry_a_foreign_draft_across_topics_whole(codecs: dict[str, Any]) -> None:
    """The drafter (Qwen-style) drafts on the verifier's (Llama-style) commit text; the verifier lays
    the draft's text after its own ids at the start position in its tokens: the caption comes out whole."""
    llama, qwen = codecs["llama"], codecs["qwen"]
    texts = CommitTexts(qwen, keep=2)
    committed = _enc(llama, "a red circ")  # the verifier's commit 3 of round 7, its own ids
    own = texts.own_prefix(7, 3, len(committed), _dec(llama, committed))
    draft = continuation_ids(qwen, own, "le moves left")  # what the drafter proposes, in its ids
    start, text = texts.outgoing(7, 3, own, draft)  # type: ignore[misc]
    assert start == len(committed) and text == "le moves left"
    ids = continuation_ids(llama, committed[:start], text)
    assert _dec(llama, [*committed, *ids]) == "a red circle moves left"
    ahead = continuation_ids(qwen, [*own, *draft], " and a")  # a second draft running ahead on the first
    start, text = texts.outgoing(7, 3, [*own, *draft], ahead)  # type: ignore[misc]
    assert start == len(committed) and text == "le moves left and a"  # from the commit's end
    assert texts.outgoing(7, 0, [], _enc(qwen, "a red")) == (0, "a red")  # before any commit
    assert texts.outgoing(7, 3, _enc(qwen, "a blue"), draft) is None  # does not continue the commit
    texts.own_prefix(7, 4, 5, "x")
    texts.own_prefix(8, 1, 5, "y")  # keep=2: commit 3 of round 7 forgotten
    assert texts.outgoing(7, 3, own, draft) is None


# ------------------------------------------------------------------------------------------ engine
@pytest.fixture(scope="module")
def foreign_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cascade_sd_ros.core.zoo.foreign import build_foreign_drafter

    return build_foreign_drafter(Path(default_stage_source("drafter")), tmp_path_factory.mktemp("fd") / "drafter")


def test_the_foreign_zoo_drafter_has_its_own_vocabulary(foreign_zoo: Path) -> None:
    ours, theirs = source_vocabulary(str(foreign_zoo)), source_vocabulary(ZOO_TARGET)
    assert ours is not None and theirs is not None and ours.fingerprint != theirs.fingerprint
    assert "57 ids, eos 2" in ours.summary and "40 ids, eos 3" in theirs.summary


def test_a_cascade_with_a_foreign_drafter_is_exactly_the_target_and_counts_target_tokens(foreign_zoo: Path) -> None:
    from transformers import AutoTokenizer

    from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
    from cascade_sd_ros.core.stage_model import load_stage_model
    from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample
    from cascade_sd_ros.core.zoo.load import load_zoo

    zoo = load_zoo()
    drafter = load_stage_model(str(foreign_zoo), "drafter")
    ftok = AutoTokenizer.from_pretrained(foreign_zoo, local_files_only=True)
    ztok = AutoTokenizer.from_pretrained(ZOO_TARGET, local_files_only=True)
    text = TextDrafter(drafter.adapter, ftok, ztok, zoo.target.vocab_size, zoo.target.eos_token_id)
    decoder = CascadeDecoder([text, zoo.target])
    drafted = accepted = 0
    for i in range(3):
        clip, events, _ = build_sample(0, EVAL_STREAM, i, zoo.geometry, with_events=True)
        ref = target_only_greedy(zoo.target, zoo.context("target", clip), 24)
        res = decoder.generate([drafter.context(events, "describe the scene"), zoo.context("target", clip)], 24)
        assert res.token_ids == ref, i
        drafted += res.stats.stages[0].drafted
        accepted += res.stats.stages[0].accepted
        # target tokens: what was accepted is a prefix of what the target committed, in its own ids
        assert res.stats.stages[0].accepted <= len(ref)
    assert drafted > 0 and accepted / drafted > 0.3  # the zoo drafter's words, crossing as text


def test_the_text_drafter_only_drafts_greedily(foreign_zoo: Path) -> None:
    from transformers import AutoTokenizer

    from cascade_sd_ros.core.stage_model import load_stage_model

    drafter = load_stage_model(str(foreign_zoo), "drafter")
    tok = AutoTokenizer.from_pretrained(foreign_zoo, local_files_only=True)
    text = TextDrafter(drafter.adapter, tok, tok, 57, 2)
    with pytest.raises(ValueError, match="greedily"):
        text.propose([], 2, temperature=1.0)
    with pytest.raises(ValueError, match="only proposes"):
        text.score([], [1])
