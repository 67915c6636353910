"""Whether the strobe's first edge and the first frame are the same exposure: counting from the starts.

A strobe train matched against periodic frames is ambiguous modulo the frame period; what breaks the
symmetry without an estimate is where the streams begin (how DSEC-style rigs pair them): when the
node heard both streams from their first exposure, the first edge is the first frame's, and every
later frame's edge follows by count (missing edges and dropped frames are ~2-period gaps; drift is
ppm, so counting by intervals is safe). This module only decides whether the node may count:

* the event stream was heard from its start: the first packet decoded has ``seq`` 0 (a driver
  numbers packets from 0; a bag replayed from its beginning) — a node that joined mid-stream cannot
  know which exposure came first;
* the first edge is the frame camera's first exposure: it lies within half a period of the event
  stream's first data (the recording started both cameras together) or it follows that start by at
  least ``silent_periods`` periods, the trigger line silent while the event camera ran (the frame
  camera started later). In between, the first exposure's edge may have been lost: no count;
* the first frame came with the strobe, not long before it: when both arrival times are known, the
  first frame arrived within ``max_arrival_gap_s`` of the first edge's packet (a frame stream heard
  long before the strobe began was running already: its first frame is not the first exposure).

What no check here can see: a first frame (or first edge) lost in transport while the streams
started together shifts the count by one period. The trigger fit still demands that every later pair
agree with the first, and a confident estimate that disagrees by a whole period overrides the count
(:class:`~cascade_sd_ros.core.align.offset_tracker.OffsetTracker`). ``mode`` "start" trusts the count
without the checks (the user says the recording starts both cameras together); "off" never counts.
"""

from __future__ import annotations

import threading

START_MODES = ("auto", "start", "off")


class StrobeStart:
    """The first event data, first strobe edge and first frame the node saw (see module doc)."""

    def __init__(self, mode: str = "auto", silent_periods: int = 3, max_arrival_gap_s: float = 1.0) -> None:
        if mode not in START_MODES:
            raise ValueError(f"StrobeStart: mode must be one of {', '.join(START_MODES)}, got {mode!r}")
        if silent_periods < 1 or not max_arrival_gap_s > 0:
            raise ValueError("StrobeStart: silent_periods >= 1 and max_arrival_gap_s > 0")
        self.mode = mode
        self.silent_periods = int(silent_periods)
        self.max_arrival_gap_s = float(max_arrival_gap_s)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Time jumped: what the node saw first is no longer the streams' start."""
        with self._lock:
            self._first_seq: int | None = None
            self._stream_start_ns: int | None = None  # [ns] event clock: the first packet's first data
            self._edge_ns: int | None = None  # [ns] event clock: the first kept strobe edge
            self._edge_arrival_s: float | None = None
            self._frame_ns: int | None = None  # [ns] RGB clock: the first frame's stamp
            self._frame_arrival_s: float | None = None

    def observe_packet(self, seq: int, first_ns: int) -> None:
        """A decoded packet: its ``seq`` and its first datum (event or edge) on the event clock."""
        with self._lock:
            if self._first_seq is None:
                self._first_seq, self._stream_start_ns = int(seq), int(first_ns)

    def observe_edge(self, t_ns: int, arrival_s: float | None = None) -> None:
        """A kept strobe edge (the strobe's channel and edge), in time order."""
        with self._lock:
            if self._edge_ns is None:
                self._edge_ns, self._edge_arrival_s = int(t_ns), arrival_s

    def observe_frame(self, t_ns: int, arrival_s: float | None = None) -> None:
        """A frame's stamp (RGB clock); the earliest stamp counts, the first arrival with it."""
        with self._lock:
            if self._frame_ns is None:
                self._frame_ns, self._frame_arrival_s = int(t_ns), arrival_s
            elif int(t_ns) < self._frame_ns:  # frames out of order at the start: the earliest is first
                self._frame_ns = int(t_ns)

    def anchor(self, period_ns: int | None) -> tuple[tuple[int, int] | None, str]:
        """((first edge, first frame), why) when the count may start there, else (None, why not)."""
        with self._lock:
            seq, start, edge, frame = self._first_seq, self._stream_start_ns, self._edge_ns, self._frame_ns
            gap = (
                None
                if self._edge_arrival_s is None or self._frame_arrival_s is None
                else abs(self._frame_arrival_s - self._edge_arrival_s)
            )
        if self.mode == "off":
            return None, "off (trigger_pairing)"
        if edge is None or frame is None:
            return None, "waiting for the first edge and frame"
        if self.mode == "start":
            return (edge, frame), "trusted (trigger_pairing: start)"
        if seq is None or start is None or period_ns is None:
            return None, "waiting for the frame period"
        if seq != 0:
            return None, f"joined the event stream mid-way (first packet seq {seq})"
        lead = edge - start
        if period_ns // 2 < lead < self.silent_periods * period_ns:
            return None, f"first edge {lead / 1e6:.1f} ms after the event stream's start (its own may be lost)"
        if gap is not None and gap > self.max_arrival_gap_s:
            return None, f"first frame arrived {gap:.2f} s from the first edge (the frames ran before the strobe)"
        how = "cameras started together" if lead <= period_ns // 2 else "strobe started on a running event stream"
        return (edge, frame), f"trusted ({how})"
