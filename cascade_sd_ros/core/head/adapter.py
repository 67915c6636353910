"""`HeadAdapter`: the fused draft head as a proposing stage, verified like any other drafter.

It implements the `CachedRowsAdapter` hooks, so `propose`/`score`/`next_logits` and the engine's
steps treat it as one more stage: its "model" is the one-layer head, its rows are the target's LM
head applied to predicted states, and its cache is the head's own K/V keyed by (token, where the
feature came from). Feature of row j: the target's true hidden state when the target has computed
it for this very prefix (after a verify forward: every committed position but the last token), the
head's own prediction inside a chained draft, or zeros without target states (mode "events", or
while the target has not prefilled this round yet: prefill hiding). A position built from a
prediction or from zeros is recomputed once the true state exists, so drafts only get better; they
never change the output, which the target's verification alone decides.

Modes (the ablation's three heads, one set of weights trained for all three):
* "fused": target states + aligned event features (memory), the default;
* "target": target states alone (no event features: what a missing EventFeatures message degrades to);
* "events": aligned event features alone (zero target states).

A head trained with video rows (`HeadConfig.video_rows`) also attends to the target's own video
tokens wherever it reads the target's states: a forward hook on the target's projector catches them
in the round's prefill (no encoding of its own), and the head's memory takes them in as soon as the
target has prefilled this round (a draft made before that, prefill hiding, re-runs on them). Without
them (another model, a prefill that made none) the head drafts as trained for that case.

With `stop_below` > 0 a head draft is as long as the head is sure (see
:class:`~cascade_sd_ros.core.spec.adapter.CachedRowsAdapter`) instead of the controller's adapted
length. Off by default (`STOP_BELOW`): on the zoo a head step costs 0.03 of a target step, so a
token past an unsure one is nearly free to draft, and stopping there was neutral (-4 % to +3 % in
the engine, within noise in the nodes); it can pay where drafting is dearer relative to verifying
(bench/RESULTS.md, "Seventh session").
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel

from cascade_sd_ros.core.head.features import event_tokens, projector_of, video_memory
from cascade_sd_ros.core.head.model import AlignmentMLP, FusedDraftHead, HeadCache
from cascade_sd_ros.core.spec.adapter import CachedRowsAdapter, HFAdapter, Proposal, StageContext

__all__ = ["HEAD_MODES", "STOP_BELOW", "HeadMode", "HeadAdapter", "PrefillHidingHead", "check_stop_below"]

HeadMode = Literal["fused", "target", "events"]
HEAD_MODES: tuple[str, ...] = ("fused", "target", "events")
_TRUE, _PRED, _ZERO = "T", "P", "Z"  # where a head position's feature came from
STOP_BELOW = 0.0  # default floor: off (a head draft ends after its first token less likely than this)


def check_stop_below(value: float, what: str = "stop_below") -> float:
    """A confidence floor in [0, 1) (0: fixed-length drafts), or a ValueError naming ``what``."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (0: drafts of the full length), got {value}")
    return float(value)


