"""The receiving side of the vocabulary handshake (DESIGN.md, "Models"): every DraftTokens and Commit
names the vocabulary its ids come from (``vocab_fingerprint``); a stage never uses ids of another.

:class:`ForeignVocab` sits in front of one input's parsing: :meth:`ForeignVocab.admit` says whether a
message's ids may be used, counts the ones set aside, logs one ERROR per foreign (source, vocabulary)
pair naming both vocabularies, and :meth:`ForeignVocab.status` keeps the node's diagnostics at ERROR
while such messages keep coming. No node, no rclpy: the node hands it a log function.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from cascade_sd_ros.core.stage_model import Vocabulary
from cascade_sd_ros.ros.outputs import message_vocabulary

FOREIGN_ERROR_S = 10.0  # [s] diagnostics stay ERROR this long after the last foreign message


class ForeignVocab:
    """Sets aside messages of one input (``what``: "drafts", "commits") whose vocabulary is not ``own``.

    ``role`` names this stage in the messages ("target", "refiner", "drafter"). Thread-safe; the
    counter is ``{what}_foreign_vocab`` in :meth:`values`.
    """

    def __init__(self, own: Vocabulary, what: str, role: str, log_error: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.own = own
        self.what = what
        self.role = role
        self.log_error = log_error
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
        text = (f"{self.what} from the {source} use vocabulary {theirs}, this {self.role} uses {self.own}: "
                f"their token ids mean something else here, so they are set aside (never used); give the {source} "
                f"a model with the {self.role}'s tokenizer")
        with self._lock:
            self.count += 1
            self._last_s = self._clock()
            self._last_text = text
            first = (source, theirs.fingerprint) not in self._seen
            self._seen.add((source, theirs.fingerprint))
        if first:
            self.log_error(text)
        return False

    def status(self) -> str | None:
        """The ERROR message while foreign messages keep coming (one within :data:`FOREIGN_ERROR_S`)."""
        with self._lock:
            if self._last_s is None or self._clock() - self._last_s > FOREIGN_ERROR_S:
                return None
            return f"{self.count} {self.what} set aside: {self._last_text}"

    def values(self) -> dict[str, object]:
        return {f"{self.what}_foreign_vocab": self.count, "vocab": str(self.own)}
