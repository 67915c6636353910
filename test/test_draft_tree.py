"""Draft trees: one target forward scores every branch exactly as a chain forward scores each path,
the cache keeps only the accepted path, and decoding with trees (in a round, or riding in the
prefill) gives the target's own greedy output token for token."""

from __future__ import annotations

import pytest
import torch

from cascade_sd_ros.core.head import HeadAdapter, load_head
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec import cache_ops
from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
from cascade_sd_ros.core.spec.testing import tiny_models
from cascade_sd_ros.core.spec.tree import (
    MIN_BRANCH_PROB,
    DraftTree,
    deviation_tree,
    grow_tree,
    prefill_with_tree,
    verify_tree,
)
from cascade_sd_ros.core.zoo import default_zoo_path, load_zoo
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return tiny_models(seed=7, vocab_size=48, target_layers=2)


def _branchy(tokens: list[int]) -> DraftTree:
    """A chain of five plus a branch off its second node (two tokens) and a leaf off the root."""
    a, b, c, d, e, f, g, h = tokens
    return DraftTree((a, b, c, d, e, f, g, h), (-1, 0, 1, 2, 3, 0, 5, -1), 5)


# ----------------------------------------------------------------- the tree itself
def test_depths_children_paths_and_a_lead_chain() -> None:
    tree = DraftTree((5, 6, 7, 8, 9), (-1, 0, 1, 0, -1), 3)
    assert tree.depths == (1, 2, 3, 2, 1)
    assert tree.children == {-1: {5: 0, 9: 4}, 0: {6: 1, 8: 3}, 1: {7: 2}}
    assert tree.path(2) == [0, 1, 2] and tree.path(3) == [0, 3]
    led = tree.after([1, 2])
    assert led.tokens == (1, 2, 5, 6, 7, 8, 9) and led.parents == (-1, 0, 1, 2, 3, 2, 1) and led.chain == 5


def test_cut_drops_nodes_past_the_budget_and_below_an_eos() -> None:
    tree = DraftTree((5, 2, 7, 8, 6), (-1, 0, 1, 0, 3), 3)  # eos 2 at depth 2 has a child (7)
    cut = tree.cut(budget=2, eos=2)
    assert cut.tokens == (5, 2, 8) and cut.parents == (-1, 0, 0) and cut.chain == 2
    assert tree.cut(budget=9, eos=2).tokens == (5, 2, 8, 6)


@pytest.mark.parametrize("parents", [(0,), (-2,), (-1, 1)])
def test_a_parent_that_does_not_come_first_is_refused(parents: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="parent must be an earlier node"):
        DraftTree(tuple(range(3, 3 + len(parents))), parents)


