"""The RGB stream's ingest state machine (ROS-free), shared by the refiner and the verifier.

Per frame: size check (a frame of another size is malformed unless the camera really changed),
backward clock jump (history reset), buffering, and which period rounds the newest frame lets open.
Not thread-safe: the caller holds its own lock around :meth:`FrameIngest.add`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade_sd_ros.core.align.buffer import TimeBuffer
from cascade_sd_ros.core.align.clock import ClockJumpDetector
from cascade_sd_ros.core.align.offsets import StreamOffsets
from cascade_sd_ros.core.stages.schedule import RoundOpener, RoundSchedule


class FrameShape:
    """The stream's image size: a frame of another size is malformed, unless the camera really
    changed (``adopt_after`` such frames in a row), which restarts the stream at the new size."""

    def __init__(self, adopt_after: int = 10) -> None:
        self.shape: tuple[int, ...] | None = None
        self._other: tuple[int, ...] | None = None
        self._count = 0
        self.adopt_after = adopt_after

    def check(self, shape: tuple[int, ...]) -> str:
        """'ok', 'changed' (a new size adopted: drop older frames) or 'bad' (skip this frame)."""
        if self.shape is None or shape == self.shape:
            self.shape, self._other, self._count = shape, None, 0
            return "ok"
        self._count = self._count + 1 if shape == self._other else 1
        self._other = shape
        if self._count >= self.adopt_after:
            self.shape, self._other, self._count = shape, None, 0
            return "changed"
        return "bad"

    def reset(self) -> None:
        self.shape, self._other, self._count = None, None, 0


@dataclass(frozen=True)
class Ingested:
    """What one frame did: ``malformed`` (why it was skipped, else empty), whether the stream's size
    changed or its clock jumped backwards (older frames and round state were dropped), and the round
    times (reference clock) the caller should now open."""

    malformed: str = ""
    size_changed: bool = False
    time_jumped: bool = False
    rounds_ns: tuple[int, ...] = ()


class FrameIngest:
    """Buffers a frame stream and opens the schedule's rounds once frames pass them.

    The one rule of :class:`~cascade_sd_ros.core.stages.schedule.RoundOpener`: a round at ``T`` opens
    when a frame newer than ``T + slop`` arrives (reference clock), unless its input window
    ``[T - lead_ns, T]`` would start before the first frame did (less ``slop``).
    """

    def __init__(
        self,
        *,
        offsets: StreamOffsets,
        buffer_size: int,
        jump_tolerance_ns: int,
        schedule: RoundSchedule,
        slop_ns: int,
        lead_ns: int = 0,
        stream: str = "image",
    ) -> None:
        if slop_ns < 0 or lead_ns < 0:
            raise ValueError(f"slop_ns and lead_ns must be >= 0, got {slop_ns}, {lead_ns}")
        offsets.offset(stream)  # an unknown stream fails here, not on the first frame
        self.offsets = offsets
        self.stream = stream
        self.frames: TimeBuffer[np.ndarray] = TimeBuffer(buffer_size)
        self.shape = FrameShape()
        self.jump = ClockJumpDetector(jump_tolerance_ns)
        self.slop_ns = slop_ns
        self.rounds = RoundOpener(schedule, settle_ns=slop_ns, lead_ns=lead_ns, margin_ns=slop_ns)

    def add(self, t_ns: int, rgb: np.ndarray) -> Ingested:
        """Take one frame stamped ``t_ns`` (stream clock)."""
        verdict = self.shape.check(rgb.shape)
        if verdict == "bad":
            assert self.shape.shape is not None
            return Ingested(
                malformed=f"image size {rgb.shape[1]}x{rgb.shape[0]} differs from the stream's "
                f"{self.shape.shape[1]}x{self.shape.shape[0]}"
            )
        if verdict == "changed":
            self.frames.clear()
        jumped = self.jump.observe(t_ns)
        if jumped:
            self.reset()
        self.frames.insert(t_ns, rgb)
        ref = self.offsets.to_reference(self.stream, t_ns)
        return Ingested(
            size_changed=verdict == "changed", time_jumped=jumped, rounds_ns=tuple(self.rounds.advance(ref, ref))
        )

    def reset(self) -> None:
        """Forget the frames and the round state (the size stays: a reset is about time, not geometry)."""
        self.frames.clear()
        self.rounds.reset()
