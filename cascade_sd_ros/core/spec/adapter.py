"""One model-adapter interface over transformers models for speculative decoding (contract 3).

An adapter owns one model and one KV cache holding (context + caption tokens). Its state is keyed on
token sequences, not on call order: every call names the caption prefix it continues, and the adapter
first syncs its cache to it (crops to the longest common prefix with what it holds, then feeds what is
missing). A stale, repeated or out-of-order caller therefore costs at most a recomputation, never a
wrong answer.

Names follow the papers: `p` is the target's distribution, `q` the proposer's, `k`/`gamma` the draft
length. Shapes are written in comments as `# [n, V]` (V = vocabulary size).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    VideoLlavaForConditionalGeneration,
)

from cascade_sd_ros.core.spec import cache_ops
from cascade_sd_ros.core.spec.prompt import media_token_count, media_token_id

if TYPE_CHECKING:
    from cascade_sd_ros.core.spec.tree import DraftTree

__all__ = [
    "Modality",
    "StageContext",
    "Proposal",
    "ModelAdapter",
    "CachedRowsAdapter",
    "check_media_placeholders",
    "HFAdapter",
    "check_same_vocab",
    "load_adapter",
    "load_hf_model",
    "resolve_eos_token_id",
]

Modality = Literal["video", "image", "text"]
_MODALITIES: tuple[str, ...] = ("video", "image", "text")


@dataclass(frozen=True, eq=False)
class StageContext:
    """What one stage conditions on besides the caption: prompt ids and pixels.

    Attributes:
        input_ids: prompt token ids with the `<video>`/`<image>` placeholder already expanded to the
            exact number of feature positions (see `prompt.py`).
        pixel_values: video `[1, F, 3, H, W]`, image `[1, 3, H, W]`, or None for text.
        modality: "video", "image" or "text"; must match the adapter's model.
    """

    input_ids: tuple[int, ...]
    pixel_values: torch.Tensor | None
    modality: Modality

    def __post_init__(self) -> None:
        if self.modality not in _MODALITIES:
            raise ValueError(f"StageContext.modality must be one of {_MODALITIES}, got {self.modality!r}")
        if len(self.input_ids) == 0:
            raise ValueError("StageContext.input_ids is empty; a prompt needs at least one token")
        if any((not isinstance(t, int)) or t < 0 for t in self.input_ids):
            raise ValueError("StageContext.input_ids must be non-negative Python ints")
        want_dim = {"video": 5, "image": 4}.get(self.modality)
        if want_dim is None:
            if self.pixel_values is not None:
                raise ValueError("a text StageContext takes no pixel_values")
        elif self.pixel_values is None or self.pixel_values.dim() != want_dim or self.pixel_values.shape[0] != 1:
            shape = None if self.pixel_values is None else tuple(self.pixel_values.shape)
            raise ValueError(
                f"a {self.modality} StageContext needs pixel_values of rank {want_dim} with batch 1, got {shape}"
            )


@dataclass(frozen=True)
class Proposal:
    """k tokens proposed by a stage.

    Attributes:
        token_ids: the proposed tokens (cut just after the first EOS, so possibly shorter than k).
        probs: the proposer's probability of each proposed token (its confidence), same length.
        q: `[len(token_ids), V]` float32 rows of the proposer's distribution softmax(logits / T), or
            None when not requested. When `sampled` is True the tokens were drawn from these rows
            (general speculative-sampling rule); otherwise they are argmax tokens (q is one-hot for
            acceptance purposes, and these rows are only the model's belief, used by deferral rules).
        sampled: whether tokens were sampled (True) or taken greedily (False).
    """

    token_ids: list[int]
    probs: list[float]
    q: torch.Tensor | None = None
    sampled: bool = False


@runtime_checkable
class ModelAdapter(Protocol):
    """What the engine and the nodes need from a model (drafter, refiner or target)."""

    name: str
    modality: Modality

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def device(self) -> torch.device: ...

    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None: ...

    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal: ...

    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor: ...


def require_context(adapter_name: str, context: StageContext | None) -> None:
    """RuntimeError unless the adapter has a prefilled context (propose/score need one)."""
    if context is None:
        raise RuntimeError(f"adapter {adapter_name!r}: call prefill(context) before propose/score")


def check_token_ids(adapter_name: str, ids: Sequence[int], vocab_size: int, what: str) -> None:
    """ValueError naming the first id outside ``[0, vocab_size)``; ``what`` says which input held it."""
    for t in ids:
        if not 0 <= int(t) < vocab_size:
            raise ValueError(f"adapter {adapter_name!r}: {what} token id {t} outside vocabulary [0, {vocab_size})")


def check_media_placeholders(
    adapter_name: str, context: StageContext, config: object, expected: Callable[[int], int]
) -> None:
    """ValueError unless the prompt holds exactly as many placeholders as the pixels have features.

    ``expected(num_frames)`` is the adapter's placeholder count for its modality.
    """
    assert context.pixel_values is not None  # a media context, validated by StageContext
    frames = context.pixel_values.shape[1] if context.modality == "video" else 1
    want = expected(frames)
    placeholder = media_token_id(config, context.modality)  # type: ignore[arg-type]
    have = sum(1 for t in context.input_ids if t == placeholder)
    if have != want:
        raise ValueError(
            f"adapter {adapter_name!r}: prompt has {have} <{context.modality}> tokens (id {placeholder}) "
            f"but the pixels need exactly {want}; build it with prompt.build_prompt_ids"
        )


def _model_modalities(model: PreTrainedModel) -> tuple[Modality, ...]:
    if isinstance(model, VideoLlavaForConditionalGeneration):
        return ("video", "image")
    if isinstance(model, LlavaForConditionalGeneration):
        return ("image",)
    return ("text",)


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def resolve_eos_token_id(model: PreTrainedModel, eos_token_id: int | None, vocab_size: int) -> int | None:
    """The EOS id an adapter stops at: the given one, else the generation config's, else the text
    config's (the first of a list); ValueError when it lies outside the vocabulary."""
    if eos_token_id is None:
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = model.config.get_text_config().eos_token_id
        eos_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos_token_id is not None and not 0 <= int(eos_token_id) < vocab_size:
        raise ValueError(f"eos_token_id {eos_token_id} outside vocabulary of size {vocab_size}")
    return None if eos_token_id is None else int(eos_token_id)


class CachedRowsAdapter(abc.ABC):
    """What every adapter over a token-keyed KV cache shares: `next_logits`, `score` and `propose`.

    A subclass owns the model and its cache and keeps `self._rows` (float32 `[cap, V]`): row i holds
    the next-token logits after context + caption[:i]. It implements

    * `prefill(context, caption=())`: reset the cache, run the context (and the given caption tokens
      after it, in the same forward), set `self._context` and rows `0 .. len(caption)`;
    * `_sync(tokens)`: make the cache hold context + `tokens` (keep the common prefix, feed the rest),
      so rows `0 .. len(tokens)` are valid;
    * `_feed(ids, row)`: run device ids `[n]` at caption positions `row .. row+n-1` after the cache and
      store their logits at rows `row+1 .. row+n` (the caller records the tokens afterwards);
    * `_record(tokens)`: note caption tokens whose K/V `_feed` has just written;
    * optionally `_reserve(base, k)`: refuse a k-token proposal after `base` tokens that cannot fit.

    Attributes set by the subclass: `name`, `modality`, `model`, `_vocab_size`, `_eos_token_id`,
    `_context`, `_rows`, `forwards`.

    `stop_below` (default 0: off) bounds a greedy proposal by the stage's own confidence: it ends
    after the first token whose probability is below it, so k is a cap and the draft is as long as
    the stage is sure (EAGLE-2's dynamic draft length; transformers' assistant confidence
    threshold). Verifying a longer draft costs little, drafting each token past a likely rejection
    costs a forward: stopping where the stage starts to guess pays where a draft step is dear
    relative to a verification (on the zoo it is not: bench/RESULTS.md, "Seventh session"). The
    unsure token itself is kept (checking it is free in the same verify).
    """

    name: str
    modality: Modality
    model: PreTrainedModel
    _vocab_size: int
    _eos_token_id: int | None
    _context: StageContext | None
    _rows: torch.Tensor  # [cap, V] float32
    forwards: int
    stop_below: float = 0.0  # greedy proposals end after a token less likely than this (0: k tokens)

    # ----------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the model and its cache live."""

    @property
    def context(self) -> StageContext | None:
        return self._context

    def expected_media_tokens(self, num_frames: int = 1) -> int:
        """Placeholder positions a prompt needs for this adapter's modality (0 for text)."""
        return media_token_count(self.model.config, self.modality, num_frames)

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        """See the class docstring; ``caption`` tokens (a draft in hand) ride along in the same forward."""

    @abc.abstractmethod
    def _sync(self, tokens: Sequence[int]) -> None:
        """See the class docstring."""

    @abc.abstractmethod
    def _feed(self, ids: torch.Tensor, row: int) -> None:
        """See the class docstring."""

    @abc.abstractmethod
    def _record(self, tokens: Sequence[int]) -> None:
        """See the class docstring."""

    def _reserve(self, base: int, k: int) -> None:  # noqa: B027 - optional hook, not abstract
        """Refuse a proposal of k tokens after `base` caption tokens that would not fit (default: all fit)."""

    # ----------------------------------------------------------------- internals
    def _require_context(self) -> None:
        require_context(self.name, self._context)

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        check_token_ids(self.name, ids, self._vocab_size, what)

    # ----------------------------------------------------------------- public API
    @torch.inference_mode()
    def next_logits(self, prefix: Sequence[int]) -> torch.Tensor:
        """Logits `[V]` of the token after `prefix` (syncs the cache; at most one forward)."""
        self._require_context()
        self._check_ids(prefix, "prefix")
        self._sync(prefix)
        return self._rows[len(prefix)].clone()

    @torch.inference_mode()
    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        """Logits `[len(draft)+1, V]` for each draft position plus the one after, in ONE forward.

        Row i is the distribution of the token following prefix + draft[:i]; the last row gives the
        bonus token when the whole draft is accepted. Only the tokens the cache lacks are fed
        (normally just the draft); no host sync.
        """
        self._require_context()
        seq = [*prefix, *draft]
        self._check_ids(seq, "prefix/draft")
        self._sync(seq)
        return self._rows[len(prefix) : len(seq) + 1].clone()

    @torch.inference_mode()
    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal:
        """Propose k tokens continuing `prefix`: greedy (temperature 0) or sampled from q.

        The first token comes from the cached row; each next one is a one-token forward whose input is
        the previous pick, chained on the device. One host sync at the end: ids and probabilities come
        back in one transfer. The proposal stops after the first EOS, and (greedy, with `stop_below`)
        after the first token whose probability is below `stop_below`: then, and on a CPU, each pick
        is read back as it is made (one sync per token, as the check needs) and no forward runs past
        the EOS or the unsure token.
        """
        self._require_context()
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature > 0 and generator is not None and generator.device.type != self.device.type:
            raise ValueError(
                f"adapter {self.name!r}: the generator lives on {generator.device}, the model on "
                f"{self.device}; sample with a generator on the model's device"
            )
        self._check_ids(prefix, "prefix")
        self._sync(prefix)
        if k == 0:
            return Proposal([], [], None, temperature > 0)
        base = len(prefix)
        self._reserve(base, k)
        picks = torch.empty(k, dtype=torch.long, device=self.device)  # [k]
        floor = self.stop_below if temperature == 0 else 0.0
        # reading each pick back costs a sync on an accelerator, nothing on a CPU: there (or when the
        # floor reads it anyway) the chain ends at EOS instead of drafting past it to be cut
        read_back = floor > 0 or self.device.type == "cpu"
        for i in range(k):
            row = self._rows[base + i]  # [V] (read each time: a subclass may grow the buffer)
            if temperature > 0:
                dist = torch.softmax(row / temperature, dim=-1)
                picks[i] = torch.multinomial(dist, 1, generator=generator)[0]
            else:
                picks[i] = torch.argmax(row)
            if read_back and (
                int(picks[i]) == self._eos_token_id
                or (floor > 0 and float(torch.softmax(row, dim=-1)[picks[i]]) < floor)
            ):
                k = i + 1  # EOS, or the stage starts guessing here: this token is checked, none past it
                break
            if i < k - 1:
                self._feed(picks[i : i + 1], base + i)
        picks = picks[:k]
        rows = self._rows[base : base + k]  # [k, V]
        dist_all = torch.softmax(rows / (temperature if temperature > 0 else 1.0), dim=-1)  # [k, V]
        probs_t = dist_all.gather(1, picks.view(-1, 1)).view(-1)  # [k]
        # Ids and probabilities in ONE transfer (ids are exact in float64): the proposal's one host sync.
        packed = torch.cat((picks.to(torch.float64), probs_t.to(torch.float64))).tolist()
        token_ids = [int(t) for t in packed[:k]]
        probs = packed[k:]
        self._record(token_ids[: k - 1])
        n = k
        if self._eos_token_id is not None and self._eos_token_id in token_ids:
            n = token_ids.index(self._eos_token_id) + 1
        q = dist_all[:n].clone() if (return_q or temperature > 0) else None
        return Proposal(token_ids[:n], probs[:n], q, temperature > 0)

    @torch.inference_mode()
    def propose_alternatives(
        self, prefix: Sequence[int], k: int, width: int
    ) -> tuple[list[int], list[list[int]], list[list[float]]]:
        """A greedy proposal of (at most) k tokens, with, per position, the stage's ``width``
        likeliest tokens and their probabilities, first choice first: what a draft tree branches on
        (`core/spec/tree.py`). One host sync beyond the proposal's."""
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        proposal = self.propose(prefix, k)
        chain = [int(t) for t in proposal.token_ids]
        if not chain:
            return [], [], []
        rows = self._rows[len(prefix) : len(prefix) + len(chain)]  # [n, V]: the rows the picks came from
        top = torch.topk(torch.softmax(rows, dim=-1), min(width, self.vocab_size), dim=-1)  # [n, width]
        packed = torch.cat((top.indices.double(), top.values.double())).tolist()  # one host sync
        n = len(chain)
        ids = [[int(t) for t in row] for row in packed[:n]]
        for i, tok in enumerate(chain):
            ids[i][0] = tok  # a tie is broken as the proposal broke it
        return chain, ids, packed[n:]


class HFAdapter(CachedRowsAdapter):
    """ModelAdapter over a transformers model: VideoLlava (video/image), Llava (image) or a causal LM.

    The cache holds the context then `self._tokens` (caption tokens). `self._rows[i]` (float32,
    `[V]`) are the next-token logits after context + `_tokens[:i]`, so rolling back is a crop of the
    cache and of this row buffer, and the next-token logits of any cached prefix cost no forward.
    `next_logits`, `score` and `propose` come from :class:`CachedRowsAdapter`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        name: str = "model",
        modality: Modality | None = None,
        eos_token_id: int | None = None,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"HFAdapter needs a transformers PreTrainedModel, got {type(model).__name__}")
        if model.get_output_embeddings() is None:
            raise ValueError(f"{type(model).__name__} has no LM head; it cannot score tokens")
        cache_ops.check_rollback_supported(model.config)
        supported = _model_modalities(model)
        self.modality: Modality = modality if modality is not None else supported[0]
        if self.modality not in supported:
            raise ValueError(f"{type(model).__name__} supports modalities {supported}, not {self.modality!r}")
        self.name = name
        self.model = model.eval()
        self._vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._eos_token_id = resolve_eos_token_id(model, eos_token_id, self._vocab_size)
        self._context: StageContext | None = None
        self._cache = cache_ops.new_cache(model.config)
        self._context_len = 0
        self._tokens: list[int] = []
        self._rows = torch.empty(0, self._vocab_size, dtype=torch.float32, device=self.device)  # [cap, V]
        # Caption tokens carry no pixels: for the VLMs, run their language model and LM head directly
        # (the same computation as the full forward, without its multimodal bookkeeping per step).
        self._decoder = model.get_decoder() if supported != ("text",) else None
        self._head = model.get_output_embeddings()
        self.forwards = 0  # model forward calls since construction (statistics)
        # keep_hidden: also keep the final (post-norm) hidden state behind every logits row, for a
        # feature-level draft head (core/head) that reads the target's own states; off: no extra work
        self.keep_hidden = False
        self.prefills = 0  # prefill calls since construction: a reader of the states can tell rounds apart
        self._hidden = torch.empty(0, 0, device=self.device)  # [cap, D]: row i's hidden state
        self._context_tail = torch.empty(0, 0, device=self.device)  # [2, D]: last two context positions
        # a scored draft tree whose nodes sit in the cache after context + _tokens until keep_path:
        # (its tokens, its logits [n, V], its hidden states [n, D] or None)
        self._tree: tuple[tuple[int, ...], torch.Tensor, torch.Tensor | None] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----------------------------------------------------------------- internals
    def _store_rows(self, start: int, rows: torch.Tensor) -> None:
        """Write logits rows `[n, V]` at row index `start`, growing the buffer geometrically."""
        end = start + rows.shape[0]
        if end > self._rows.shape[0]:
            grown = torch.empty(
                max(end, 2 * self._rows.shape[0], 64), self._vocab_size, dtype=torch.float32, device=self.device
            )
            grown[:start] = self._rows[:start]
            self._rows = grown
        self._rows[start:end] = rows

    def _feed(self, ids: torch.Tensor, row: int) -> None:
        """Feed caption ids `[n]` (device tensor) after the cache; stores their n logits rows.

        The cache knows its own length, so `row` (where the ids start) is implied by it.
        """
        hidden = None
        if self._decoder is not None or self.keep_hidden:
            decoder = self._decoder if self._decoder is not None else self.model.get_decoder()
            hidden = decoder(input_ids=ids.view(1, -1), past_key_values=self._cache, use_cache=True).last_hidden_state
            logits = self._head(hidden)  # [1, n, V]
        else:
            logits = self.model(
                input_ids=ids.view(1, -1), past_key_values=self._cache, use_cache=True, logits_to_keep=0
            ).logits
        self.forwards += 1
        n_cached = cache_ops.cached_length(self._cache) - self._context_len - ids.numel()
        self._store_rows(n_cached + 1, logits[0].float())  # [n, V]
        if self.keep_hidden and hidden is not None:
            self._store_hidden(n_cached + 1, hidden[0].float())  # [n, D]

    def _store_hidden(self, start: int, rows: torch.Tensor) -> None:
        """Write hidden rows `[n, D]` at row index `start` (the buffer follows `_rows`' capacity)."""
        if self._hidden.shape[0] < self._rows.shape[0] or self._hidden.shape[1] != rows.shape[1]:
            grown = torch.empty(self._rows.shape[0], rows.shape[1], dtype=torch.float32, device=self.device)
            if self._hidden.shape[1] == rows.shape[1]:
                grown[: self._hidden.shape[0]] = self._hidden
            self._hidden = grown
        self._hidden[start : start + rows.shape[0]] = rows

    def hidden_rows(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept hidden states valid for caption `tokens` (needs `keep_hidden` before `prefill`).

        Returns (tail `[2, D]`: the context's last two positions, rows `[m, D]`): row i is the hidden
        state whose logits are row i (the state after context + tokens[:i]), for the m rows the cache
        holds for this prefix (m - 1 = the common prefix with the cached tokens, at most len(tokens)).
        No forward: what the last prefill/score computed.
        """
        if not self.keep_hidden or self._context_tail.numel() == 0:
            raise RuntimeError(f"adapter {self.name!r}: set keep_hidden before prefill to read hidden states")
        m = _common_prefix_len(self._tokens, tokens) + 1
        return self._context_tail, self._hidden[:m]

    def _record(self, tokens: Sequence[int]) -> None:
        self._tokens.extend(tokens)

    def _sync(self, tokens: Sequence[int]) -> None:
        """Make the cache hold exactly context + `tokens` (crop to the common prefix, feed the rest)."""
        if self._tree is not None:  # a tree scored but no path kept: its nodes go
            cache_ops.crop_to(self._cache, self._context_len + len(self._tokens))
            self._tree = None
        lcp = _common_prefix_len(self._tokens, tokens)
        if lcp < len(self._tokens):
            cache_ops.crop_to(self._cache, self._context_len + lcp)
            del self._tokens[lcp:]
        missing = list(tokens[lcp:])
        if missing:
            self._feed(torch.tensor(missing, dtype=torch.long, device=self.device), lcp)
            self._tokens.extend(missing)

    @property
    def supports_tree(self) -> bool:
        """Whether `score_tree` can run: the attention takes an arbitrary mask (SDPA or eager)."""
        impl = self.model.config.get_text_config(decoder=True)._attn_implementation
        return impl in ("sdpa", "eager")

    def _require_tree_attention(self) -> None:
        if not self.supports_tree:
            raise ValueError(f"adapter {self.name!r}: draft trees need SDPA or eager attention")

    @torch.inference_mode()
    def score_tree(self, prefix: Sequence[int], tree: DraftTree) -> torch.Tensor:
        """Logits `[len(tree)+1, V]` in ONE forward: row 0 follows `prefix`, row j+1 follows the
        path to node j (each node attends to the cache and its own ancestors only).

        The nodes stay in the cache until `keep_path` keeps one path of them (or the next call
        that syncs drops them all).
        """
        self._require_context()
        self._require_tree_attention()
        self._check_ids([*prefix, *tree.tokens], "prefix/tree")
        if not len(tree):
            self._sync(prefix)
            return self._rows[len(prefix) : len(prefix) + 1].clone()
        # the prefix tokens the cache lacks (normally the last round's own token) lead the same forward
        self._sync(prefix[: _common_prefix_len(self._tokens, prefix)])
        lead = [int(t) for t in prefix[len(self._tokens) :]]
        full = tree.after(lead)
        cached = cache_ops.cached_length(self._cache)
        ids = torch.tensor([full.tokens], dtype=torch.long, device=self.device)  # [1, m + n]
        positions = torch.tensor([full.depths], dtype=torch.long, device=self.device) + (cached - 1)  # [1, m + n]
        mask = full.attention(cached, self.model.dtype, self.device)  # additive: SDPA and eager take it as is
        hidden = self.model.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self._cache, use_cache=True
        ).last_hidden_state[0]  # [m + n, D]
        logits = self._head(hidden).float()  # [m + n, V]
        self.forwards += 1
        m = len(lead)
        if m:  # the lead is caption now: its rows and states as `_feed` would store them
            self._store_rows(len(self._tokens) + 1, logits[:m])
            if self.keep_hidden:
                self._store_hidden(len(self._tokens) + 1, hidden[:m].float())
            self._tokens.extend(lead)
        self._tree = (tree.tokens, logits[m:], hidden[m:].float() if self.keep_hidden else None)
        return torch.cat((self._rows[len(prefix) : len(prefix) + 1], logits[m:]))

    @torch.inference_mode()
    def keep_path(self, prefix: Sequence[int], nodes: Sequence[int]) -> None:
        """After `score_tree(prefix, tree)`: keep the tree nodes `nodes` (a root path, in order) as
        the caption after `prefix`, with their rows and states, and drop the other nodes."""
        if self._tree is None and not nodes:
            return  # nothing scored that could be kept
        if self._tree is None or list(self._tokens) != list(prefix):
            raise RuntimeError(f"adapter {self.name!r}: keep_path needs the tree just scored after this prefix")
        tokens, logits, hidden = self._tree
        self._tree = None
        start = self._context_len + len(self._tokens)
        if not nodes:
            cache_ops.crop_to(self._cache, start)
            return
        index = torch.tensor(list(nodes), dtype=torch.long, device=self.device)
        if list(nodes) == list(range(len(nodes))):  # the main chain's first nodes: a crop does
            cache_ops.crop_to(self._cache, start + len(nodes))
        else:
            cache_ops.keep_positions(self._cache, start, index)
        self._store_rows(len(prefix) + 1, logits.index_select(0, index))
        if hidden is not None:
            self._store_hidden(len(prefix) + 1, hidden.index_select(0, index))
        self._tokens.extend(tokens[i] for i in nodes)

    # ----------------------------------------------------------------- public API
    @torch.inference_mode()
    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        """Reset the cache and run the context (prompt + pixels) through the model once.

        ``caption``: tokens that follow the context (a draft already in hand), fed in the same forward
        so that scoring them afterwards costs nothing: on a CPU a prefill of L + 4 positions costs
        about what L alone does, while a separate verify forward costs a decode step.
        """
        self._prefill(context, caption, None)

    @torch.inference_mode()
    def prefill_tree(self, context: StageContext, tree: DraftTree) -> torch.Tensor:
        """`prefill` carrying a whole draft tree after the context, in the same forward: returns the
        logits `[len(tree)+1, V]` as `score_tree([], tree)` would (row 0 follows the context, row
        j+1 the path to node j); the nodes wait in the cache for `keep_path`."""
        if len(tree):
            self._require_tree_attention()
        self._check_ids(tree.tokens, "tree")
        return self._prefill(context, (), tree)

    def _prefill(self, context: StageContext, caption: Sequence[int], tree: DraftTree | None) -> torch.Tensor:
        if context.modality != self.modality:
            raise ValueError(f"adapter {self.name!r} takes {self.modality} contexts, got {context.modality}")
        self._check_ids(context.input_ids, "prompt")
        self._check_ids(caption, "caption")
        cfg = self.model.config
        kwargs: dict[str, torch.Tensor] = {}
        if context.modality != "text":
            assert context.pixel_values is not None  # validated by StageContext
            check_media_placeholders(self.name, context, cfg, self.expected_media_tokens)
            pixels = context.pixel_values.to(self.device, self.model.dtype)
            key = {
                ("video", True): "pixel_values_videos",
                ("image", True): "pixel_values_images",
                ("image", False): "pixel_values",
            }[(context.modality, isinstance(self.model, VideoLlavaForConditionalGeneration))]
            kwargs[key] = pixels
        self._cache = cache_ops.new_cache(cfg)
        self._tokens = []
        self._tree = None
        self._context = None  # until this prefill completes, no earlier context is valid either
        tail = [int(t) for t in caption]
        late: list[int] = []
        media = media_token_id(cfg, context.modality) if context.modality != "text" else None
        nodes = tree if tree is not None and len(tree) and media not in tree.tokens else None
        if media is not None and media in tail:
            tail, late = [], tail  # a placeholder id in a draft would be taken for media: fed after instead
        extra = list(nodes.tokens) if nodes is not None else tail
        n_ctx = len(context.input_ids)
        ids = torch.tensor([[*context.input_ids, *extra]], dtype=torch.long, device=self.device)  # [1, L+n]
        if nodes is not None:  # each node sees the context and its own ancestors
            kwargs["attention_mask"] = nodes.prefill_attention(n_ctx, self.model.dtype, self.device)  # additive
            kwargs["position_ids"] = nodes.prefill_positions(n_ctx, self.device)
        if self.keep_hidden:  # the base model then the LM head: what the full forward computes, with its states
            states = self.model.model(
                input_ids=ids, past_key_values=self._cache, use_cache=True, **kwargs
            ).last_hidden_state  # [1, L+n, D]
            logits = self._head(states[:, -(1 + len(extra)) :])  # [1, 1+n, V]
        else:
            logits = self.model(
                input_ids=ids, past_key_values=self._cache, use_cache=True, logits_to_keep=1 + len(extra), **kwargs
            ).logits
        self.forwards += 1
        self.prefills += 1
        self._context = context
        self._context_len = n_ctx
        rows: torch.Tensor = logits[0].float()  # [1+n, V]
        self._tokens = [] if nodes is not None else tail
        self._store_rows(0, rows if nodes is None else rows[:1])  # rows 0 .. len(tail)
        if self.keep_hidden:
            h = states[0].float()  # [L+n, D]
            last = self._context_len
            pair = h[max(last - 2, 0) : last]  # the context's last two positions (one: padded with zeros)
            self._context_tail = torch.cat([torch.zeros_like(h[: 2 - pair.shape[0]]), pair])  # [2, D]
            self._store_hidden(0, h[last - 1 : last + len(self._tokens)])  # rows 0 .. len(tail)
        if nodes is not None:
            self._tree = (nodes.tokens, rows[1:], states[0, n_ctx:].float() if self.keep_hidden else None)
            return rows
        if late:
            self._sync(late)
        if tree is not None and len(tree):  # a tree holding a media placeholder id: scored after instead
            return self.score_tree([], tree)
        return rows[: 1 + len(tail)]


def check_same_vocab(adapters: Sequence[ModelAdapter]) -> None:
    """Raise a clear error when stages do not share one vocabulary (drafts would be meaningless)."""
    if not adapters:
        raise ValueError("no adapters given")
    ref = adapters[0]
    for a in adapters[1:]:
        if a.vocab_size != ref.vocab_size:
            raise ValueError(
                f"vocabulary mismatch: stage {a.name!r} has {a.vocab_size} tokens but {ref.name!r} has "
                f"{ref.vocab_size}; all stages must share one tokenizer"
            )
        if a.eos_token_id != ref.eos_token_id:
            raise ValueError(
                f"EOS mismatch: stage {a.name!r} ends with id {a.eos_token_id}, {ref.name!r} with {ref.eos_token_id}"
            )


def load_hf_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load a local HF model folder (never downloads) onto `device`; the class follows config.model_type
    (video_llava, llava, else a causal LM). Weights come from safetensors only; a folder's pickles
    (``pytorch_model.bin``) are never opened and its ``auto_map`` code never imported.

    Raises:
        FileNotFoundError: if the folder, its config.json or its model.safetensors is missing.
        ValueError: an architecture transformers has no code of its own for.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    # a model folder is data, never code: no auto_map module is imported, no pickle is unpickled
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    cls: type[PreTrainedModel]
    if config.model_type == "video_llava":
        cls = VideoLlavaForConditionalGeneration
    elif config.model_type == "llava":
        cls = LlavaForConditionalGeneration
    else:
        cls = AutoModelForCausalLM  # type: ignore[assignment]
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        refused = f" ({', '.join(pickles)} refused: pickled weights can run code)" if pickles else ""
        raise FileNotFoundError(f"model folder {folder} has no model.safetensors{refused}")
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = cls.from_pretrained(folder, **kwargs)
    model.to(device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    return model


def load_adapter(
    path: str | Path,
    *,
    name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> HFAdapter:
    """Load a local HF model folder (never downloads) and wrap it; the class follows config.model_type.

    Raises:
        FileNotFoundError: if the folder or its config.json is missing.
        ValueError: for a model that cannot serve as a stage.
    """
    return HFAdapter(load_hf_model(path, device=device, dtype=dtype), name=name or Path(path).name)
