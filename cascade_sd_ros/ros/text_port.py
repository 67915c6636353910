"""One stage's side of drafting across vocabularies (issue 16): what the nodes call so that each of
them stays a few lines of glue.

* :meth:`TextPort.commit_ids` -- an upstream stage reading the verifier's Commit: its ids when the
  vocabularies agree, else its text turned into this stage's ids (remembering where that commit
  ends in the target's tokens), else None (set aside, counted, logged by :class:`ForeignVocab`);
* :meth:`TextPort.outgoing` -- what a DraftTokens carries besides the ids: the text the draft adds
  and its start position in the target's tokens (where the verifier lays the text);
* :meth:`TextPort.incoming_draft` -- the verifier (or a refiner sharing its vocabulary) reading a
  DraftTokens: its ids, or its text re-tokenised into own ids continuing the round's commit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec.text_drafts import CommitTexts, TextCodec, draft_text
from cascade_sd_ros.core.stage_model import StageModel
from cascade_sd_ros.ros.outputs import DraftMessageError, draft_from_msg, draft_from_text_msg
from cascade_sd_ros.ros.vocab import ForeignVocab


class TextPort:
    """``what`` is "commits" (an upstream stage) or "drafts" (a receiver of drafts)."""

    def __init__(self, model: StageModel, what: str, role: str, draft_ids: str, log_error: Callable[[str], None],
                 log_info: Callable[[str], None]) -> None:
        self.model = model
        self.codec: TextCodec | None = model.codec
        # without a tokenizer nothing can cross as text: such a stage keeps to ids (and sets the rest aside)
        self.guard = ForeignVocab(model.vocab, what, role, log_error, draft_ids=draft_ids if self.codec else
                                  "same-vocab", log_info=log_info)
        self.texts = CommitTexts(self.codec) if self.codec is not None else None
        self.stale_text = 0  # text drafts that contradicted the round's commit (or added nothing)

    # ------------------------------------------------------------------ upstream stages
    def commit_ids(self, msg: Any, source: str = "verifier") -> list[int] | None:
        route = self.guard.route(msg, source)
        if route == "ids":
            return [int(t) for t in msg.token_ids]
        if route == "text" and self.texts is not None:
            return self.texts.own_prefix(int(msg.round_id), int(msg.commit_seq), len(msg.token_ids), str(msg.text))
        return None

    def outgoing(self, round_id: int, committed: Sequence[int], draft: Draft) -> tuple[str, int]:
        """(draft text, start position in the target's tokens) for a draft made on ``committed``
        (the round's commit in this stage's ids when it drafted). No tokenizer: ("", own start)."""
        if self.texts is None or self.codec is None:
            return "", draft.start_position
        if draft.commit_seq and self.texts.knows(round_id):  # this round's commits came as text
            seen = self.texts.outgoing(round_id, draft.commit_seq, draft.token_ids, draft.start_position)
            if seen is None:
                return "", draft.start_position  # its commit is forgotten: no position to give (set aside there)
            start, text = seen
            return text, start
        base = list(committed[:draft.start_position])
        return draft_text(self.codec, base, draft.token_ids), draft.start_position

    # ------------------------------------------------------------------ receivers of drafts
    def incoming_draft(self, msg: Any, source: str, committed: Callable[[], Sequence[int]],
                       expected_stage: int | None = None) -> Draft | None:
        """A DraftTokens as own ids (None: set aside or stale); ``committed`` gives the round's commit
        in this stage's ids when asked. DraftMessageError for a malformed message."""
        route = self.guard.route(msg, source)
        if route == "ids":
            return draft_from_msg(msg, expected_stage=expected_stage, vocab_size=self.model.adapter.vocab_size)
        if route != "text" or self.codec is None:
            return None
        draft = draft_from_text_msg(msg, committed(), self.codec, expected_stage=expected_stage)
        if draft is None:
            self.stale_text += 1
        return draft

    def values(self) -> dict[str, object]:
        return {**self.guard.values(), f"{self.guard.what}_text_stale": self.stale_text}


__all__ = ["DraftMessageError", "TextPort"]
