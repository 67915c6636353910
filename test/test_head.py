"""The feature-level draft head: exact as a stage (lossless output in every mode and fallback), its
cache equal to a whole-sequence forward, the target's kept hidden states equal to a plain forward's,
bad event features refused in one line, and the shipped weights small, safetensors-only and loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cascade_sd_ros.core.head import HEAD_MODES, AlignmentMLP, FusedDraftHead, HeadAdapter, HeadConfig, load_head
from cascade_sd_ros.core.head.adapter import STOP_BELOW
from cascade_sd_ros.core.head.features import event_tokens
from cascade_sd_ros.core.head.io import save_head
from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
from cascade_sd_ros.core.zoo import Zoo, default_zoo_path, load_zoo
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample

SHIPPED = default_zoo_path() / "head"
SCENES = (0, 1, 2)


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return load_zoo()


@pytest.fixture(scope="module")
def scenes(zoo: Zoo) -> list[tuple]:
    out = []
    for i in SCENES:
        clip, events, _ = build_sample(0, EVAL_STREAM, i, zoo.geometry)
        out.append((zoo.context("target", clip), zoo.context("drafter", events)))
    return out


def _head(zoo: Zoo, mode: str = "fused") -> HeadAdapter:
    if SHIPPED.is_dir():
        head, align, _ = load_head(SHIPPED)
    else:  # before the weights ship, a seeded random head: exactness holds for any head
        torch.manual_seed(0)
        cfg = HeadConfig(hidden=64)
        head, align = FusedDraftHead(cfg).eval(), AlignmentMLP(cfg).eval()
    return HeadAdapter(head, align, zoo.target, event_encoder=zoo.drafter.model, mode=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", HEAD_MODES)
def test_head_drafts_keep_greedy_output_exact(zoo: Zoo, scenes: list[tuple], mode: str) -> None:
    head = _head(zoo, mode)
    decoder = CascadeDecoder([head, zoo.target], gamma=5)
    drafted = 0
    for ctx_t, ctx_d in scenes:
        ref = target_only_greedy(zoo.target, ctx_t, 32)
        res = decoder.generate([ctx_d, ctx_t], 32)
        assert res.token_ids == ref, f"mode {mode}: {zoo.decode(res.token_ids)!r} != {zoo.decode(ref)!r}"
        drafted += res.stats.stages[0].drafted
    assert drafted > 0  # the head did propose


def test_same_contexts_again_draft_the_same(zoo: Zoo, scenes: list[tuple]) -> None:
    """A round whose target context is the very object of the round before (a repeated scene) must
    still read the target's new states: staleness is told by prefill, not by context identity."""
    head = _head(zoo)
    ctx_t, ctx_d = scenes[0]
    decoder = CascadeDecoder([head, zoo.target], gamma=4, adaptive=False)
    first = decoder.generate([ctx_d, ctx_t], 32).stats.stages[0].accepted
    again = decoder.generate([ctx_d, ctx_t], 32).stats.stages[0].accepted
    assert first == again


def test_missing_event_features_fall_back_to_target_states_exactly(zoo: Zoo, scenes: list[tuple]) -> None:
    head = _head(zoo)
    for ctx_t, ctx_d in scenes[:3]:
        zoo.target.prefill(ctx_t)
        head.prefill_events(None, ctx_d.input_ids[-1], target_current=True)
        assert not head.has_events
        decoder = CascadeDecoder([head, zoo.target], gamma=4)
        assert decoder.generate(None, 32).token_ids == target_only_greedy(zoo.target, ctx_t, 32)


def test_first_draft_token_is_the_targets_own_after_prefill(zoo: Zoo, scenes: list[tuple]) -> None:
    head = _head(zoo, "fused")
    for ctx_t, ctx_d in scenes:
        head.prefill(ctx_d)
        zoo.target.prefill(ctx_t)
        first = int(zoo.target.next_logits([]).argmax())
        assert head.propose([], 3).token_ids[0] == first


