"""The receiving side of the vocabulary handshake (DESIGN.md, "Models"): every DraftTokens and Commit
names the vocabulary its ids come from (``vocab_fingerprint``); a stage never uses ids of another.

:class:`ForeignVocab` sits in front of one input's parsing. :meth:`ForeignVocab.route` says how a
message may be used under the stage's ``draft_ids`` parameter: by its ids (same vocabulary), by its
text (another vocabulary, ``auto``/``text``, and the message carries text: ``DraftTokens.draft_text``,
``Commit.text``), or not at all. Set-aside messages are counted, one ERROR per foreign (source,
vocabulary) pair names both vocabularies, and :meth:`ForeignVocab.status` keeps the node's diagnostics
at ERROR while they keep coming; text reading is logged once per pair at INFO and counted apart.
No node, no rclpy: the node hands it log functions.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Literal

from cascade_sd_ros.core.spec.text_drafts import resolve_draft_ids
from cascade_sd_ros.core.stage_model import Vocabulary
from cascade_sd_ros.ros.outputs import message_vocabulary

FOREIGN_ERROR_S = 10.0  # [s] diagnostics stay ERROR this long after the last foreign message


class ForeignVocab:
    """Sets aside messages of one input (``what``: "drafts", "commits") whose vocabulary is not ``own``.

    ``role`` names this stage in the messages ("target", "refiner", "drafter"). Thread-safe; the
    counter is ``{what}_foreign_vocab`` in :meth:`values`.
    """

    def __init__(
        self,
        own: Vocabulary,
        what: str,
        role: str,
        log_error: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        draft_ids: str = "same-vocab",
        log_info: Callable[[str], None] | None = None,
    ) -> None:
        resolve_draft_ids(draft_ids, "", "")  # a bad value fails here, at construction
        self.own = own
        self.what = what
        self.role = role
        self.draft_ids = draft_ids
        self.log_error = log_error
        self.log_info = log_info or (lambda _text: None)
        self.as_text = 0  # messages of another vocabulary read through their text
        self._text_seen: set[tuple[str, str]] = set()
        self._aside: dict[str, tuple[float, Vocabulary]] = {}  # source -> (when, vocabulary) of its last set-aside
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self.count = 0
        self._last_s: float | None = None
        self._last_text = ""

    def admit(self, msg: Any, source: str) -> bool:
        """True when ``msg``'s ids are in this stage's vocabulary; else it is counted (and the first
        one from ``source`` with that vocabulary logged) and must not be used."""
        theirs = message_vocabulary(msg)
        if theirs.fingerprint == self.own.fingerprint:
            return True
        text = (
            f"{self.what} from the {source} use vocabulary {theirs}, this {self.role} uses {self.own}: "
            f"their token ids mean something else here, so they are set aside (never used); give the {source} "
            f"a model with the {self.role}'s tokenizer"
        )
        with self._lock:
            self.count += 1
            self._last_s = self._clock()
            self._last_text = text
            self._aside[source] = (self._last_s, theirs)
            first = (source, theirs.fingerprint) not in self._seen
            self._seen.add((source, theirs.fingerprint))
        if first:
            self.log_error(text)
        return False

    def route(self, msg: Any, source: str) -> Literal["ids", "text"] | None:
        """ "ids" when ``msg``'s ids are in this stage's vocabulary; "text" when they are not but
        ``draft_ids`` lets text cross and the message carries some; else None (counted, logged as
        :meth:`admit` does: never used)."""
        theirs = message_vocabulary(msg)
        if theirs.fingerprint == self.own.fingerprint and self.draft_ids != "text":
            return "ids"
        if resolve_draft_ids(self.draft_ids, self.own.fingerprint, theirs.fingerprint) == "text" and theirs.fingerprint:
            text = getattr(msg, "draft_text", None)
            if text is None:
                text = getattr(msg, "text", "")
            if text or getattr(msg, "final", False) or not list(getattr(msg, "token_ids", [])):
                with self._lock:
                    self.as_text += 1
                    first = (source, theirs.fingerprint) not in self._text_seen
                    self._text_seen.add((source, theirs.fingerprint))
                if first:
                    self.log_info(
                        f"{self.what} from the {source} use vocabulary {theirs}, this {self.role} uses "
                        f"{self.own}: read as text and re-tokenised (draft_ids={self.draft_ids})"
                    )
                return "text"
        return "ids" if self.admit(msg, source) else None

    def why(self, source: str) -> str | None:
        """Why ``source`` sends nothing usable, while its messages keep being set aside (for a caption's
        degraded reason): its vocabulary and this stage's; None otherwise."""
        with self._lock:
            seen = self._aside.get(source)
            if seen is None or self._clock() - seen[0] > FOREIGN_ERROR_S:
                return None
        return f"its {self.what} use vocabulary {seen[1]}, the {self.role}'s is {self.own}: set aside"

    def status(self) -> str | None:
        """The ERROR message while foreign messages keep coming (one within :data:`FOREIGN_ERROR_S`)."""
        with self._lock:
            if self._last_s is None or self._clock() - self._last_s > FOREIGN_ERROR_S:
                return None
            return f"{self.count} {self.what} set aside: {self._last_text}"

    def values(self) -> dict[str, object]:
        return {f"{self.what}_foreign_vocab": self.count, f"{self.what}_as_text": self.as_text, "vocab": str(self.own)}
