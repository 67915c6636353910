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

    def __init__(
        self,
        model: StageModel,
        what: str,
        role: str,
        draft_ids: str,
        log_error: Callable[[str], None],
        log_info: Callable[[str], None],
    ) -> None:
        self.model = model
        self.codec: TextCodec | None = model.codec
        # without a tokenizer nothing can cross as text: such a stage keeps to ids (and sets the rest aside)
        self.guard = ForeignVocab(
            model.vocab, what, role, log_error, draft_ids=draft_ids if self.codec else "same-vocab", log_info=log_info
        )
        self.texts = CommitTexts(self.codec) if self.codec is not None else None
        self.stale_text = 0  # text drafts that contradicted the round's commit (or added nothing)
        self.textless = 0  # own drafts not sent to a target of another vocabulary: no text (a lone EOS)

    # ------------------------------------------------------------------ upstream stages
    def commit_ids(self, msg: Any, source: str = "verifier") -> list[int] | None:
        route = self.guard.route(msg, source)
        if route == "ids":
            return [int(t) for t in msg.token_ids]
        if route == "text" and self.texts is not None:
            return self.texts.own_prefix(int(msg.round_id), int(msg.commit_seq), len(msg.token_ids), str(msg.text))
        return None

    def reads_text(self, round_id: int) -> bool:
        """Whether ``round_id``'s commits reached this stage as text (its ids are not the target's)."""
        return self.texts is not None and self.texts.knows(round_id)

    def outgoing(self, round_id: int, spec: Sequence[int], draft: Draft) -> tuple[str, int] | None:
        """(draft text, start position in the target's tokens) for a draft this stage published after
        ``spec[:draft.start_position]`` (its speculated caption for the round: the commit in its ids,
        then its own drafts). No tokenizer: ("", own start). None: nothing a target of another
        vocabulary could use (a draft of special tokens only, such as a lone EOS: no text; a commit
        forgotten), counted."""
        if self.texts is None or self.codec is None:
            return "", draft.start_position
        before = list(spec[: draft.start_position])
        if self.texts.knows(round_id):  # this round's commits came as text: the target's ids are others
            seen = self.texts.outgoing(round_id, draft.commit_seq, before, draft.token_ids)
            if seen is None or not seen[1]:
                self.textless += 1
                return None
            start, text = seen
            return text, start
        return draft_text(self.codec, before, draft.token_ids), draft.start_position

    # ------------------------------------------------------------------ receivers of drafts
    def incoming_draft(
        self, msg: Any, source: str, committed: Callable[[], Sequence[int]], expected_stage: int | None = None
    ) -> Draft | None:
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
        out = {**self.guard.values(), f"{self.guard.what}_text_stale": self.stale_text}
        if self.guard.what == "commits":
            out["drafts_textless"] = self.textless
        return out


__all__ = ["DraftMessageError", "TextPort"]