def test_each_node_attends_to_the_cache_its_ancestors_and_itself() -> None:
    tree = DraftTree((5, 6, 7, 8), (-1, 0, -1, 2))
    mask = tree.attention(2, torch.bool, torch.device("cpu"))[0, 0]
    want = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, want)
    additive = tree.attention(2, torch.float32, torch.device("cpu"))[0, 0]
    assert torch.equal(additive == 0, want)
    full = tree.prefill_attention(3, torch.bool, torch.device("cpu"))[0, 0]
    assert torch.equal(full[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril()) and not full[:3, 3:].any()
    assert torch.equal(full[3:], tree.attention(3, torch.bool, torch.device("cpu"))[0, 0])
    assert tree.prefill_positions(3, torch.device("cpu")).tolist() == [[0, 1, 2, 3, 4, 3, 4]]


def test_a_deviation_tree_branches_at_unsure_tokens_and_copies_the_chain_after() -> None:
    chain = [5, 6, 7, 8]
    top = [[5, 9], [6, 10], [7, 11], [8, 12]]
    probs = [[0.999, 0.001], [0.6, 0.3], [0.7, 0.2], [0.5, MIN_BRANCH_PROB / 2]]
    tree = deviation_tree(chain, top, probs, 4, eos=None)
    # position 1 and 2 branch (position 0 is sure; position 3's runner-up is too unlikely)
    assert tree.tokens == (5, 6, 7, 8, 10, 7, 8, 11, 8)
    assert tree.parents == (-1, 0, 1, 2, 0, 4, 5, 1, 7)
    assert tree.chain == 4 and [tree.tokens[i] for i in tree.path(6)] == [5, 10, 7, 8]
    assert deviation_tree(chain, top, probs, 1, eos=None).tokens == (5, 6, 7, 8, 10, 7, 8)  # earliest first
    assert deviation_tree(chain, top, probs, 0, eos=None) == DraftTree.from_chain(chain)
    assert deviation_tree(chain, top, probs, 1, eos=10).tokens == (5, 6, 7, 8, 10)  # nothing follows an EOS
    with pytest.raises(ValueError, match="branches"):
        deviation_tree(chain, top, probs, -1, eos=None)


def test_propose_alternatives_is_the_proposal_with_its_likeliest_tokens(tiny) -> None:  # type: ignore[no-untyped-def]
    drafter, ctx = tiny.drafter, tiny.make_contexts(2).drafter
    drafter.prefill(ctx)
    want = drafter.propose([], 5)
    chain, top, probs = drafter.propose_alternatives([], 5, 3)
    assert chain == want.token_ids and [t[0] for t in top] == chain
    torch.testing.assert_close(torch.tensor([p[0] for p in probs]), torch.tensor(want.probs), rtol=1e-5, atol=1e-6)
    assert all(len(t) == 3 and len(set(t)) == 3 and p[0] >= p[1] >= p[2] for t, p in zip(top, probs))
    with pytest.raises(ValueError, match="width"):
        drafter.propose_alternatives([], 5, 0)


# ----------------------------------------------------------------- one forward, every path
@pytest.mark.parametrize("ctx_seed", [0, 1])
def test_a_tree_forward_gives_each_path_the_rows_of_its_own_chain(tiny, ctx_seed: int) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(ctx_seed).target
    target.prefill(ctx)
    prefix = target.propose([], 2).token_ids
    tree = _branchy([(3 * i + 5) % (tiny.vocab_size - 4) + 3 for i in range(8)])
    before = target.forwards
    rows = target.score_tree(prefix, tree)
    assert target.forwards == before + 1, "a tree (with the prefix's unfed token) costs one forward"
    for node in range(len(tree)):
        path = [tree.tokens[i] for i in tree.path(node)]
        chain = target.score(prefix, path)  # drops the tree, feeds the chain
        torch.testing.assert_close(rows[node + 1], chain[-1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(rows[0], chain[0], rtol=1e-4, atol=1e-4)
        target.score_tree(prefix, tree)  # back to the tree for the next node


def test_keeping_a_branch_path_leaves_the_cache_of_that_chain(tiny) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(3).target
    tree = _branchy([(5 * i + 4) % (tiny.vocab_size - 4) + 3 for i in range(8)])
    kept = [tree.tokens[i] for i in tree.path(6)]  # the branch: nodes 0, 5, 6
    target.prefill(ctx)
    target.score_tree([], tree)
    target.keep_path([], tree.path(6))
    assert cache_ops.cached_length(target._cache) == len(ctx.input_ids) + 3
    after_tree = target.score(kept, [9, 10])
    target.prefill(ctx)
    torch.testing.assert_close(after_tree, target.score(kept, [9, 10]), rtol=1e-4, atol=1e-4)


def test_a_tree_riding_in_the_prefill_gives_the_rows_of_prefill_then_score(tiny) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(4).target
    tree = _branchy([(7 * i + 2) % (tiny.vocab_size - 4) + 3 for i in range(8)])
    target.prefill(ctx)
    separate = target.score_tree([], tree)
    fused = target.prefill_tree(ctx, tree)
    torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-4)
    assert torch.equal(fused.argmax(-1), separate.argmax(-1))


def test_a_tree_that_holds_a_media_placeholder_is_scored_after_the_prefill(tiny) -> None:  # type: ignore[no-untyped-def]
    from cascade_sd_ros.core.spec.prompt import media_token_id

    target, ctx = tiny.target, tiny.make_contexts(5).target
    tree = DraftTree((3, media_token_id(target.model.config, "video"), 4), (-1, 0, -1))
    target.prefill(ctx)
    want = target.score_tree([], tree)
    torch.testing.assert_close(target.prefill_tree(ctx, tree), want, rtol=1e-4, atol=1e-4)


def test_verify_tree_commits_the_target_greedy_path_through_a_branch(tiny) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(6).target
    greedy = target_only_greedy(target, ctx, 6)
    wrong = (greedy[1] + 1) % (tiny.vocab_size - 4) + 3
    # the chain is wrong at its second token; the branch off the first node holds the target's own
    tree = DraftTree((greedy[0], wrong, 9, greedy[1], greedy[2]), (-1, 0, 1, 0, 3), 3)
    target.prefill(ctx)
    res = verify_tree(target, [], tree, max_new_tokens=6)
    assert res.accepted == 3 and res.token_ids == greedy[:4] and res.drafted == 3
    assert target.score(greedy[:4], greedy[4:6]).argmax(-1).tolist()[:2] == greedy[4:6]


def test_a_key_out_of_range_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(0).target
    target.prefill(ctx)
    held = cache_ops.cached_length(target._cache)
    with pytest.raises(ValueError, match="outside a cache"):
        cache_ops.keep_positions(target._cache, held - 1, torch.tensor([3]))


# ----------------------------------------------------------------- decoding with trees
@pytest.fixture(scope="module")
def zoo():  # type: ignore[no-untyped-def]
    return load_zoo()


@pytest.fixture(scope="module")
def head(zoo):  # type: ignore[no-untyped-def]
    net, align, _ = load_head(default_zoo_path() / "head")
    return HeadAdapter(net, align, zoo.target, event_encoder=zoo.drafter.model)


def _scenes(zoo, n: int, max_objects: int = 2):  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        clip, events, _ = build_sample(0, EVAL_STREAM, i, zoo.geometry, max_objects=max_objects)
        out.append((zoo.context("target", clip), zoo.context("drafter", events)))
    return out


def test_the_zoo_decodes_exactly_with_trees_and_the_prefill_tree_saves_target_forwards(zoo, head) -> None:  # type: ignore[no-untyped-def]
    t, d = zoo.target, zoo.drafter
    chain = CascadeDecoder([head, t], gamma=6)
    branched = CascadeDecoder([head, t], gamma=6, tree_branches=4)
    assert branched.tree_branches == 4
    forwards = {"chain": 0, "branched": 0, "early tree": 0}
    in_prefill = 0
    with torch.inference_mode():
        # busy scenes (up to four objects): where the head, reading the target's states and video
        # tokens, still misses a token at all, and its runner-up can be right
        for ctx_t, ctx_d in _scenes(zoo, 6, max_objects=4):
            want = target_only_greedy(t, ctx_t, 32)
            res = chain.generate([ctx_d, ctx_t], 32)
            assert res.token_ids == want
            forwards["chain"] += res.stats.target_forwards
            res = branched.generate([ctx_d, ctx_t], 32)
            assert res.token_ids == want
            forwards["branched"] += res.stats.target_forwards
            d.prefill(ctx_d)
            tree = grow_tree(d, [], 6, max_nodes=24)
            assert len(tree) <= 24
            head.prefill(ctx_d)
            first = prefill_with_tree(t, ctx_t, tree, max_new_tokens=32)
            head.attach_target()
            in_prefill += first.accepted
            rest = chain.generate(None, 32, committed=first.token_ids)
            assert rest.token_ids == want
            forwards["early tree"] += 1 + rest.stats.target_forwards
    assert in_prefill >= 6, "the event drafter's tree had nothing accepted in the prefill"
    assert forwards["early tree"] < forwards["chain"], forwards
    assert forwards["branched"] < forwards["chain"], forwards  # runner-ups turn rejections into tokens


def test_the_event_drafter_branches_where_it_is_blind(zoo) -> None:  # type: ignore[no-untyped-def]
    """Colour is at chance for the event drafter: its tree carries several colours at that token."""
    d = zoo.drafter
    _, ctx_d = _scenes(zoo, 1)[0]
    d.prefill(ctx_d)
    tree = grow_tree(d, [], 4, width=5, max_nodes=40)
    assert max(len(kids) for kids in tree.children.values()) >= 2
    assert len(tree) <= 40 and max(tree.depths) <= 4
    vocab = zoo.tokenizer.get_vocab()
    colours = {vocab[c] for c in ("red", "green", "blue", "yellow", "purple")}
    assert any(len(colours & set(kids)) >= 2 for kids in tree.children.values())


def test_committed_tokens_that_end_the_caption_decode_nothing_more(zoo, head) -> None:  # type: ignore[no-untyped-def]
    t = zoo.target
    ctx_t, ctx_d = _scenes(zoo, 1)[0]
    want = target_only_greedy(t, ctx_t, 32)
    head.prefill(ctx_d)
    t.prefill(ctx_t)
    head.attach_target()
    before = t.forwards
    res = CascadeDecoder([head, t], gamma=6).generate(None, 32, committed=want)
    assert res.token_ids == want and res.finished_by == "eos" and t.forwards == before


def test_another_stage_chain_joins_a_tree_where_it_departs() -> None:
    tree = DraftTree.from_parts((5, 6, 7), ((8, 0),))  # 5 6 7 | 5 8
    assert tree.with_path((5, 6)) is tree  # nothing new
    joined = tree.with_path((5, 8, 9, 2))
    assert joined.tokens == (5, 6, 7, 8, 9, 2) and joined.parents == (-1, 0, 1, 0, 3, 4) and joined.chain == 3
    assert joined.match_depth((5, 8, 9)) == 3 and joined.match_depth((6,)) == 0
    assert DraftTree.from_parts(joined.tokens[:3], joined.branches) == joined


def test_look_ahead_drafts_merged_onto_a_tree_keep_its_branches() -> None:
    from cascade_sd_ros.core.rounds import RoundBook  # noqa: PLC0415

    book = RoundBook()
    rec = book.open(7, 7)
    tree = Draft(0, 0, 0, (5, 6), (0.9, 0.5), branches=((8, 0), (9, 2)))  # 5 6 | 5 8 9
    ahead = Draft(0, 0, 2, (7, 4), (0.9, 0.9))  # drafted on its own speculation: 5 6 7 4
    for d in (tree, ahead):
        book.add_draft(rec.round_id, rec.t_ns, d)
    found = book.best_draft(rec.round_id, [0])
    assert found is not None
    merged, tail = found
    assert tail == [5, 6, 7, 4] and merged.branches == ((8, 0), (9, 4))
    assert DraftTree.from_parts(merged.token_ids, merged.branches).match_depth((5, 8, 9)) == 3