def test_stale_target_states_are_not_read(zoo: Zoo, scenes: list[tuple]) -> None:
    """Prefill hiding: the head starts a round before the target has the new clip; the previous
    clip's states must not leak into its drafts (it drafts from events alone until the prefill lands)."""
    (ctx_t0, _), (ctx_t1, ctx_d1) = scenes[0], scenes[1]
    head = _head(zoo, "fused")
    zoo.target.prefill(ctx_t0)
    head.prefill(ctx_d1)  # the target still holds scene 0
    head.propose([], 3)
    assert head._true_upto == 0 and head._keys[0][1] == "Z" and all(src != "T" for _, src in head._keys)
    zoo.target.prefill(ctx_t1)  # the prefill lands: from now on the true states are read
    head.propose([], 3)
    assert head._true_upto == 1 and head._keys[0][1] == "T"


def test_head_cache_matches_whole_sequence_forward() -> None:
    torch.manual_seed(1)
    cfg = HeadConfig(hidden=32, heads=2, ffn=48, event_dim=16, event_rows=5)
    head = FusedDraftHead(cfg).eval()
    feats, emb = torch.randn(1, 9, 32), torch.randn(1, 9, 32)
    memory = torch.randn(1, 5, 32)
    with torch.no_grad():
        whole = head(feats, emb, memory)[0]
        cache = head.new_cache(memory)
        parts = [head.step(cache, feats[0, :4], emb[0, :4])]  # a batch, then one at a time
        parts += [head.step(cache, feats[0, i : i + 1], emb[0, i : i + 1]) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)
    cache.crop(6)
    with torch.no_grad():
        again = head.step(cache, feats[0, 6:], emb[0, 6:])
    torch.testing.assert_close(again, whole[6:], rtol=1e-5, atol=1e-5)


