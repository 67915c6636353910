"""Text drafting across tokenizers: a stage whose vocabulary differs from the target's drafts as text,
and the receiver re-tokenises that text into its own ids (issue 16).

The idea is transformers' universal assisted generation (``assistant_tokenizer=``): token ids do not
cross between vocabularies, text does. What the verifier checks are always its own ids, produced by
its own tokenizer from the draft's text, so the lossless modes stay exactly lossless: a re-tokenisation
that goes wrong costs acceptance, never correctness.

Two directions, one rule each:

* **publisher** (:func:`draft_text`): the text a draft adds after the committed prefix, decoded by the
  publisher's own tokenizer as the difference ``decode(prefix + draft) - decode(prefix)`` (decoding the
  draft alone would lose the space before its first word under SentencePiece-style tokenizers);
* **receiver** (:func:`continuation_ids`; across topics :func:`rebase_text_draft`, which first lays
  the draft after the commit its publisher had seen): own ids that continue the receiver's committed ids with that
  text. The committed ids are fixed (they were verified), so the text is never re-tokenised together
  with them when that would re-cut the boundary: a draft that starts mid-word ("hel" committed, "lo"
  drafted) or whose first characters would merge with the last committed token is tokenised as a
  continuation, and the result is checked by decoding (``decode(prefix + ids) == committed + text``).
  What cannot be matched exactly is cut to its longest prefix that decodes to a prefix of the text:
  nothing doubled, and nothing lost that the receiver's vocabulary can say after that prefix.

:class:`TextDrafter` wraps a drafter of another vocabulary as a proposer in the target's ids (what the
one-process engine and the benches use); the nodes use the two functions across topics. Acceptance is
counted where the ids are checked, hence in target tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from cascade_sd_ros.core.spec.adapter import ModelAdapter, Proposal, StageContext

__all__ = [
    "DRAFT_IDS_MODES",
    "CommitTexts",
    "DraftIds",
    "TextCodec",
    "TextDrafter",
    "continuation_ids",
    "draft_text",
    "rebase_text_draft",
    "resolve_draft_ids",
]

DraftIds = Literal["same-vocab", "text"]
DRAFT_IDS_MODES: tuple[DraftIds | Literal["auto"], ...] = ("same-vocab", "text", "auto")
# Text put in front of a draft so that it is tokenised as a continuation, not as the start of a
# text (SentencePiece adds a word-start mark there; byte-level BPE would not). A line break never
# merges with a following letter or space in the tokenizers of these families.
_ANCHOR = "\n"


class TextCodec(Protocol):
    """What text drafting needs of a tokenizer (transformers' tokenizers have both)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def resolve_draft_ids(mode: str, own_fingerprint: str, their_fingerprint: str) -> DraftIds:
    """How a receiver reads a draft: ``same-vocab`` (the ids as they are), ``text`` (re-tokenise the
    draft's text), or ``auto``: ids when both vocabularies' fingerprints agree, text otherwise."""
    if mode not in DRAFT_IDS_MODES:
        raise ValueError(f"draft_ids must be one of {list(DRAFT_IDS_MODES)}, got {mode!r}")
    if mode == "auto":
        return "same-vocab" if own_fingerprint == their_fingerprint else "text"
    return mode


def _decode(codec: TextCodec, ids: Sequence[int]) -> str:
    return str(codec.decode([int(i) for i in ids], skip_special_tokens=True))


def _encode(codec: TextCodec, text: str) -> list[int]:
    return [int(i) for i in codec.encode(text, add_special_tokens=False)]


def _common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def draft_text(codec: TextCodec, prefix: Sequence[int], draft: Sequence[int]) -> str:
    """The text ``draft`` adds after ``prefix`` in ``codec``'s own ids (special tokens such as EOS add
    none: the receiver's own bonus token ends the caption). Where decoding the two together changes
    the prefix's text (a tokenizer that cleans up spaces), the text after their common part."""
    head = _decode(codec, prefix)
    full = _decode(codec, [*prefix, *draft])
    if full.startswith(head):
        return full[len(head) :]
    return full[_common_prefix(head, full) :]


def _anchored(codec: TextCodec, text: str) -> list[int] | None:
    """``text`` tokenised as a continuation: the ids of ``_ANCHOR + text`` after the anchor's own,
    or None when the anchor's ids do not survive (it merged with the text)."""
    anchor = _encode(codec, _ANCHOR)
    ids = _encode(codec, _ANCHOR + text)
    return ids[len(anchor) :] if ids[: len(anchor)] == anchor else None


def _longest_faithful(
    codec: TextCodec, prefix: Sequence[int], ids: Sequence[int], committed: str, target: str
) -> list[int]:
    """The longest ``ids[:m]`` with ``decode(prefix + ids[:m])`` a prefix of ``target`` that adds text."""
    for m in range(len(ids), 0, -1):
        text = _decode(codec, [*prefix, *ids[:m]])
        if target.startswith(text) and len(text) > len(committed):
            return list(ids[:m])
    return []


def continuation_ids(codec: TextCodec, prefix: Sequence[int], text: str) -> list[int]:
    """Ids in ``codec``'s vocabulary continuing the committed ``prefix`` (own ids, fixed) with ``text``.

    Tried in order, each accepted only if ``decode(prefix + ids)`` is exactly the committed text plus
    ``text``: the canonical tokenisation of the whole when it keeps ``prefix`` as it is; ``text``
    tokenised as a continuation (mid-word starts, tokens that would merge across the boundary).
    Otherwise the longest prefix of the continuation that decodes to a prefix of the wanted text.
    """
    if not text:
        return []
    committed = _decode(codec, prefix)
    wanted = committed + text
    whole = _encode(codec, wanted)
    candidates: list[list[int]] = []
    if whole[: len(prefix)] == list(prefix):
        candidates.append(whole[len(prefix) :])
    anchored = _anchored(codec, text)
    if anchored is not None:
        candidates.append(anchored)
    for ids in candidates:
        if ids and _decode(codec, [*prefix, *ids]) == wanted:
            return ids
    best: list[int] = []
    for ids in candidates:
        kept = _longest_faithful(codec, prefix, ids, committed, wanted)
        if len(_decode(codec, [*prefix, *kept])) > len(_decode(codec, [*prefix, *best])):
            best = kept
    return best


def rebase_text_draft(codec: TextCodec, committed: Sequence[int], start_position: int, text: str) -> list[int] | None:
    """Own ids continuing ``committed`` with a text draft that was written after the first
    ``start_position`` of those ids (the commit its publisher had seen, counted in this receiver's
    tokens). The draft's text is laid after that commit's text; what this receiver committed since
    must be a prefix of the result (then the rest is re-tokenised; [] when it covers all of it), else
    the draft is stale: None.
    A ``start_position`` beyond ``committed`` (a commit this receiver has not seen) is None too."""
    if not 0 <= start_position <= len(committed):
        return None
    base = _decode(codec, committed[:start_position])
    now = _decode(codec, committed)
    wanted = base + text
    if now.startswith(wanted):  # all of it committed since: nothing left to check
        return []
    if not wanted.startswith(now):
        return None
    return continuation_ids(codec, committed, wanted[len(now) :])


@dataclass(frozen=True)
class _SeenCommit:
    own: tuple[int, ...]  # the commit's text in the publisher's ids
    target_len: int  # [tokens] its length in the target's ids


class CommitTexts:
    """A stage of another vocabulary drafting on the verifier's commits, across topics.

    The verifier's Commit carries its caption as text (``Commit.text``) and its ids, whose count is
    all this stage can read of them. :meth:`own_prefix` turns a commit into this stage's ids (what it
    drafts on) and remembers both lengths; :meth:`outgoing` turns a draft made on that commit into
    what the DraftTokens carries: ``start_position`` in the target's tokens (the commit's length,
    which the verifier lays the text after) and the text the draft adds. Bounded: the newest
    ``keep`` commits. Thread-safe (commits arrive on the node's thread, drafts leave on the worker's).
    """

    def __init__(self, codec: TextCodec, keep: int = 256) -> None:
        self.codec = codec
        self.keep = keep
        self._seen: OrderedDict[tuple[int, int], _SeenCommit] = OrderedDict()
        self._lock = threading.Lock()

    def own_prefix(self, round_id: int, commit_seq: int, target_len: int, text: str) -> list[int]:
        own = _encode(self.codec, text)
        with self._lock:
            self._seen[(round_id, commit_seq)] = _SeenCommit(tuple(own), int(target_len))
            self._seen.move_to_end((round_id, commit_seq))
            while len(self._seen) > self.keep:
                self._seen.popitem(last=False)
        return own

    def knows(self, round_id: int) -> bool:
        """Whether a commit of ``round_id`` came through here (as text)."""
        with self._lock:
            return any(r == round_id for r, _ in self._seen)

    def outgoing(
        self, round_id: int, commit_seq: int, own_before: Sequence[int], own_draft: Sequence[int]
    ) -> tuple[int, str] | None:
        """(start_position in target tokens, draft text) of a draft made on commit ``commit_seq`` of
        ``round_id`` (0: before any commit) after ``own_before`` (this stage's ids before the draft:
        the commit's, then any of its own earlier drafts it runs ahead on). The text runs from the
        commit's end, so the verifier lays it right after that commit. None for a commit no longer
        known or a draft that does not continue it."""
        if commit_seq == 0:
            seen = _SeenCommit((), 0)
        else:
            with self._lock:
                found = self._seen.get((round_id, commit_seq))
            if found is None:
                return None
            seen = found
        n = len(seen.own)
        if tuple(own_before[:n]) != seen.own:
            return None
        return seen.target_len, draft_text(self.codec, seen.own, [*own_before[n:], *own_draft])


def _token_ends(codec: TextCodec, prefix: Sequence[int], ids: Sequence[int]) -> list[int]:
    """Character offset (into the text after ``prefix``) where each of ``ids`` ends."""
    base = len(_decode(codec, prefix))
    return [len(_decode(codec, [*prefix, *ids[: i + 1]])) - base for i in range(len(ids))]


@dataclass
class TextDrafter:
    """A drafter of another vocabulary proposing in the target's ids (ModelAdapter's proposing half).

    ``propose(prefix, k)`` takes the target's committed ids: their text (``target_codec``) is
    re-tokenised into the drafter's ids, the drafter proposes ``k`` of its own tokens, and their text
    comes back as target ids through :func:`continuation_ids` (so a proposal may hold more or fewer
    than ``k`` target tokens). Each target token's confidence is the drafter's probability of the
    token whose text covers the target token's last character. Proposals are greedy: the sampling
    rules need the drafter's distribution over the target's vocabulary, which another vocabulary has
    not got (a verifier in a sampling mode treats them as one-hot, which stays lossless).
    """

    drafter: ModelAdapter
    drafter_codec: TextCodec
    target_codec: TextCodec
    vocab_size: int  # the target's: the ids this proposer emits
    eos_token_id: int | None  # the target's
    name: str = "text-drafter"

    @property
    def modality(self) -> str:
        return self.drafter.modality

    @property
    def device(self) -> torch.device:
        return self.drafter.device

    @property
    def forwards(self) -> int:
        return int(getattr(self.drafter, "forwards", 0))

    def prefill(self, context: StageContext) -> None:
        self.drafter.prefill(context)

    def own_prefix(self, prefix: Sequence[int]) -> list[int]:
        """The drafter's ids for the text of the target's committed ``prefix``."""
        return _encode(self.drafter_codec, _decode(self.target_codec, prefix))

    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal:
        if temperature != 0.0:
            raise ValueError(
                f"{self.name}: a drafter of another vocabulary drafts greedily (temperature 0), "
                f"got temperature {temperature}"
            )
        if k == 0:
            return Proposal([], [], None, False)
        own = self.own_prefix(prefix)
        prop = self.drafter.propose(own, k)
        text = draft_text(self.drafter_codec, own, prop.token_ids)
        ids = continuation_ids(self.target_codec, prefix, text)
        if not ids:
            return Proposal([], [], None, False)
        ends_own = _token_ends(self.drafter_codec, own, prop.token_ids)
        ends_target = _token_ends(self.target_codec, prefix, ids)
        probs = []
        for end in ends_target:
            j = next((i for i, e in enumerate(ends_own) if e >= end), len(prop.probs) - 1)
            probs.append(float(prop.probs[j]) if prop.probs else 1.0)
        return Proposal(ids, probs, None, False)

    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        raise ValueError(
            f"{self.name}: a drafter of another vocabulary only proposes; it cannot score the "
            "target's ids (put it at the bottom of the cascade)"
        )
