"""Which frames a round uses: the refiner's one frame nearest ``T``, the verifier's clip before ``T``.

All times here are on the frame clock: callers map the round time ``T`` (event clock) with
:class:`~cascade_sd_ros.core.align.StreamOffsets` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from cascade_sd_ros.core.align.buffer import TimeBuffer

T = TypeVar("T")


@dataclass(frozen=True)
class Clip(Generic[T]):
    """``num_frames`` frames spanning ``[t_end - duration, t_end]``, uniformly sampled by nearest stamp.

    With dropped frames a neighbour is used twice (Video-LLaVA needs exactly ``num_frames``);
    ``distinct`` says how many different frames made it, ``missing`` how many targets had no frame
    of their own.
    """

    stamps_ns: tuple[int, ...]  # per clip slot, frame clock
    items: tuple[T, ...]
    t_end_ns: int
    distinct: int

    @property
    def missing(self) -> int:
        return len(self.stamps_ns) - self.distinct

    @property
    def span_ns(self) -> int:
        return self.stamps_ns[-1] - self.stamps_ns[0]

    @property
    def newest_skew_ns(self) -> int:
        """Newest clip frame minus the clip end (negative: the clip ends before ``T``)."""
        return self.stamps_ns[-1] - self.t_end_ns


def clip_targets(t_end_ns: int, duration_ns: int, num_frames: int) -> np.ndarray:
    """The ideal sample times, oldest first: ``num_frames`` points evenly over the closed window."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames == 1:
        return np.array([t_end_ns], dtype=np.int64)
    return np.round(np.linspace(t_end_ns - duration_ns, t_end_ns, num_frames)).astype(np.int64)


def select_clip(
    frames: TimeBuffer[T], t_end_ns: int, duration_ns: int, num_frames: int, slop_ns: int
) -> Clip[T] | None:
    """The clip for a round ending at ``t_end_ns``; None when no frame lies within the window ± slop."""
    if duration_ns < 0 or slop_ns < 0:
        raise ValueError(f"duration_ns and slop_ns must be >= 0, got {duration_ns}, {slop_ns}")
    candidates = frames.window(t_end_ns - duration_ns - slop_ns, t_end_ns + slop_ns)
    if not candidates:
        return None
    stamps = np.array([s for s, _ in candidates], dtype=np.int64)
    targets = clip_targets(t_end_ns, duration_ns, num_frames)
    # nearest candidate per target, the earlier on a tie (vectorised over the few candidates)
    picks = np.argmin(np.abs(stamps[None, :] - targets[:, None]), axis=1)
    return Clip(
        stamps_ns=tuple(int(stamps[i]) for i in picks),
        items=tuple(candidates[i][1] for i in picks),
        t_end_ns=int(t_end_ns),
        distinct=int(len(set(picks.tolist()))),
    )


def nearest_frame(frames: TimeBuffer[T], t_ns: int, slop_ns: int) -> tuple[int, T] | None:
    """The refiner's frame: closest to ``t_ns`` within ``slop_ns``."""
    return frames.nearest(t_ns, slop_ns)