def test_video_rows_cached_equal_whole_sequence_and_masked_equal_absent() -> None:
    """A head with video rows: its cached steps equal its whole-sequence forward with the same video
    memory, and a sample whose video rows are masked out (training's VIDEO_DROP) gets exactly what
    the head computes with no video rows at all (what it drafts with when none were caught)."""
    torch.manual_seed(4)
    cfg = HeadConfig(hidden=32, heads=2, ffn=48, event_dim=16, event_rows=5, video_rows=6)
    head = FusedDraftHead(cfg).eval()
    with torch.no_grad():
        head.video_pos.normal_()  # type: ignore[union-attr]  # trained positions are not zero
    feats, emb = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    memory, video = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    with torch.no_grad():
        whole = head(feats, emb, memory, None, video)
        cache = head.new_cache(memory[:1], video[:1])
        steps = torch.cat([head.step(cache, feats[0, :3], emb[0, :3]), head.step(cache, feats[0, 3:], emb[0, 3:])])
        masked = head(feats, emb, memory, None, video, torch.tensor([False, True]))
        absent = head(feats[:1], emb[:1], memory[:1])
    torch.testing.assert_close(steps, whole[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[0], absent[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[1], whole[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole[0], absent[0], atol=1e-3)  # the video rows do reach the output
    with pytest.raises(ValueError, match="4 video rows, it was made for 6"):
        head.new_cache(memory[:1], video[:1, :4])
    with pytest.raises(ValueError, match="video_rows must be >= 0"):
        HeadConfig(hidden=32, video_rows=-1)


def test_video_memory_joins_once_the_target_has_prefilled(zoo: Zoo, scenes: list[tuple]) -> None:
    """The head's video rows are the target's own projected tokens of this round's clip, caught in
    its prefill: absent while the target still holds the last clip (prefill hiding), in once it has
    prefilled this one, never in the "events" mode, and gone after close(); the output stays exact."""
    from cascade_sd_ros.core.head.features import target_video_tokens

    (ctx_t0, _), (ctx_t1, ctx_d1) = scenes[0], scenes[1]
    rows = int(target_video_tokens(zoo.target.model, ctx_t1.pixel_values).shape[1])
    torch.manual_seed(5)
    cfg = HeadConfig(hidden=64, video_rows=rows)
    net, align = FusedDraftHead(cfg).eval(), AlignmentMLP(cfg).eval()
    head = HeadAdapter(net, align, zoo.target, event_encoder=zoo.drafter.model)
    slots = 1 + cfg.event_rows  # the null slot and the aligned event tokens
    zoo.target.prefill(ctx_t0)
    head.prefill(ctx_d1)  # the target still holds scene 0: its video tokens are not this round's
    head.propose([], 3)
    assert head._cache is not None and head._cache.mem_k.shape[1] == slots
    zoo.target.prefill(ctx_t1)
    head.propose([], 3)
    assert head._cache.mem_k.shape[1] == slots + rows
    with torch.no_grad():
        want, _ = net.memory_kv(head._memory, target_video_tokens(zoo.target.model, ctx_t1.pixel_values))
    torch.testing.assert_close(head._cache.mem_k, want[0], rtol=1e-4, atol=1e-4)
    ref = target_only_greedy(zoo.target, ctx_t1, 32)
    assert CascadeDecoder([head, zoo.target], gamma=5).generate([ctx_d1, ctx_t1], 32).token_ids == ref
    head.mode = "events"
    zoo.target.prefill(ctx_t1)
    head.prefill_events(None, ctx_d1.input_ids[-1], target_current=True)
    head.propose([], 2)
    assert head._cache.mem_k.shape[1] == 1
    head.mode = "fused"
    head.close()
    zoo.target.prefill(ctx_t1)
    head.prefill(ctx_d1)
    head.attach_target()
    head.propose([], 2)
    assert head._cache.mem_k.shape[1] == slots


@pytest.mark.parametrize("video_memory", [True, False])
def test_a_short_head_training_run_makes_a_head_that_drafts_exactly(
    zoo: Zoo, scenes: list[tuple], tmp_path: Path, video_memory: bool
) -> None:
    """The distillation run end to end on a handful of scenes and steps (seconds): with video memory
    the head gets a row per target video token and reports its fallback without them; either way it
    is saved, loads, names the target it serves and drafts the target's own output."""
    from cascade_sd_ros.core.head.run import HeadRunSettings, run_head_training

    settings = HeadRunSettings(
        zoo=None,
        out=tmp_path / "head",
        samples=12,
        eval_samples=6,
        steps_scale=0.004,
        max_minutes=1.0,
        data_dir=tmp_path / "data",
        progress=False,
        video_memory=video_memory,
    )
    summary = run_head_training(settings)
    net, align, meta = load_head(tmp_path / "head")
    ctx_t, ctx_d = scenes[0]
    from cascade_sd_ros.core.head.features import target_video_tokens

    video = target_video_tokens(zoo.target.model, ctx_t.pixel_values)
    assert net.cfg.video_rows == (video.shape[1] if video_memory else 0)
    # the frame at T's patch tokens, the alignment MLP's reference, are the video tokens' last rows
    with torch.no_grad():
        projected = zoo.target.model.model.get_video_features(pixel_values_videos=ctx_t.pixel_values).pooler_output
    last = projected[-1:, 1:].float()  # [1, R, D]: the last frame, its CLS dropped
    torch.testing.assert_close(video[:, -last.shape[1] :], last)
    assert ("fused_no_video" in summary["held_out"]["head"]) == video_memory
    assert meta["trained_on"]["scenes"] == 12 and meta["trained_on"]["held_out"] == 6
    head = HeadAdapter(net, align, zoo.target, event_encoder=zoo.drafter.model)
    res = CascadeDecoder([head, zoo.target], gamma=4).generate([ctx_d, ctx_t], 32)
    assert res.token_ids == target_only_greedy(zoo.target, ctx_t, 32)
    head.close()


def test_kept_hidden_states_equal_a_plain_forward(zoo: Zoo, scenes: list[tuple]) -> None:
    ctx_t, _ = scenes[0]
    target = zoo.target
    target.keep_hidden = True
    target.prefill(ctx_t)
    caption = target_only_greedy(target, None, 6)
    target.score(caption[:3], caption[3:])
    tail, rows = target.hidden_rows(caption)
    assert rows.shape[0] == len(caption) + 1  # every row of the prefix, none after it
    ids = torch.tensor([[*ctx_t.input_ids, *caption]])
    with torch.no_grad():
        ref = target.model.model(input_ids=ids, pixel_values_videos=ctx_t.pixel_values).last_hidden_state[0]
        logits = target.model.get_output_embeddings()(rows)
    p = len(ctx_t.input_ids)
    torch.testing.assert_close(tail, ref[p - 2 : p], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows, ref[p - 1 : p - 1 + rows.shape[0]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[0], target.next_logits([]), rtol=1e-4, atol=1e-4)


def test_kept_hidden_states_of_a_prefill_carrying_a_draft(zoo: Zoo, scenes: list[tuple]) -> None:
    """The lead's fused prefill (a draft riding in the prefill forward) keeps the same states."""
    ctx_t, _ = scenes[1]
    target = zoo.target
    target.keep_hidden = True
    target.prefill(ctx_t)
    caption = target_only_greedy(target, None, 5)
    target.prefill(ctx_t, caption=caption[:4])
    tail, rows = target.hidden_rows(caption[:4])
    assert rows.shape[0] == 5
    ids = torch.tensor([[*ctx_t.input_ids, *caption[:4]]])
    with torch.no_grad():
        ref = target.model.model(input_ids=ids, pixel_values_videos=ctx_t.pixel_values).last_hidden_state[0]
    p = len(ctx_t.input_ids)
    torch.testing.assert_close(tail, ref[p - 2 : p], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows, ref[p - 1 :], rtol=1e-4, atol=1e-4)


def test_bad_event_features_are_refused_in_one_line(zoo: Zoo, scenes: list[tuple]) -> None:
    head = _head(zoo)
    cfg = head.net.cfg
    prompt_last = scenes[0][1].input_ids[-1]
    with pytest.raises(ValueError, match=r"event tokens of shape \(3, 7\)"):
        head.prefill_events(torch.zeros(1, 3, 7), prompt_last, target_current=True)
    with pytest.raises(ValueError, match="NaN or inf"):
        head.prefill_events(
            torch.full((1, cfg.event_rows, cfg.event_dim), float("nan")), prompt_last, target_current=True
        )
    with pytest.raises(ValueError, match="outside vocabulary"):
        head.prefill_events(None, 10_000, target_current=True)
    with pytest.raises(ValueError, match="head mode"):
        HeadAdapter(head.net, head.align, zoo.target, mode="both")  # type: ignore[arg-type]


def test_event_tokens_shape(zoo: Zoo, scenes: list[tuple]) -> None:
    tokens = event_tokens(zoo.drafter.model, scenes[0][1].pixel_values)
    head = _head(zoo)
    assert tuple(tokens.shape) == (1, head.net.cfg.event_rows, head.net.cfg.event_dim)


def test_head_folder_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(2)
    cfg = HeadConfig(hidden=32, event_dim=16, event_rows=4)
    head, align = FusedDraftHead(cfg), AlignmentMLP(cfg)
    save_head(tmp_path / "head", head, align, {"note": "test"})
    head2, align2, meta = load_head(tmp_path / "head")
    assert meta["note"] == "test" and head2.cfg == cfg
    for a, b in zip(head.state_dict().values(), head2.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="lacks head.json"):
        load_head(tmp_path / "nowhere")
    meta_path = tmp_path / "head" / "head.json"
    meta_path.write_text(json.dumps({"config": {**cfg.to_dict(), "hidden": 48}}))
    with pytest.raises(ValueError, match="do not fit head.json"):
        load_head(tmp_path / "head")


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the draft head's weights are not shipped in this checkout")
def test_shipped_head_is_small_safetensors_and_names_its_encoder(zoo: Zoo) -> None:
    files = sorted(p.name for p in SHIPPED.iterdir())
    assert files == ["head.json", "model.safetensors"]
    assert (SHIPPED / "model.safetensors").stat().st_size <= 2 * 2**20
    head, align, meta = load_head(SHIPPED)
    from cascade_sd_ros.core.head.io import encoder_fingerprint, tensor_fingerprint

    # a retrained zoo needs a retrained head: both models it was distilled from are named
    assert meta["encoder_fingerprint"] == encoder_fingerprint(zoo.drafter.model, align)
    assert meta["trained_on"]["target"] == tensor_fingerprint([zoo.target.model])


def test_distillation_captions_are_the_targets_greedy_ones(zoo: Zoo) -> None:
    """The fixed-point build starts from the scenes' own captions but must end at the target's greedy
    decoding exactly (here with wrong guesses too), with states equal to a plain forward's."""
    from cascade_sd_ros.core.head.train import _greedy_fixed_point

    clips = [build_sample(0, EVAL_STREAM, i, zoo.geometry, with_events=False)[0] for i in SCENES]
    contexts = [zoo.context("target", c) for c in clips]
    video = torch.cat([c.pixel_values for c in contexts])
    prompt = torch.tensor(contexts[0].input_ids)
    eos = zoo.target.eos_token_id
    guess = torch.randint(6, zoo.target.vocab_size, (len(clips), 25), generator=torch.Generator().manual_seed(3))
    caps, valid, states = _greedy_fixed_point(zoo.target.model, prompt, video, guess, eos)
    for i, ctx in enumerate(contexts):
        ref = target_only_greedy(zoo.target, ctx, 25)
        assert caps[i][valid[i]].tolist() == ref
    with torch.no_grad():
        ids = torch.cat([prompt, caps[0, :-1]]).unsqueeze(0)
        plain = zoo.target.model.model(input_ids=ids, pixel_values_videos=video[:1]).last_hidden_state[0]
    torch.testing.assert_close(states[0], plain[len(prompt) - 2 :], rtol=1e-4, atol=1e-4)


def test_prefill_hiding_and_merging_keep_output_exact(zoo: Zoo, scenes: list[tuple]) -> None:
    from cascade_sd_ros.core.head.adapter import PrefillHidingHead
    from cascade_sd_ros.core.head.merge import MergedProposer, accepted_sources, token_classes

    head = _head(zoo)
    classes = token_classes(zoo.tokenizer.get_vocab())
    assert {"colour", "shape", "motion", "other"} == set(classes.values())
    merged = MergedProposer([head, zoo.drafter], classes, {"drafter": {"motion": 1.0}, "head": {"colour": 1.0}})
    for stage in (PrefillHidingHead(head, 4), merged):
        decoder = CascadeDecoder([stage, zoo.target], gamma=4)
        for ctx_t, ctx_d in scenes:
            merged.log.clear()
            res = decoder.generate([ctx_d, ctx_t], 32)
            assert res.token_ids == target_only_greedy(zoo.target, ctx_t, 32)
            if stage is merged:
                counts = accepted_sources(merged.log, [r.accepted[0] for r in res.stats.rounds if r.drafted[0]])
                assert sum(counts.values()) == res.stats.stages[0].accepted


def test_train_head_never_replaces_what_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cascade_sd_ros.tools.cli import main

    (tmp_path / "head").mkdir()
    assert main(["train", "--stage", "head", "--out", str(tmp_path), "--quiet"]) == 2
    assert "already holds head" in capsys.readouterr().err
    assert main(["train", "--stage", "head", "--out", str(default_zoo_path().parent), "--quiet"]) == 2
    assert "inside the installed package" in capsys.readouterr().err


def test_event_features_payload_round_trip_and_refusals() -> None:
    from cascade_sd_ros.core.head.features import features_from_payload, features_payload

    tokens = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(4))
    rows, dim, data = features_payload(tokens)
    ok = dict(expected_rows=9, expected_dim=64, expected_fingerprint="abc")
    torch.testing.assert_close(features_from_payload(rows, dim, data, "abc", **ok), tokens)
    with pytest.raises(ValueError, match="from encoder 'zzz'"):
        features_from_payload(rows, dim, data, "zzz", **ok)
    with pytest.raises(ValueError, match="of 8 x 64"):
        features_from_payload(8, dim, data[: 8 * 64], "abc", **ok)
    with pytest.raises(ValueError, match="575 values"):
        features_from_payload(rows, dim, data[:-1], "abc", **ok)
    with pytest.raises(ValueError, match="NaN or inf"):
        features_from_payload(rows, dim, [float("nan")] * (9 * 64), "abc", **ok)


def test_tensor_fingerprint_samples_each_tensor_and_names_a_checkpoint_not_its_dtype() -> None:
    """A 7B target is not copied whole to hash it: each tensor contributes a fixed sample, picked by
    integer arithmetic (the same elements on any device), as float32 (a bf16 load and a float32 load
    of one bf16 checkpoint agree); a change at a sampled element, a name or a shape is seen."""
    from torch import nn

    from cascade_sd_ros.core.head.io import tensor_fingerprint

    torch.manual_seed(0)
    big = nn.Linear(300, 200).to(torch.bfloat16)  # 60,000 weights: sampled at 16
    same_fp32 = nn.Linear(300, 200)
    same_fp32.load_state_dict({k: v.float() for k, v in big.state_dict().items()})
    assert tensor_fingerprint([big], samples=16) == tensor_fingerprint([same_fp32], samples=16)
    full = tensor_fingerprint([big], samples=10**6)
    assert full == tensor_fingerprint([same_fp32], samples=10**6) != tensor_fingerprint([big], samples=16)

    def changed_at(index: int) -> str:
        other = nn.Linear(300, 200).to(torch.bfloat16)
        other.load_state_dict(big.state_dict())
        with torch.no_grad():
            other.weight.view(-1)[index] += 1.0
        return tensor_fingerprint([other], samples=16)

    before = tensor_fingerprint([big], samples=16)
    assert changed_at(0) != before and changed_at(60_000 - 1) != before  # both ends are always sampled
    assert changed_at(4) == before  # between samples (0, 3999, ...): not seen, by design
    reshaped = nn.Linear(200, 300).to(torch.bfloat16)
    assert tensor_fingerprint([reshaped], samples=16) != before


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
def test_a_confidence_floor_outside_0_1_is_refused(zoo: Zoo, bad: float) -> None:
    head, align, _ = load_head(SHIPPED)
    with pytest.raises(ValueError, match=r"stop_below must be in \[0, 1\)"):
        HeadAdapter(head, align, zoo.target, stop_below=bad)


def test_a_head_that_stops_on_its_confidence_is_exact_and_spends_fewer_forwards(zoo: Zoo, scenes: list[tuple]) -> None:
    forwards = {}
    for floor in (0.0, 0.7):
        head = _head(zoo)
        head.stop_below = floor
        decoder = CascadeDecoder([head, zoo.target], gamma=6, gamma_max=16)
        for ctx_t, ctx_d in scenes:
            assert decoder.generate([ctx_d, ctx_t], 32).token_ids == target_only_greedy(zoo.target, ctx_t, 32)
        forwards[floor] = head.forwards
    assert forwards[0.7] < forwards[0.0]  # no chains past the tokens it is unsure of
    assert _head(zoo).stop_below == STOP_BELOW == 0.0  # off unless asked for
