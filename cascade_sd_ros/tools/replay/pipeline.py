"""The replay's side of the shared node composition (tools/pipeline.py): its configuration for a
replay (sim time, mode, parameter overrides) and the bag-topic to node-input mapping by type."""

from __future__ import annotations

from typing import Any, Mapping

from cascade_sd_ros.core.names import PARAM_TARGETS  # what ``--param`` may set ("common": every stage node)
from cascade_sd_ros.tools.replay.source import CAMERA_INFO_TYPE, EVENTS_TYPE, IMAGE_TYPE, BagScan, ReplayInputError

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
            raise ReplayInputError(
                f"--param {spec!r}: expected NODE:NAME=VALUE with NODE one of {', '.join(PARAM_TARGETS)}"
            )
        out.setdefault(target, {})[name] = parse_value(value)
    from cascade_sd_ros.nodes.overrides import as_declared_floats, check_pipeline_params

    try:
        check_pipeline_params(out)  # a parameter no node would take is refused here, not ignored there
    except ValueError as exc:
        raise ReplayInputError(f"--param: {exc}") from None
    return as_declared_floats(out)


def replay_params(mode: str, params: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The overrides a replay runs with: the chosen mode on the nodes that take one, then ``--param``."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in params.items()}
    for node in MODE_NODES:
        merged.setdefault(node, {}).setdefault("mode", mode)
    return merged


def zoo_params(models: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """What the target was trained on (its folder's zoo.json), as the demo sets it
    (:func:`~cascade_sd_ros.tools.pipeline.trained_params`). Empty for tiny models and checkpoints
    without a zoo.json."""
    from pathlib import Path

    from cascade_sd_ros.core.stage_model import default_stage_source
    from cascade_sd_ros.tools.pipeline import trained_params, zoo_meta

    source = models.get("target") or default_stage_source("target")
    try:
        meta = zoo_meta(source)
    except ValueError as exc:
        raise ReplayInputError(f"target model {Path(source)}: {exc}") from exc
    return trained_params(meta)


def fast_params(fast: bool) -> dict[str, dict[str, Any]]:
    """Fast mode: reliable, deep sensor subscriptions (as the demo and bag players use), so a node
    whose callbacks lag behind the executor queues records instead of losing them."""
    from cascade_sd_ros.tools.pipeline import SENSOR_PARAMS

    return {"common": dict(SENSOR_PARAMS)} if fast else {}


#: How rounds are timed: at every ground-truth scene's end (as the demo does), by the nodes' own
#: round_period, or "auto" (scenes when the bag has ground truth).
ROUND_POLICIES = ("auto", "scenes", "period")


def scene_round_params(scan: BagScan, oracle: bool = False) -> dict[str, dict[str, Any]]:
    """Overrides that time one round at the end of every ground-truth scene, with the true clock
    offset, exactly as the demo runs the same scenes (tools/pipeline.scene_rounds)."""
    from types import SimpleNamespace

    from cascade_sd_ros.tools.pipeline import scene_rounds

    if not scan.scenes:
        raise ReplayInputError(
            f"{scan.path} has no ground truth: rounds cannot follow its scenes (use --rounds period)"
        )
    first = scan.scenes[0]
    # A video cut into chunks ends with a shorter one; every other scene must have one length.
    durations = {s.end_ns - s.start_ns for s in scan.scenes[:-1]} or {first.end_ns - first.start_ns}
    offsets = {s.event_offset_ns for s in scan.scenes}
    if len(durations) != 1 or len(offsets) != 1 or scan.scenes[-1].end_ns - scan.scenes[-1].start_ns > min(durations):
        raise ReplayInputError(f"{scan.path}: scenes of unequal length or clock offset; use --rounds period")
    # scene_rounds reads these four attributes of a synthetic StreamConfig.
    stream = SimpleNamespace(
        scene_duration_ns=first.end_ns - first.start_ns,
        start_ns=first.start_ns,
        n_scenes=len(scan.scenes),
        clocks=SimpleNamespace(event_offset_ns=first.event_offset_ns),
    )
    return scene_rounds(stream).params(oracle=oracle)


def round_params(scan: BagScan, policy: str, oracle: bool = False) -> dict[str, dict[str, Any]]:
    """The round-timing overrides of ``policy`` for this bag (empty: the nodes' own parameters).
    ``oracle``: the stages are told the ground truth's clock offset, pinned; otherwise they measure it."""
    if policy not in ROUND_POLICIES:
        raise ReplayInputError(f"--rounds {policy!r}: must be one of {', '.join(ROUND_POLICIES)}")
    if policy == "scenes":
        return scene_round_params(scan, oracle)
    if policy == "auto" and scan.scenes:
        try:
            return scene_round_params(scan, oracle)
        except ReplayInputError:
            return {}  # irregular scenes: the nodes' own period
    return {}


def merge_params(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later layers win, parameter by parameter."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for node, values in layer.items():
            out.setdefault(node, {}).update(values)
    return out


def make_pipeline(context: Any, settings: Any) -> Any:
    """The stage nodes on ``use_sim_time``: each in a process of its own (``settings.processes``,
    replay_processes) or in ``context`` on one executor (models loaded once, not spinning)."""
    from cascade_sd_ros.tools.pipeline import PipelineConfig, build_pipeline

    config = PipelineConfig(
        models=dict(settings.models),
        stages=tuple(settings.stages),
        device=settings.device,
        use_sim_time=True,
        executor="multi-threaded",
        params=replay_params(settings.mode, settings.params),
        collect_captions=False,
    )
    if getattr(settings, "processes", False) and settings.rate is not None:
        from cascade_sd_ros.tools.replay.processes import ProcessPipeline

        return ProcessPipeline(config, context)
    return build_pipeline(config, context)


def node_inputs(nodes: list[Any]) -> dict[str, set[str]]:
    """rosbag2 type name -> the resolved topic names the nodes subscribe with that type."""
    from cascade_sd_ros.tools.replay.recorder import rosbag_type_name

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
        bag_topics = [t for t in scan.topics.values() if t.msgtype == msgtype and t.played]
        targets = sorted(inputs.get(msgtype, set()))
        if len(bag_topics) != 1 or len(targets) != 1:
            continue
        topic = bag_topics[0]
        if topic.name in explicit or topic.published_as == targets[0]:
            continue
        remaps[topic.name] = targets[0]
    return remaps


def describe_models(sources: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per role, what the source is: model type and zoo metadata of a folder (its zoo.json, which
    says how and when it was trained), the seed of a tiny test model, weight file sizes."""
    import json
    from pathlib import Path

    from cascade_sd_ros.core.zoo.load import read_zoo_meta

    out: dict[str, dict[str, Any]] = {}
    for role, source in sources.items():
        entry: dict[str, Any] = {"source": source}
        folder = Path(source)
        if source.startswith("tiny:"):
            entry["kind"] = "tiny random model (tests)"
        elif folder.is_dir():
            config = folder / "config.json"
            if config.is_file():
                try:
                    entry["model_type"] = json.loads(config.read_text()).get("model_type")
                except json.JSONDecodeError:
                    entry["model_type"] = None
            try:
                entry["zoo"] = read_zoo_meta(folder)
            except ValueError as exc:
                entry["zoo"] = {"error": str(exc)}
            entry["weights_bytes"] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        out[role] = entry
    return out
