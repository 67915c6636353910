"""One ROS-free stage per role, and the one rule that opens rounds (DESIGN.md "Rounds").

* :mod:`.schedule` — :class:`RoundSchedule` (period, phase, prompt rounds) and :class:`RoundOpener`:
  when rounds open, for the three stages and the tools; :class:`ScheduleCheck`: whether the rounds
  another stage names agree with it.
* :mod:`.base` — :class:`Stage`: a stage's rounds (its :class:`~cascade_sd_ros.core.rounds.RoundBook`),
  question, counters and one worker thread, all under one lock; :class:`StageInput`.
* :mod:`.upstream` — :class:`DrafterStage`, :class:`RefinerStage`.
* :mod:`.verifier` — :class:`VerifierStage`, :class:`CaptionUpdate`, :class:`DraftWait`.
* What the verifier measures to choose its drafts: :mod:`.draft_value` (whose drafts pay, and what
  they saved: the one record of verification outcomes), :mod:`.head_source` (the draft head, and
  which source's draft is worth most), :mod:`.gamma` (draft lengths), :mod:`.ema` (their averages).
* :mod:`.activity` (rounds opened by an event-rate burst), :mod:`.controlled` (benchmarks only).

A node (``nodes/``) converts messages and feeds its Stage; the Stage hands what to publish to the
sink given at construction. Without ROS, plain callbacks wire the three Stages the same way
(``test/test_stages.py``).
"""

from cascade_sd_ros.core.stages.base import Resolver, Stage, StageInput
from cascade_sd_ros.core.stages.schedule import RoundOpener, RoundSchedule, ScheduleCheck, ScheduleDisagreement
from cascade_sd_ros.core.stages.upstream import DrafterStage, RefinerStage, UpstreamStage
from cascade_sd_ros.core.stages.verifier import CaptionUpdate, DraftWait, VerifierStage

__all__ = [
    "CaptionUpdate",
    "DraftWait",
    "DrafterStage",
    "RefinerStage",
    "Resolver",
    "RoundOpener",
    "RoundSchedule",
    "ScheduleCheck",
    "ScheduleDisagreement",
    "Stage",
    "StageInput",
    "UpstreamStage",
    "VerifierStage",
]
