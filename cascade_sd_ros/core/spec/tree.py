"""Draft trees: several continuations of one prefix, verified by the target in ONE forward.

A chain draft is lost from its first wrong token on. Where a drafter is unsure, its second choice
is often the target's (on the zoo the fused head's rejected token was the target's second choice 30
times in 39 and third in 7 more), so a draft that also carries the runner-up at its unsure
positions turns most rejections into accepted tokens. The target scores every node in one forward
with tree attention (each node sees the cache and its own ancestors: SpecInfer, Medusa, EAGLE-2);
greedy verification then walks from the root along the children equal to the target's argmax, so
the output is still exactly the target's greedy decoding.

* :class:`DraftTree`: nodes (token, parent) in topological order, cut to a budget and at EOS, and
  the attention mask and positions of a tree forward;
* :func:`draft_tree_step`: a proposer's greedy chain plus, at its first ``branches`` unsure
  positions, its runner-up followed by a copy of the chain's later tokens (:func:`deviation_tree`);
* :func:`verify_tree`: score a tree in one target forward, commit the longest accepted path plus
  the target's own next token, and keep only that path in the target's cache;
* :func:`grow_tree`: a proposer's best-first tree, one proposer forward per level (a round's
  first draft, made before the target has the clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch

from cascade_sd_ros.core.spec.adapter import StageContext
from cascade_sd_ros.core.spec.steps import VerifyResult, caption_ended, cut_draft

__all__ = [
    "DraftTree",
    "TreeProposer",
    "TreeScorer",
    "UNSURE_BELOW",
    "commit_walk",
    "deviation_tree",
    "draft_tree_step",
    "grow_tree",
    "prefill_with_tree",
    "supports_trees",
    "verify_tree",
]

ROOT = -1  # parent of a first-level node: the end of the committed prefix
# A draft token the proposer gives less than this gets a branch: on the zoo the head's rejected
# tokens were nearly all below it, and a sure token's runner-up is almost never the target's.
UNSURE_BELOW = 0.99
MIN_BRANCH_PROB = 0.01  # a runner-up less likely than this is not worth its nodes


@dataclass(frozen=True)
class DraftTree:
    """Node i holds ``tokens[i]`` and follows node ``parents[i]`` (ROOT: the committed prefix).

    Parents come before their children, so node order is a valid feeding order. The nodes
    ``0 .. chain-1`` are the proposer's main (greedy) chain; the rest are branches off it.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    chain: int = 0
    probs: tuple[float, ...] = ()  # the proposer's probability of each node's token (empty: not known)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"a draft tree needs one parent per token, got {len(self.tokens)} and {len(self.parents)}")
        if len(self.probs) not in (0, len(self.tokens)):
            raise ValueError(f"a draft tree of {len(self.tokens)} nodes with {len(self.probs)} probabilities")
        for i, p in enumerate(self.parents):
            if not ROOT <= p < i:
                raise ValueError(f"node {i}'s parent must be an earlier node or {ROOT} (the prefix), got {p}")
        if not 0 <= self.chain <= len(self.tokens):
            raise ValueError(f"the main chain of {self.chain} nodes does not fit a tree of {len(self.tokens)}")

    @classmethod
    def from_chain(cls, tokens: Sequence[int]) -> DraftTree:
        """A plain draft: node i follows node i-1."""
        return cls(tuple(int(t) for t in tokens), tuple(range(-1, len(tokens) - 1)), len(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        """Per node, how many draft tokens lie on its path from the prefix, itself included (1 = first token)."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p == ROOT else out[p] + 1)
        return tuple(out)

    @cached_property
    def _ancestry(self) -> list[bool]:
        """Row-major `[n, n]`: node i sees node j (j is i or one of its ancestors), built in Python
        (a tree is small; one tensor from it beats a tensor op per node)."""
        n = len(self.tokens)
        rows: list[list[bool]] = []
        for i, p in enumerate(self.parents):
            row = list(rows[p]) if p != ROOT else [False] * n
            row[i] = True
            rows.append(row)
        return [x for row in rows for x in row]

    @cached_property
    def children(self) -> dict[int, dict[int, int]]:
        """parent -> {token: node}; the first node with a token wins (a duplicate sibling adds nothing)."""
        out: dict[int, dict[int, int]] = {}
        for i, (tok, p) in enumerate(zip(self.tokens, self.parents)):
            out.setdefault(p, {}).setdefault(tok, i)
        return out

    def after(self, lead: Sequence[int]) -> DraftTree:
        """This tree behind a chain of ``lead`` tokens (what the scorer must feed first, in the same forward)."""
        m = len(lead)
        parents = [*range(-1, m - 1), *((m - 1 if p == ROOT else p + m) for p in self.parents)]
        return DraftTree((*(int(t) for t in lead), *self.tokens), tuple(parents), m + self.chain)

    @classmethod
    def from_parts(cls, chain: Sequence[int], branches: Sequence[tuple[int, int]]) -> DraftTree:
        """A main chain plus branch nodes (token, parent), parents indexing chain then branches
        (ROOT: the prefix): how a tree travels in a DraftTokens message."""
        m = len(chain)
        return cls(
            (*(int(t) for t in chain), *(int(t) for t, _ in branches)),
            (*range(-1, m - 1), *(int(p) for _, p in branches)),
            m,
        )

    @property
    def branches(self) -> tuple[tuple[int, int], ...]:
        """The nodes after the main chain as (token, parent): the inverse of `from_parts`."""
        return tuple(zip(self.tokens[self.chain :], self.parents[self.chain :]))

    def _follow(self, tokens: Sequence[int]) -> tuple[int, int]:
        """(node, depth): how far one root path of this tree holds ``tokens``, from the first on."""
        node, depth = ROOT, 0
        for tok in tokens:
            child = self.children.get(node, {}).get(int(tok))
            if child is None:
                break
            node, depth = child, depth + 1
        return node, depth

    def with_path(self, tokens: Sequence[int]) -> DraftTree:
        """This tree plus the chain ``tokens`` from the prefix: it follows existing nodes as far as
        they agree and adds the rest as new nodes (another stage's draft joining the tree)."""
        node, depth = self._follow(tokens)
        rest = [int(t) for t in tokens[depth:]]
        if not rest:
            return self
        n = len(self.tokens)
        parents = [node, *range(n, n + len(rest) - 1)]
        probs = (*self.probs, *[1.0] * len(rest)) if self.probs else ()
        return DraftTree((*self.tokens, *rest), (*self.parents, *parents), self.chain, probs)

    def match_depth(self, tokens: Sequence[int]) -> int:
        """How many of ``tokens`` one root path of this tree holds, from the first on."""
        return self._follow(tokens)[1]

    def greedy_first(self) -> DraftTree:
        """The same tree with its greedy path (each node's first child, from the prefix on) as the
        main chain, nodes 0 .. chain-1, the other nodes after it in their order."""
        path: list[int] = []
        node = ROOT
        while node in self.children:
            node = min(self.children[node].values())
            path.append(node)
        on_path = set(path)
        return self._select(path + [i for i in range(len(self.tokens)) if i not in on_path], len(path))

    def _select(self, order: Sequence[int], chain: int) -> DraftTree:
        """The nodes ``order`` (each after its parent) as a tree of their own, main chain ``chain``."""
        new_index = {ROOT: ROOT, **{old: new for new, old in enumerate(order)}}
        return DraftTree(
            tuple(self.tokens[i] for i in order),
            tuple(new_index[self.parents[i]] for i in order),
            chain,
            tuple(self.probs[i] for i in order) if self.probs else (),
        )

    def path(self, node: int) -> list[int]:
        """The nodes from the prefix down to ``node``, in order."""
        out = []
        while node != ROOT:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def cut(self, budget: int, eos: int | None) -> DraftTree:
        """The part worth scoring: nodes at most ``budget`` deep, none below an EOS."""
        keep: list[int] = []
        kept = {ROOT}
        for i, p in enumerate(self.parents):
            if self.depths[i] > budget or p not in kept:
                continue
            if p != ROOT and eos is not None and self.tokens[p] == eos:
                continue
            kept.add(i)
            keep.append(i)
        return self._select(keep, sum(1 for i in keep if i < self.chain))

    def attention(self, cached: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The mask of a tree forward after ``cached`` positions: `[1, 1, n, cached + n]`.

        Every node sees the whole cache, its ancestors and itself. ``dtype`` torch.bool gives
        True where attention is allowed; a float dtype gives 0 there and the dtype's lowest value
        elsewhere (an additive mask: SDPA and the eager attention take it as it is).
        """
        n = len(self.tokens)
        allowed = torch.ones(n, cached + n, dtype=torch.bool)
        allowed[:, cached:] = torch.tensor(self._ancestry, dtype=torch.bool).view(n, n)  # one tensor op
        return _as_mask(allowed, dtype, device)

    def prefill_attention(self, context: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The mask of a prefill forward carrying this tree after ``context`` positions:
        `[1, 1, context + n, context + n]`, causal over the context, `attention` for the nodes."""
        n = len(self.tokens)
        causal = torch.ones(context, context, dtype=torch.bool).tril()
        top = torch.cat((causal, torch.zeros(context, n, dtype=torch.bool)), dim=1)  # [L, L+n]
        nodes = self.attention(context, torch.bool, torch.device("cpu"))[0, 0]  # [n, L+n]
        return _as_mask(torch.cat((top, nodes)), dtype, device)

    def prefill_positions(self, context: int, device: torch.device) -> torch.Tensor:
        """Position ids `[1, context + n]` of that forward: 0 .. context-1, then each node's depth after it."""
        depths = torch.tensor(self.depths, dtype=torch.long) + (context - 1)
        return torch.cat((torch.arange(context), depths)).view(1, -1).to(device)


def _as_mask(allowed: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``allowed`` `[q, kv]` as a `[1, 1, q, kv]` mask of ``dtype``: itself for torch.bool, else
    additive (0 where allowed, the dtype's lowest value elsewhere)."""
    if dtype != torch.bool:
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        allowed = mask
    return allowed.view(1, 1, *allowed.shape).to(device)


class TreeProposer(Protocol):
    """A stage that can propose a greedy chain and read back its own logits rows (CachedRowsAdapter)."""

    @property
    def eos_token_id(self) -> int | None: ...

    def propose_alternatives(
        self, prefix: Sequence[int], k: int, width: int
    ) -> tuple[list[int], list[list[int]], list[list[float]]]: ...


class TreeScorer(Protocol):
    """A target that scores a tree in one forward and keeps one path of it (HFAdapter)."""

    @property
    def eos_token_id(self) -> int | None: ...

    def score_tree(self, prefix: Sequence[int], tree: DraftTree) -> torch.Tensor: ...

    def prefill_tree(self, context: StageContext, tree: DraftTree) -> torch.Tensor: ...

    def keep_path(self, prefix: Sequence[int], nodes: Sequence[int]) -> None: ...


def supports_trees(proposer: object, target: object) -> bool:
    """Whether ``proposer`` can draft trees and ``target`` can verify them."""
    return callable(getattr(proposer, "propose_alternatives", None)) and bool(getattr(target, "supports_tree", False))


def deviation_tree(
    chain: Sequence[int],
    top: Sequence[Sequence[int]],
    probs: Sequence[Sequence[float]],
    branches: int,
    *,
    eos: int | None,
    unsure_below: float = UNSURE_BELOW,
) -> DraftTree:
    """A chain plus branches that each deviate from it once: at the first ``branches`` positions
    whose token the proposer gave less than ``unsure_below``, each runner-up (``top[i][1:]``, at
    least MIN_BRANCH_PROB likely) replaces ``chain[i]`` and is followed by a copy of ``chain[i+1:]``.

    The copy costs the proposer nothing: in a caption a content token's successors hardly depend on
    which value it took ("a red square moves" / "a red circle moves"), so the chain's own later
    guesses are as good after the runner-up as after its first choice; the target judges them all.
    ``top[i]`` / ``probs[i]``: the proposer's likeliest tokens at position i and their probabilities,
    first choice first (``top[i][0] == chain[i]``). Earliest positions first: a later deviation only
    counts when everything before it is accepted.
    """
    if branches < 0:
        raise ValueError(f"branches must be >= 0, got {branches}")
    tokens, parents = [int(t) for t in chain], list(range(-1, len(chain) - 1))
    spots = [i for i in range(len(chain)) if probs[i][0] < unsure_below][:branches]
    for i in spots:
        for alt, p in zip(top[i][1:], probs[i][1:]):
            if p < MIN_BRANCH_PROB:
                break
            tokens.append(int(alt))
            parents.append(i - 1)  # it replaces chain[i]: it follows chain[:i]
            if int(alt) == eos:
                continue
            for tok in chain[i + 1 :]:
                parents.append(len(tokens) - 1)
                tokens.append(int(tok))
    return DraftTree(tuple(tokens), tuple(parents), len(chain))


def draft_tree_step(
    proposer: TreeProposer,
    prefix: Sequence[int],
    gamma: int,
    branches: int,
    *,
    max_new_tokens: int,
    width: int = 2,
    unsure_below: float = UNSURE_BELOW,
) -> DraftTree:
    """The proposer's greedy chain of (at most) gamma tokens as a :func:`deviation_tree`: its
    ``width - 1`` runner-ups at its first ``branches`` unsure positions, each followed by the
    chain's later tokens. No proposer forward beyond the chain's; the target pays a few more rows."""
    if gamma < 0 or branches < 0 or width < 1:
        raise ValueError(f"gamma >= 0, branches >= 0 and width >= 1 needed, got {gamma}, {branches}, {width}")
    eos = proposer.eos_token_id
    budget = min(gamma, max_new_tokens - len(prefix))
    if budget <= 0 or caption_ended(prefix, eos):
        return DraftTree((), ())
    chain, top, probs = proposer.propose_alternatives(prefix, budget, width)
    return deviation_tree(chain, top, probs, branches, eos=eos, unsure_below=unsure_below)


def verify_tree(target: TreeScorer, prefix: Sequence[int], tree: DraftTree, *, max_new_tokens: int) -> VerifyResult:
    """Lossless greedy verification of a draft tree in one target forward.

    Commits the longest root path whose every token is the target's argmax after what precedes
    it, plus the target's own next token (cut at EOS and the budget). ``accepted`` is that path's
    length, ``drafted`` the tree's depth; the target's cache keeps the accepted path only.
    """
    eos = target.eos_token_id
    budget = max_new_tokens - len(prefix)
    if budget <= 0 or caption_ended(prefix, eos):
        return VerifyResult(0, [], False, 0, 0, True)
    tree = tree.cut(budget, eos)
    rows = target.score_tree(prefix, tree)  # [n+1, V]: row 0 after the prefix, row j+1 after node j
    return commit_walk(target, prefix, tree, rows, max_new_tokens)


def prefill_with_tree(
    target: TreeScorer, context: StageContext, tree: DraftTree, *, max_new_tokens: int
) -> VerifyResult:
    """Prefill ``target`` on ``context`` with a draft tree riding in the same forward (prefill
    hiding: a draft made before the clip's prefill is verified at no forward of its own), then
    commit what the target accepts of it, as :func:`verify_tree` does after an empty prefix."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tree = tree.cut(max_new_tokens, target.eos_token_id)
    rows = target.prefill_tree(context, tree)
    return commit_walk(target, [], tree, rows, max_new_tokens)


def commit_walk(
    target: TreeScorer, prefix: Sequence[int], tree: DraftTree, rows: torch.Tensor, max_new_tokens: int
) -> VerifyResult:
    """Walk a scored tree from the root along the target's argmax, keep that path in its cache, and
    commit it plus the target's own next token (cut at EOS and the budget)."""
    eos = target.eos_token_id
    budget = max_new_tokens - len(prefix)
    best = rows.argmax(dim=-1).tolist()  # the step's one host sync
    path: list[int] = []
    node = ROOT
    while True:
        token = int(best[node + 1])
        child = tree.children.get(node, {}).get(token)  # (a cut tree has no node below an EOS)
        if child is None:
            break
        path.append(child)
        node = child
    target.keep_path(prefix, path)
    new = cut_draft([*(tree.tokens[i] for i in path), token], budget, eos)
    finished = len(prefix) + len(new) >= max_new_tokens or (eos is not None and new[-1] == eos)
    depth = max(tree.depths, default=0)
    return VerifyResult(len(path), new, node != ROOT and node not in tree.children, depth, 0, finished)


def grow_tree(
    proposer: TreeScorer,
    prefix: Sequence[int],
    depth: int,
    *,
    width: int = 5,
    min_prob: float = 0.02,
    max_nodes: int = 64,
) -> DraftTree:
    """A proposer's draft tree, grown a level per forward (its `score_tree` on the tree so far).

    Each level the candidates are every leaf's ``width`` likeliest next tokens (over ``min_prob``,
    a leaf's first always), ranked by the probability of their whole path; the best take the
    level's share of what is left of ``max_nodes`` (EAGLE-2's best-first growth). Where the proposer
    is unsure (an event drafter and colour, which events do not carry) several values and their
    continuations survive; where it is sure the chain goes on alone. ``depth`` forwards in all.
    The greedy path is the tree's main chain; each node carries its probability. The proposer's
    cache is left as after ``prefix``."""
    if depth < 0 or width < 1 or max_nodes < 1:
        raise ValueError(f"depth >= 0, width >= 1 and max_nodes >= 1 needed, got {depth}, {width}, {max_nodes}")
    eos = proposer.eos_token_id
    tokens: list[int] = []
    parents: list[int] = []
    probs_of: list[float] = []
    path_p: dict[int, float] = {ROOT: 1.0}
    leaves = [ROOT]
    for level in range(depth):
        tree = DraftTree(tuple(tokens), tuple(parents))
        probs = torch.softmax(proposer.score_tree(prefix, tree), dim=-1)  # [n+1, V]
        top = probs[[leaf + 1 for leaf in leaves]].topk(width, dim=-1)
        vals, idx = top.values.tolist(), top.indices.tolist()  # one host sync per level
        candidates = [
            (path_p[leaf] * p[j], -j, k, j)
            for k, (leaf, p) in enumerate(zip(leaves, vals))
            for j in range(width)
            if j == 0 or p[j] >= min_prob
        ]
        share = max(1, (max_nodes - len(tokens)) // (depth - level))
        chosen = sorted(sorted(candidates, reverse=True)[:share], key=lambda c: (c[2], c[3]))
        grown: list[int] = []
        for joint, _, k, j in chosen:
            tokens.append(int(idx[k][j]))
            parents.append(leaves[k])
            probs_of.append(float(vals[k][j]))
            path_p[len(tokens) - 1] = joint
            if tokens[-1] != eos:
                grown.append(len(tokens) - 1)
        leaves = grown
        if not leaves or len(tokens) >= max_nodes:
            break
    if tokens:
        proposer.keep_path(prefix, [])  # the last level's nodes leave the cache
    return DraftTree(tuple(tokens), tuple(parents), 0, tuple(probs_of)).greedy_first()
