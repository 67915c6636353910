"""The vocabulary handshake (issue 16): every stage names what its token ids mean (a fingerprint of
its tokenizer's vocabulary and special ids), drafts and commits carry it, and no stage ever uses ids
of another vocabulary -- at run time (set aside, counted, one ERROR naming both) and at start-up of
``demo`` and ``replay`` (one line, exit 2, before any node starts)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from cascade_sd_ros.core.stage_model import (
    Vocabulary,
    VocabularyMismatch,
    check_vocabularies,
    default_stage_source,
    load_stage_model,
    source_vocabulary,
    tiny_vocabulary,
    tokenizer_vocabulary,
)

ZOO_TARGET = default_stage_source("target")
FOREIGN = Vocabulary("0123456789abcdef", "other tokenizer, 99 ids, eos 7")


# ---------------------------------------------------------------------------------------------- core
def test_fingerprint_is_stable_across_loads_and_read_without_weights() -> None:
    a = load_stage_model(ZOO_TARGET, "target").vocab
    b = load_stage_model(ZOO_TARGET, "target").vocab
    assert a == b and len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0
    assert a.summary == "zoo tokenizer, 40 ids, eos 3"
    assert source_vocabulary(ZOO_TARGET) == a  # from the tokenizer alone, as start-up checks read it
    assert source_vocabulary(default_stage_source("drafter")) == a  # the zoo's stages share one tokenizer
    tiny = load_stage_model("tiny:0", "drafter").vocab
    assert tiny == load_stage_model("tiny:1", "target").vocab == source_vocabulary("tiny:5") == tiny_vocabulary()
    assert source_vocabulary("/no/such/folder") is None  # the loader names that problem


def test_fingerprint_differs_between_tiny_and_the_zoo_and_with_special_ids() -> None:
    from transformers import AutoTokenizer

    zoo = source_vocabulary(ZOO_TARGET)
    assert zoo is not None and zoo.fingerprint != tiny_vocabulary().fingerprint
    assert tiny_vocabulary(64).fingerprint != tiny_vocabulary(65).fingerprint
    tok = AutoTokenizer.from_pretrained(ZOO_TARGET, local_files_only=True)
    same = tokenizer_vocabulary(tok, "zoo tokenizer")
    assert same == zoo
    tok.eos_token = "<unk>"  # same token -> id map, another end-of-sequence id
    moved = tokenizer_vocabulary(tok)
    assert moved.fingerprint != zoo.fingerprint and "eos 1" in moved.summary


def test_a_folder_whose_tokenizer_maps_one_token_elsewhere_differs(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "target"
    shutil.copytree(ZOO_TARGET, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(k for k in vocab if not k.startswith("<"))[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two words trade ids: same size, same specials
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    other = source_vocabulary(str(folder))
    assert other is not None and other.summary == source_vocabulary(ZOO_TARGET).summary  # type: ignore[union-attr]
    assert other.fingerprint != source_vocabulary(ZOO_TARGET).fingerprint  # type: ignore[union-attr]


def test_check_vocabularies_names_the_stages_in_one_line() -> None:
    zoo = source_vocabulary(ZOO_TARGET)
    check_vocabularies({"verifier": zoo, "drafter": zoo, "refiner": None}, reference="verifier")
    with pytest.raises(VocabularyMismatch) as err:
        check_vocabularies({"verifier": zoo, "drafter": tiny_vocabulary(), "refiner": zoo}, reference="verifier")
    text = str(err.value)
    assert "\n" not in text and str(zoo) in text and str(tiny_vocabulary()) in text
    assert "verifier" in text and "drafter" in text and "refiner uses" not in text


def test_foreign_vocab_sets_aside_counts_logs_once_and_stays_error_while_it_happens() -> None:
    from types import SimpleNamespace

    from cascade_sd_ros.ros.vocab import FOREIGN_ERROR_S, ForeignVocab

    own = tiny_vocabulary()
    now = [100.0]
    lines: list[str] = []
    guard = ForeignVocab(own, "drafts", "target", lines.append, clock=lambda: now[0])
    ours = SimpleNamespace(vocab_fingerprint=own.fingerprint, vocab_summary=own.summary)
    theirs = SimpleNamespace(vocab_fingerprint=FOREIGN.fingerprint, vocab_summary=FOREIGN.summary)
    silent = SimpleNamespace(vocab_fingerprint="", vocab_summary="")  # a publisher that announces nothing
    assert guard.admit(ours, "drafter") and guard.status() is None
    assert not guard.admit(theirs, "drafter") and not guard.admit(theirs, "drafter")
    assert not guard.admit(theirs, "refiner") and not guard.admit(silent, "drafter")
    assert guard.count == 4 and guard.values()["drafts_foreign_vocab"] == 4
    assert len(lines) == 3  # once per (source, vocabulary)
    assert str(FOREIGN) in lines[0] and str(own) in lines[0] and "drafter" in lines[0]
    assert "no vocabulary announced" in lines[2]
    status = guard.status()
    assert status is not None and status.startswith("4 drafts set aside")
    why = guard.why("drafter")  # what a caption's "no drafts from drafter" says
    assert why is not None and str(own) in why and "set aside" in why and guard.why("refiner") is not None
    now[0] += FOREIGN_ERROR_S + 1
    assert guard.status() is None and guard.why("drafter") is None  # it stopped happening
    assert guard.admit(ours, "drafter") and guard.count == 4


def test_foreign_vocab_routes_text_under_auto_and_text_and_sets_aside_under_same_vocab() -> None:
    from types import SimpleNamespace

    from cascade_sd_ros.ros.vocab import ForeignVocab

    own = tiny_vocabulary()
    ours = SimpleNamespace(vocab_fingerprint=own.fingerprint, vocab_summary=own.summary, draft_text="a", token_ids=[5])
    theirs = SimpleNamespace(
        vocab_fingerprint=FOREIGN.fingerprint, vocab_summary=FOREIGN.summary, draft_text=" red circle", token_ids=[9, 8]
    )
    mute = SimpleNamespace(
        vocab_fingerprint=FOREIGN.fingerprint, vocab_summary=FOREIGN.summary, draft_text="", token_ids=[9]
    )  # another vocabulary and no text: nothing to read
    errors: list[str] = []
    infos: list[str] = []
    auto = ForeignVocab(own, "drafts", "target", errors.append, draft_ids="auto", log_info=infos.append)
    assert auto.route(ours, "drafter") == "ids"
    assert auto.route(theirs, "drafter") == "text" and auto.route(theirs, "drafter") == "text"
    assert len(infos) == 1 and str(FOREIGN) in infos[0] and "re-tokenised" in infos[0]
    assert auto.route(mute, "drafter") is None and auto.count == 1 and len(errors) == 1
    assert auto.values()["drafts_as_text"] == 2
    forced = ForeignVocab(own, "drafts", "target", errors.append, draft_ids="text")
    assert forced.route(ours, "drafter") == "text"  # text even where ids would do
    strict = ForeignVocab(own, "drafts", "target", errors.append, draft_ids="same-vocab")
    assert strict.route(theirs, "drafter") is None and strict.count == 1
    commit = SimpleNamespace(
        vocab_fingerprint=FOREIGN.fingerprint,
        vocab_summary=FOREIGN.summary,
        text="a red",
        token_ids=[1, 2],
        final=False,
    )
    assert ForeignVocab(own, "commits", "drafter", errors.append, draft_ids="auto").route(commit, "verifier") == "text"
    with pytest.raises(ValueError, match="draft_ids"):
        ForeignVocab(own, "drafts", "target", errors.append, draft_ids="words")


# ------------------------------------------------------------------------------ messages both ways
def test_drafts_and_commits_carry_the_vocabulary() -> None:
    pytest.importorskip("rclpy")
    from cascade_sd_ros.core.rounds import Draft
    from cascade_sd_ros.ros.outputs import draft_msg, message_vocabulary

    d = Draft(
        stage=0,
        commit_seq=0,
        start_position=0,
        token_ids=(5,),
        confidence=(0.5,),
        upstream_drafted=0,
        upstream_accepted=0,
        compute_ms=1.0,
        degraded=False,
        degraded_reason="",
    )
    msg = draft_msg(1, 2, "cam", d, FOREIGN)
    assert (msg.vocab_fingerprint, msg.vocab_summary) == (FOREIGN.fingerprint, FOREIGN.summary)
    assert message_vocabulary(msg) == FOREIGN


# ------------------------------------------------------------------------------------- nodes, one process
MAX_NEW = 8


@pytest.mark.ros
def test_stages_of_another_vocabulary_are_set_aside_and_the_caption_is_the_verifiers(rclpy_context: Any) -> None:
    """Drafter and refiner on tiny models, the verifier on the zoo (what a target_model:=... launch
    with the shipped upstream stages amounts to): neither side uses the other's ids, each counts them,
    diagnostics go ERROR naming both vocabularies, and the captions are the verifier alone's."""
    from cascade_sd_ros.core.spec.engine import target_only_greedy
    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.packets import PacketConfig
    from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes
    from cascade_sd_ros.tools.pipeline import PipelineConfig, SensorPlayer, build_pipeline, play_scenes, scene_rounds

    stream = StreamConfig(
        n_scenes=4,
        height=48,
        width=48,
        seed=5,
        clocks=ClockModel(jitter_ms=0.0, drop_rate=0.0),
        packets=PacketConfig(time_threshold_us=5000),
    )
    scenes = list(iter_scenes(stream))
    rounds = scene_rounds(stream)
    params = rounds.params()
    params["common"] = {**params["common"], "max_new_tokens": MAX_NEW}
    params["video_verifier"] = {**params["video_verifier"], "draft_wait": 0.2, "max_wait": 0.5}
    config = PipelineConfig(models={"target": ZOO_TARGET, "refiner": "tiny:0", "drafter": "tiny:0"}, params=params)
    models = {
        "target": load_stage_model(ZOO_TARGET, "target"),
        "refiner": load_stage_model("tiny:0", "refiner"),
        "drafter": load_stage_model("tiny:0", "drafter"),
    }
    alone = load_stage_model(ZOO_TARGET, "target")
    pipeline = build_pipeline(config, rclpy_context, models=models)  # given models: no start-up check
    verifier = pipeline.verifier
    drafter, refiner = pipeline.stage_nodes["drafter"], pipeline.stage_nodes["refiner"]
    logged: list[str] = []
    for guard in (verifier.drafts_foreign, refiner.commits_foreign, drafter.commits_foreign):
        guard.log_error = logged.append
    player = SensorPlayer(context=rclpy_context)
    try:
        pipeline.start()
        assert player.wait_matched(config.image_subscribers(), config.event_subscribers())
        finals = play_scenes(pipeline, player, scenes, rounds, timeout_s=60)  # the last one leads out
        assert len(finals) >= 3
        for i, msg in sorted(finals.items()):
            # no foreign id was verified (index 2 is the verifier's own draft head, on for the zoo target)
            assert msg is not None and list(msg.drafted_per_stage)[:2] == [0, 0]
            inp = verifier.inputs[rounds.round_ids[i]]
            want = target_only_greedy(alone.adapter, alone.context(inp.frames, inp.question), MAX_NEW)
            assert list(msg.token_ids) == want, f"scene {i}: caption differs from the verifier alone"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            verifier.drafts_foreign.count and refiner.commits_foreign.count and drafter.commits_foreign.count
        ):
            time.sleep(0.05)
        assert verifier.drafts_foreign.count > 0 and verifier.drafts_in.malformed == 0
        assert refiner.commits_foreign.count > 0 and drafter.commits_foreign.count > 0
        assert refiner.drafts_foreign.count == 0  # the drafter and refiner share tiny's vocabulary
        zoo, tiny = models["target"].vocab, tiny_vocabulary()
        assert all(str(zoo) in line and str(tiny) in line for line in logged)
        assert 2 <= len(logged) <= 4  # one per (stage, source, vocabulary): never one per message
        seen: list[tuple[int, str, dict[str, object]]] = []
        verifier.publish_status = lambda level, message, values: seen.append((level, message, values))
        verifier.publish_diagnostics()
        level, message, values = seen[0]
        assert level == 2 and str(zoo) in message and str(tiny) in message, message
        assert values["drafts_foreign_vocab"] == verifier.drafts_foreign.count and values["vocab"] == str(zoo)
        assert all(n.stage.snapshot()["worker_errors"] == 0 for n in pipeline.nodes)
    finally:
        pipeline.close()
        player.destroy_node()


