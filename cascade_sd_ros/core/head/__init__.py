"""Feature-level drafting (ROS-free): an EAGLE-style draft head in the verifier, fed the target's own
hidden states and the event stage's features through a learned alignment MLP.

Public API: `model` (HeadConfig, FusedDraftHead, AlignmentMLP), `adapter` (HeadAdapter, HEAD_MODES),
`features` (event_tokens, target_video_tokens, cosine_per_token), `io` (save_head, load_head,
encoder_fingerprint), `train` (train_head: `cascade-sd train --stage head`).
"""

from cascade_sd_ros.core.head.adapter import HEAD_MODES, HeadAdapter, HeadMode
from cascade_sd_ros.core.head.io import encoder_fingerprint, load_head, save_head
from cascade_sd_ros.core.head.model import AlignmentMLP, FusedDraftHead, HeadConfig

__all__ = [
    "HEAD_MODES",
    "AlignmentMLP",
    "FusedDraftHead",
    "HeadAdapter",
    "HeadConfig",
    "HeadMode",
    "encoder_fingerprint",
    "load_head",
    "save_head",
]
