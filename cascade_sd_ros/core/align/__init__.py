"""Time alignment across the event and RGB streams (ROS-free).

* :class:`TimeBuffer` — bounded, time-indexed buffer: out-of-order insert, window and nearest queries.
* :class:`ClockJumpDetector` — notices a stream's time going backwards (bag loop, clock reset).
* :class:`StaleRoundFilter` — drops other stages' round messages still in flight from before a jump.
* :class:`StreamOffsets` — configured per-stream offsets onto the reference (event) clock.
* :class:`OffsetEstimator` — online estimate of the event-minus-frame clock offset from event rate
  against frame-difference energy (global: blind to steady motion);
* :class:`RegionOffsetEstimator` — the offset from per-cell net event counts against per-cell log
  intensity (works in steady motion); :class:`TriggerSync` — offset and drift from strobe edges;
  :class:`StrobeStart` — whether the strobe's alias may be counted from the streams' starts;
  :class:`OffsetTracker` — which offset is applied (pin, trigger, confident estimate, hysteresis);
  :class:`ClockOffsetSource` — all three as the drafter runs them; :class:`OffsetFollower` — the
  refiner's and verifier's side: the drafter's confident offset; :class:`RoundOffsets` — each round
  keeps the offset it opened with.
* :class:`FrameIngest` — the RGB stream's ingest: size check, jump reset, buffering, due rounds.
* :func:`select_clip` / :func:`nearest_frame` — which frames a round uses.
"""

from cascade_sd_ros.core.align.buffer import TimeBuffer
from cascade_sd_ros.core.align.clip import Clip, nearest_frame, select_clip
from cascade_sd_ros.core.align.clock import ClockJumpDetector, StaleRoundFilter
from cascade_sd_ros.core.align.ingest import FrameIngest, FrameShape, Ingested
from cascade_sd_ros.core.align.offset_source import ClockOffsetSource
from cascade_sd_ros.core.align.offset_tracker import AppliedOffset, OffsetFollower, OffsetTracker, RoundOffsets
from cascade_sd_ros.core.align.offsets import OffsetEstimate, OffsetEstimator, StreamOffsets
from cascade_sd_ros.core.align.region_offsets import RegionEstimate, RegionOffsetEstimator
from cascade_sd_ros.core.align.strobe_start import StrobeStart
from cascade_sd_ros.core.align.trigger_sync import TriggerFit, TriggerSync

__all__ = [
    "AppliedOffset",
    "ClockOffsetSource",
    "Clip",
    "ClockJumpDetector",
    "FrameIngest",
    "FrameShape",
    "Ingested",
    "OffsetEstimate",
    "OffsetEstimator",
    "OffsetFollower",
    "OffsetTracker",
    "RegionEstimate",
    "RegionOffsetEstimator",
    "RoundOffsets",
    "StaleRoundFilter",
    "StreamOffsets",
    "StrobeStart",
    "TimeBuffer",
    "TriggerFit",
    "TriggerSync",
    "nearest_frame",
    "select_clip",
]