# ------------------------------------------------------------------------------ demo / replay start-up
@pytest.mark.parametrize("command", ["demo", "replay"])
def test_demo_and_replay_refuse_a_mix_of_vocabularies_at_once(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cascade_sd_ros.tools import cli, pipeline

    def no_nodes(*_: Any, **__: Any) -> Any:
        raise AssertionError("a node was built before the vocabularies were checked")

    monkeypatch.setattr(pipeline, "build_pipeline", no_nodes)
    monkeypatch.setattr(pipeline, "load_stage_model", no_nodes)
    args = (
        ["demo", "--scenes", "1", "--fast"]
        if command == "demo"
        else ["replay", str(tmp_path / "no_such_bag"), "--out", str(tmp_path / "out")]
    )
    t0 = time.monotonic()
    rc = cli.main([*args, "--model", f"target={ZOO_TARGET}", "--model", "drafter=tiny:0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert time.monotonic() - t0 < 20
    line = [ln for ln in err if "cannot cooperate" in ln]
    assert len(line) == 1, err
    zoo = source_vocabulary(ZOO_TARGET)
    assert str(zoo) in line[0] and str(tiny_vocabulary()) in line[0] and "drafter" in line[0]
    assert "verifier" in line[0]


def test_a_text_draft_message_becomes_own_ids_continuing_the_commit() -> None:
    pytest.importorskip("rclpy")
    from transformers import AutoTokenizer

    from cascade_sd_ros.core.rounds import Draft
    from cascade_sd_ros.ros.outputs import DraftMessageError, draft_from_text_msg, draft_msg

    zoo = AutoTokenizer.from_pretrained(ZOO_TARGET, local_files_only=True)
    committed = zoo.encode("a red circle", add_special_tokens=False)
    d = Draft(
        stage=0,
        commit_seq=2,
        start_position=7,
        token_ids=(11, 12),
        confidence=(0.5, 0.4),
        upstream_drafted=0,
        upstream_accepted=0,
        compute_ms=1.0,
        degraded=False,
        degraded_reason="",
    )
    msg = draft_msg(1, 2, "cam", d, FOREIGN, text=" moves left", start_position=len(committed))
    assert msg.draft_text == " moves left" and msg.start_position == len(committed)  # target tokens, not its own
    own = draft_from_text_msg(msg, committed, zoo)
    assert own is not None and own.start_position == len(committed)
    assert own.confidence == pytest.approx((0.4,) * len(own.token_ids))  # the draft's least confident, per id
    assert zoo.decode([*committed, *own.token_ids]) == "a red circle moves left"
    grown = zoo.encode("a red circle moves", add_special_tokens=False)  # the verifier committed more since
    own = draft_from_text_msg(msg, grown, zoo)
    assert own is not None and zoo.decode([*grown, *own.token_ids]) == "a red circle moves left"
    msg.draft_text = " is still"
    assert draft_from_text_msg(msg, grown, zoo) is None  # contradicts the commit: stale
    msg.draft_text = "x" * 5000
    with pytest.raises(DraftMessageError, match="characters"):
        draft_from_text_msg(msg, grown, zoo)


def test_text_ports_carry_a_foreign_drafters_draft_into_the_verifiers_ids(tmp_path: Path) -> None:
    """Both ends as the nodes use them: the drafter (foreign zoo tokenizer) reads the verifier's
    commit through its text, drafts, publishes text at a start in the target's tokens; the verifier
    reads it back into its own ids, whole; ids where the vocabularies agree."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from cascade_sd_ros.core.rounds import Draft
    from cascade_sd_ros.core.zoo.foreign import foreign_tokenizer
    from cascade_sd_ros.ros.text_port import TextPort

    zoo_tok = AutoTokenizer.from_pretrained(ZOO_TARGET, local_files_only=True)
    words = [t for t, _ in sorted(zoo_tok.get_vocab().items(), key=lambda kv: kv[1])]
    f_tok = foreign_tokenizer(words)
    zoo = SimpleNamespace(codec=zoo_tok, vocab=tokenizer_vocabulary(zoo_tok), adapter=SimpleNamespace(vocab_size=40))
    fd = SimpleNamespace(codec=f_tok, vocab=tokenizer_vocabulary(f_tok), adapter=SimpleNamespace(vocab_size=57))
    errors: list[str] = []
    up = TextPort(fd, "commits", "drafter", "auto", errors.append, lambda _: None)  # type: ignore[arg-type]
    down = TextPort(zoo, "drafts", "target", "auto", errors.append, lambda _: None)  # type: ignore[arg-type]
    committed = zoo_tok.encode("a red circle", add_special_tokens=False)
    commit = SimpleNamespace(
        vocab_fingerprint=zoo.vocab.fingerprint,
        vocab_summary=zoo.vocab.summary,
        round_id=4,
        commit_seq=2,
        token_ids=committed,
        text=zoo_tok.decode(committed),
        final=False,
    )
    own = up.commit_ids(commit)
    assert own == f_tok.encode("a red circle", add_special_tokens=False) and own != committed
    draft = Draft(
        stage=0,
        commit_seq=2,
        start_position=len(own),
        token_ids=tuple(f_tok.encode(" moves left", add_special_tokens=False)),
        confidence=(0.9, 0.8),
    )
    text, start = up.outgoing(4, [*own, *draft.token_ids], draft)  # type: ignore[misc]
    assert (text, start) == (" moves left", len(committed))
    msg = SimpleNamespace(
        vocab_fingerprint=fd.vocab.fingerprint,
        vocab_summary=fd.vocab.summary,
        stage=0,
        commit_seq=2,
        start_position=start,
        token_ids=list(draft.token_ids),
        confidence=[0.9, 0.8],
        branch_token_ids=[],
        branch_parents=[],
        draft_text=text,
        upstream_drafted=0,
        upstream_accepted=0,
        compute_ms=1.0,
        degraded=False,
        degraded_reason="",
    )
    got = down.incoming_draft(msg, "drafter", lambda: committed)
    assert got is not None and zoo_tok.decode([*committed, *got.token_ids]) == "a red circle moves left"
    assert down.values()["drafts_as_text"] == 1 and not errors
    msg.draft_text = " is still and"  # the verifier has committed another word since: stale
    assert down.incoming_draft(msg, "drafter", lambda: committed + [committed[0]]) is None
    assert down.values()["drafts_text_stale"] == 1
    same = SimpleNamespace(
        **{**vars(msg), "vocab_fingerprint": zoo.vocab.fingerprint, "token_ids": [5, 6], "confidence": [0.5, 0.5]}
    )
    got = down.incoming_draft(same, "drafter", lambda: committed)
    assert got is not None and got.token_ids == (5, 6)  # ids where the vocabularies agree
