"""Time each lifecycle transition of the three stage nodes on the shipped zoo (autostart:=false), in
ms: configure (load + warm-up + build), activate, deactivate, activate again, deactivate, cleanup.

    test/helpers/dds_domain.py run -- python bench/lifecycle_timing.py
"""

import json
import time

import rclpy
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from cascade_sd_ros.nodes.event_drafter import EventDrafter
from cascade_sd_ros.nodes.frame_refiner import FrameRefiner
from cascade_sd_ros.nodes.video_verifier import VideoVerifier

rclpy.init()
out = {}
for cls in (EventDrafter, FrameRefiner, VideoVerifier):
    node = cls(parameter_overrides=[Parameter("autostart", value=False)])
    row = {}
    for step in ("configure", "activate", "deactivate", "activate", "deactivate", "cleanup"):
        t0 = time.perf_counter()
        ok = getattr(node, f"trigger_{step}")()
        row.setdefault(step, []).append(round((time.perf_counter() - t0) * 1e3, 1))
        if ok != TransitionCallbackReturn.SUCCESS:
            raise SystemExit(f"{node.get_name()}: {step} failed")
    out[node.get_name()] = row
    node.destroy_node()
rclpy.shutdown()
print(json.dumps(out))
