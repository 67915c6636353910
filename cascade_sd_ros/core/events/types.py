"""Event dtypes, the decoder result and the one error type every decoder raises.

Times are microseconds of *sensor* time (the camera's own clock) in a signed 64-bit integer, so
rollovers of the camera's narrow counters are unwrapped into one monotonic axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Change-detection (CD) events: pixel column, row, polarity (1 = ON/brighter, 0 = OFF), t [µs].
CD_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("p", "i1"), ("t", "<i8")])
#: External-trigger events: trigger channel id, edge (the EVT 2.0 / 3.0 value bit: 0 = falling,
#: 1 = rising, as Prophesee's format specifications define it), t [µs].
TRIGGER_DTYPE = np.dtype([("id", "u1"), ("p", "i1"), ("t", "<i8")])

EMPTY_CD = np.zeros(0, CD_DTYPE)
EMPTY_TRIGGERS = np.zeros(0, TRIGGER_DTYPE)


class EventDecodeError(ValueError):
    """A payload or encoding a decoder cannot accept. The decoder's state is left as it was
    before the rejected call, so later packets decode exactly as if it had never been seen."""


@dataclass(frozen=True)
class DecodedEvents:
    """What one ``decode`` call produced.

    ``consumed`` is the number of payload bytes decoded; it is less than the payload length only
    when ``until_t_us`` stopped the decode, and ``payload[consumed:]`` then resumes exactly where
    this call stopped (pass it to the next ``decode``). ``next_t_us`` is the time of the first
    event not yet returned (None when the payload was consumed). ``skipped_words`` counts words
    the decoder ignored (reserved codes, events outside the sensor geometry, events before the
    first complete time stamp).

    ``time_resyncs`` counts sensor-time discontinuities in this call that no counter wrap
    explains: an evt3/evt2 TIME_HIGH (libcaer_cmp TIME_HIGH, libcaer time stamp) that jumps
    forward more than ``payload.MAX_TIME_JUMP_US`` (4.19 s) or steps back where no wrap is due
    (a wrap is only a step back from the top of the counter's range to its bottom), and, for the
    stateless mono/trigger encodings, an event earlier than the one before it. The decoder
    resynchronises at each (see the format's module doc): times next to one may be wrong, but
    the stream's later packets are not shifted by it. Nodes count it in their diagnostics.

    ``events_dropped_span`` counts events dropped because the call's events spanned more than
    the decoder's ``max_span_us`` (default 1 s): the densest window of that length is kept (see
    ``payload.clip_span``); also events a libcaer packet would put past the time horizon.
    Neither kind is in ``skipped_words``.
    """

    cd: np.ndarray  # [N] CD_DTYPE
    triggers: np.ndarray  # [M] TRIGGER_DTYPE
    consumed: int  # [bytes]
    next_t_us: int | None  # [µs] sensor time where a time-sliced decode stopped
    skipped_words: int = 0  # [count]
    time_resyncs: int = 0  # [count] unexplained sensor-time jumps seen in this call
    events_dropped_span: int = 0  # [count] events outside the call's max_span_us window

    @property
    def finished(self) -> bool:
        """True when the whole payload was decoded (no ``until_t_us`` stop)."""
        return self.next_t_us is None
