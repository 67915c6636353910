"""The replay's side of the shared node composition (tools/pipeline.py): its configuration for a
replay (sim time, mode, parameter overrides) and the bag-topic to node-input mapping by type."""
from __future__ import annotations

from typing import Any, Mapping

from cascade_sd_ros.tools.replay_source import CAMERA_INFO_TYPE, EVENTS_TYPE, IMAGE_TYPE, BagScan, ReplayInputError

#: Nodes whose parameters ``--param`` may set ("common": every stage node).
PARAM_TARGETS = ("common", "event_drafter", "frame_refiner", "video_verifier")
#: Stage nodes that declare the decoding-mode parameters.
MODE_NODES = ("frame_refiner", "video_verifier")
#: Input types mapped onto the nodes' inputs when a bag names its topics otherwise.
AUTO_REMAP_TYPES = (EVENTS_TYPE, IMAGE_TYPE, CAMERA_INFO_TYPE)


def parse_value(text: str) -> Any:
    """A parameter value from the command line: bool, int, float, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_params(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``["video_verifier:max_wait=1.0", "common:round_period=0.5"]`` -> nested overrides."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        target, sep1, rest = spec.partition(":")
        name, sep2, value = rest.partition("=")
        if not sep1 or not sep2 or not name or target not in PARAM_TARGETS:
            raise ReplayInputError(f"--param {spec!r}: expected NODE:NAME=VALUE with NODE one of {', '.join(PARAM_TARGETS)}")
        out.setdefault(target, {})[name] = parse_value(value)
    return out


def replay_params(mode: str, params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The overrides a replay runs with: the chosen mode on the nodes that take one, then ``--param``."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in params.items()}
    for node in MODE_NODES:
        merged.setdefault(node, {}).setdefault("mode", mode)
    return merged


def make_pipeline(context: Any, settings: Any) -> Any:
    """The three stage nodes on ``use_sim_time`` in ``context`` (models loaded once, not spinning)."""
    from cascade_sd_ros.tools.pipeline import PipelineConfig, build_pipeline

    config = PipelineConfig(models=dict(settings.models), device=settings.device, use_sim_time=True,
                            params=replay_params(settings.mode, settings.params), collect_captions=False)
    return build_pipeline(config, context)


def node_inputs(nodes: list[Any]) -> dict[str, set[str]]:
    """rosbag2 type name -> the resolved topic names the nodes subscribe with that type."""
    from cascade_sd_ros.tools.replay_recorder import rosbag_type_name

    out: dict[str, set[str]] = {}
    for node in nodes:
        for sub in node.subscriptions:
            out.setdefault(rosbag_type_name(sub.msg_type), set()).add(sub.topic_name)
    return out


def auto_remaps(scan: BagScan, inputs: Mapping[str, set[str]], explicit: Mapping[str, str]) -> dict[str, str]:
    """Bag topic -> node input topic, for input types where both sides have exactly one topic.

    A camera driver's ``/camera/image_raw`` and the nodes' ``image`` are the same stream under two
    names; ``--remap`` always wins, and nothing is guessed where the bag or the nodes have several.
    """
    remaps: dict[str, str] = {}
    for msgtype in AUTO_REMAP_TYPES:
        bag_topics = [t for t in scan.topics.values() if t.msgtype == msgtype and t.publishable]
        targets = sorted(inputs.get(msgtype, set()))
        if len(bag_topics) != 1 or len(targets) != 1:
            continue
        topic = bag_topics[0]
        if topic.name in explicit or topic.published_as == targets[0]:
            continue
        remaps[topic.name] = targets[0]
    return remaps