class HeadAdapter(CachedRowsAdapter):
    """Draft head over `target`'s hidden states; `event_encoder` (the event drafter's Llava) makes
    event tokens from an event image context; prefill with `prefill_events` when they come ready-made."""

    def __init__(
        self,
        head: FusedDraftHead,
        align: AlignmentMLP,
        target: HFAdapter,
        *,
        event_encoder: PreTrainedModel | None = None,
        mode: HeadMode = "fused",
        name: str = "head",
        stop_below: float = STOP_BELOW,
    ) -> None:
        if mode not in HEAD_MODES:
            raise ValueError(f"head mode must be one of {HEAD_MODES}, got {mode!r}")
        if head.cfg.hidden != target.model.config.get_text_config().hidden_size:
            raise ValueError(
                f"draft head of width {head.cfg.hidden} does not fit target {target.name!r} of width "
                f"{target.model.config.get_text_config().hidden_size}"
            )
        self.name = name
        self.modality = "image"
        self.mode: HeadMode = mode
        self.stop_below = check_stop_below(stop_below)
        self.net = head.eval()  # the stage's own network
        self.model = head  # type: ignore[assignment]  # CachedRowsAdapter's slot; this stage has no transformers model
        self.align = align.eval()
        self.target = target
        self.event_encoder = event_encoder
        target.keep_hidden = True  # the head reads the target's states from the next prefill on
        self._lm_head = target.model.get_output_embeddings()
        self._embed = target.model.get_input_embeddings()
        self._vocab_size = target.vocab_size
        self._eos_token_id = target.eos_token_id
        self._context: StageContext | None = None
        self._rows = torch.empty(0, self._vocab_size, dtype=torch.float32, device=self.device)
        self._states = torch.empty(0, head.cfg.hidden, dtype=torch.float32, device=self.device)  # [cap, D]
        self._memory: torch.Tensor | None = None  # [1, R, D] aligned event tokens
        self._cache: HeadCache | None = None
        self._keys: list[tuple[int, str]] = []  # per head position: (token, feature source)
        self._prompt_last = 0
        self._stale_prefill: int | None = None  # the target's prefill count when its states were stale
        self._true_upto = 0  # rows 0.._true_upto-1 hold the target's own states
        self._zero = torch.zeros(1, head.cfg.hidden, device=self.device)
        self.forwards = 0
        self._caught: tuple[torch.Tensor, int] | None = None  # the projector's last output, its prefill's count
        self._video_in_memory = False  # whether this round's head cache attends to the target's video tokens
        self.read_video = True  # False: draft as without video tokens (the ablation), from the next round on
        self._video_hook = self._hook_projector() if head.cfg.video_rows else None

    def _hook_projector(self) -> torch.utils.hooks.RemovableHandle | None:
        """Catch the target's projected video tokens whenever its prefill makes them (None: it has no
        projector). The hook holds the adapter weakly: a dropped adapter leaves a no-op behind."""
        projector = projector_of(self.target.model)
        if projector is None:
            return None
        me = weakref.ref(self)

        def caught(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
            del module, args
            adapter = me()
            if adapter is not None:  # the target counts the prefill once its forward is done
                adapter._caught = (output.detach(), adapter.target.prefills + 1)

        return projector.register_forward_hook(caught)

    def close(self) -> None:
        """Stop catching the target's video tokens (the adapter drafts without them from then on)."""
        if self._video_hook is not None:
            self._video_hook.remove()
            self._video_hook = None
        self._caught = None

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def has_events(self) -> bool:
        """Whether this round's event features are in the head's memory."""
        return self._memory is not None

    # ----------------------------------------------------------------- prefill
    @torch.inference_mode()
    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        """Start a round from the event stage's image context (its prompt ends as the target's does).

        caption: ignored (the head's positions follow the prefix of each propose)."""
        del caption
        if context.modality != "image" or context.pixel_values is None:
            raise ValueError(f"adapter {self.name!r} takes the event drafter's image context, got {context.modality}")
        if self.event_encoder is None:
            raise ValueError(f"adapter {self.name!r} has no event encoder; pass event tokens to prefill_events")
        tokens = event_tokens(self.event_encoder, context.pixel_values)  # [1, R, E]
        self.prefill_events(tokens, context.input_ids[-1], target_current=False, context=context)

    @torch.inference_mode()
    def prefill_events(
        self,
        events: torch.Tensor | None,
        prompt_last: int,
        *,
        target_current: bool,
        context: StageContext | None = None,
    ) -> None:
        """Start a round from event tokens `[1, R, E]` (None: none came; the head uses target states alone).

        prompt_last: the prompt's last token id (position 0 reads it). target_current: whether the
        target is already prefilled for this round (else its states are ignored until it is).
        """
        cfg = self.net.cfg
        if events is not None:
            if events.dim() == 2:
                events = events.unsqueeze(0)
            if tuple(events.shape[1:]) != (cfg.event_rows, cfg.event_dim):
                raise ValueError(
                    f"adapter {self.name!r}: event tokens of shape {tuple(events.shape[1:])}, "
                    f"the head was trained on ({cfg.event_rows}, {cfg.event_dim})"
                )
            if not torch.isfinite(events).all():
                raise ValueError(f"adapter {self.name!r}: event tokens hold NaN or inf")
        self._check_ids([prompt_last], "prompt")
        self._memory = None
        if events is not None and self.mode != "target":
            self._memory = self.align(events.to(self.device).float())  # [1, R, D]
        self._prompt_last = int(prompt_last)
        # the same context object may be prefilled again next round: count prefills, not contexts
        self._stale_prefill = None if target_current else self.target.prefills
        self._context = context if context is not None else StageContext((int(prompt_last),), None, "text")
        self._restart(self._round_video())

    def _restart(self, video: torch.Tensor | None) -> None:
        """A fresh head cache over this round's memory (and video tokens, where given)."""
        self._cache = self.net.new_cache(self._memory, video)
        self._video_in_memory = video is not None
        self._keys = []
        self._true_upto = 0

    def _target_current(self) -> bool:
        """Whether the target holds this round's prefill (its states and video tokens are this clip's)."""
        return self.target.context is not None and self.target.prefills != self._stale_prefill

    def _round_video(self) -> torch.Tensor | None:
        """The target's video tokens `[1, V, D]` of this round's prefill (None: not prefilled yet, none
        caught, the "events" mode, ``read_video`` off, or a head without video rows)."""
        caught = self._caught
        if caught is None or caught[1] != self.target.prefills or not self.read_video or self.mode == "events":
            return None
        return video_memory(caught[0], self.net.cfg.video_rows) if self._target_current() else None

    def attach_target(self) -> None:
        """Read the target's states as current for this round (it was prefilled for it before the head)."""
        self._stale_prefill = None

    # ----------------------------------------------------------------- features
    def _true_states(self, tokens: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(f_{-1} or None, true rows f_0..f_{m-1} `[m, D]`) the target holds for `tokens`."""
        empty = self._states[:0]
        if self.mode == "events" or not self._target_current():
            return None, empty
        tail, rows = self.target.hidden_rows(tokens)
        return tail[0], rows

    def _state_row(self, j: int, rows: torch.Tensor) -> torch.Tensor:
        """The feature `[D]` head position j + 1 reads: row j's state (true, predicted or zero)."""
        if self.mode == "events":
            return self._zero[0]
        return rows[j] if j < rows.shape[0] else self._states[j]

    # ----------------------------------------------------------------- CachedRowsAdapter hooks
    def _run(self, feats: torch.Tensor, tokens: list[int], start: int) -> None:
        """Head positions start.. from features `[n, D]` and tokens; states/rows start.. stored."""
        assert self._cache is not None
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        out = self.net.step(self._cache, feats, self._embed(ids))  # [n, D]
        self.forwards += 1
        self._store(start, out)

    def _store(self, start: int, states: torch.Tensor) -> None:
        end = start + states.shape[0]
        if end > self._states.shape[0]:
            grown = torch.empty(max(end, 2 * self._states.shape[0], 64), states.shape[1], device=self.device)
            grown[:start] = self._states[:start]
            self._states = grown
            rows = torch.empty(grown.shape[0], self._vocab_size, dtype=torch.float32, device=self.device)
            rows[:start] = self._rows[:start]
            self._rows = rows
        self._states[start:end] = states
        self._rows[start:end] = self._lm_head(states).float()

    def _sync(self, tokens: Sequence[int]) -> None:
        """Head positions 0..len(tokens) hold this prefix; the last row is the state/logits after it."""
        if self._video_hook is not None and not self._video_in_memory:
            video = self._round_video()
            if video is not None:  # the target has prefilled since the round began: read its tokens too
                self._restart(video)
        assert self._cache is not None
        tail, rows = self._true_states(tokens)
        n = len(tokens)
        want: list[tuple[int, str]] = [(self._prompt_last, _TRUE if tail is not None else _ZERO)]
        want += [
            (int(tokens[j]), _ZERO if self.mode == "events" else _TRUE if j < rows.shape[0] else _PRED)
            for j in range(n)
        ]
        keep = 0
        while keep < min(len(self._keys), len(want)) and self._keys[keep] == want[keep]:
            keep += 1
        if keep < len(self._keys):
            self._cache.crop(keep)
            del self._keys[keep:]
        # positions whose features are known now go in one batch; a predicted one waits for its row
        p = keep
        while p <= n:
            q = p
            feats = []
            while q <= n and (want[q][1] != _PRED or q == p):
                feats.append((tail if tail is not None else self._zero[0]) if q == 0 else self._state_row(q - 1, rows))
                q += 1
            self._run(torch.stack(feats), [want[i][0] for i in range(p, q)], p)
            self._keys.extend(want[p:q])
            p = q
        # where the target has the true state after this prefix its own row is the exact one: rows
        # below min(_true_upto, keep) are true already, the rest were (re)written by the head
        lo = min(self._true_upto, keep)
        hi = min(rows.shape[0], n + 1)
        if hi > lo:
            self._store(lo, rows[lo:hi])
        self._true_upto = max(hi, 0)

    def _feed(self, ids: torch.Tensor, row: int) -> None:
        """Chain drafted ids `[n]` at caption positions row.. on the states of rows row.. (true or predicted)."""
        assert self._cache is not None
        n = ids.numel()
        feats = self._zero.expand(n, -1) if self.mode == "events" else self._states[row : row + n]
        out = self.net.step(self._cache, feats.clone(), self._embed(ids.view(-1)))  # [n, D]
        self.forwards += 1
        self._store(row + 1, out)

    def _record(self, tokens: Sequence[int]) -> None:
        """Key the positions `_feed` just wrote: token and where the feature of its row came from."""
        for t in tokens:
            j = len(self._keys) - 1  # the row whose state this position read
            src = _ZERO if self.mode == "events" else _TRUE if j < self._true_upto else _PRED
            self._keys.append((int(t), src))


class PrefillHidingHead:
    """The head as a stage whose first draft is ready before the target's prefill, to ride in it.

    `prefill` starts the round on the event features and drafts `gamma` tokens from them alone (the
    target's states for this clip do not exist yet). The caller hands `early_draft` to the target's
    prefill (`HFAdapter.prefill(context, caption=...)`), so verifying it costs no forward of its own;
    the first `propose([])` returns it, and from then on the head reads the target's states again.
    Verification is untouched, so the output is exact.
    """

    def __init__(self, head: HeadAdapter, gamma: int) -> None:
        if gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        self.head = head
        self.gamma = gamma
        self.name = head.name
        self.modality = head.modality
        self._early: Proposal | None = None

    @property
    def vocab_size(self) -> int:
        return self.head.vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self.head.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.head.device

    @property
    def forwards(self) -> int:
        return self.head.forwards

    @property
    def early_draft(self) -> list[int]:
        """The round's first draft (empty once taken): what the target's prefill should carry."""
        return [] if self._early is None else list(self._early.token_ids)

    @torch.inference_mode()
    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        del caption  # the head's positions follow the prefix of each propose
        self.head.prefill(context)  # the target still holds the previous round: its states are not read
        self._early = self.head.propose([], self.gamma)

    def propose(self, prefix: Sequence[int], k: int, **kwargs: object) -> Proposal:
        early, self._early = self._early, None
        if early is not None and len(prefix) == 0 and not kwargs.get("temperature") and not kwargs.get("return_q"):
            return Proposal(early.token_ids[:k], early.probs[:k], None, False)
        return self.head.propose(prefix, k, **kwargs)  # type: ignore[arg-type]

    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        return self.head.score(prefix, draft)
