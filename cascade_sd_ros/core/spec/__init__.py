"""Speculative decoding engine (ROS-free): model adapters, acceptance rules, step functions, cascade decoder.

Public API (contract 3): `adapter` (ModelAdapter, HFAdapter, StageContext, Proposal), `steps`
(draft_step, refine_step, verify_step, verify_greedy, verify_sample, align_draft), `controller`
(DraftLengthController), `engine` (CascadeDecoder, DecodeResult, target_only_greedy), `prompt`,
`preprocess`, `testing.tiny_models`.
"""

from cascade_sd_ros.core.spec.adapter import (
    HFAdapter,
    ModelAdapter,
    Proposal,
    StageContext,
    check_same_vocab,
    load_adapter,
)
from cascade_sd_ros.core.spec.controller import DraftLengthController
from cascade_sd_ros.core.spec.engine import MODES, CascadeDecoder, DecodeResult, target_only_greedy
from cascade_sd_ros.core.spec.steps import (
    LevelRule,
    RefineResult,
    VerifyResult,
    align_draft,
    draft_step,
    refine_step,
    verify_greedy,
    verify_sample,
    verify_step,
)

__all__ = [
    "MODES",
    "CascadeDecoder",
    "DecodeResult",
    "DraftLengthController",
    "HFAdapter",
    "LevelRule",
    "ModelAdapter",
    "Proposal",
    "RefineResult",
    "StageContext",
    "VerifyResult",
    "align_draft",
    "check_same_vocab",
    "draft_step",
    "load_adapter",
    "refine_step",
    "target_only_greedy",
    "verify_greedy",
    "verify_sample",
    "verify_step",
]
