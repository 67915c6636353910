"""Speculative decoding engine (ROS-free): model adapters, step functions and the cascade decoder."""

from cascade_sd_ros.core.spec.adapter import (
    HFAdapter,
    ModelAdapter,
    Proposal,
    StageContext,
    check_same_vocab,
    load_adapter,
)

__all__ = ["HFAdapter", "ModelAdapter", "Proposal", "StageContext", "check_same_vocab", "load_adapter"]
