"""One pass of a bag through a pipeline: player, recorder and the pipeline on one executor.

:func:`play_pass` is the ROS half of the replay: it builds the pipeline, maps the bag's topics onto
the nodes' inputs, waits for discovery, plays the records (replay_player) while the recorder writes
every output into an MCAP bag (replay_recorder), checks what the nodes received, stops everything
and, given reference runs, writes their captions into the same bag. ``replay.run_replay`` runs one
pass for the cascade and, for the speed reference, one for the verifier alone.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

MATCH_TIMEOUT_S = 10.0  # [s] for publishers and subscriptions to discover each other
MAX_TAKE_WINDOW = 64  # [records] fast mode never runs further ahead of a KEEP_ALL subscription


class PipelineHandle(Protocol):
    """What the replay needs from a running cascade composition (see replay_pipeline)."""

    nodes: list[Any]  # rclpy nodes whose publishers are the outputs to record
    executor: Any  # rclpy executor the nodes are added to (the replay adds its own two)
    lookahead_ns: int  # fast mode: bag time allowed past an open round (>= the stages' sim-time waits)
    info: dict[str, Any]  # mode, models, versions, config: recorded in the report

    def close(self) -> None: ...


#: (rclpy context, settings) -> a pipeline whose nodes are on ``use_sim_time``.
PipelineFactory = Callable[[Any, "ReplaySettings"], PipelineHandle]  # noqa: F821 - defined in tools.replay, which imports this module


class ReferenceRun(Protocol):
    """A reference on the replay's rounds: the verifier-alone pass's captions (replay.RecordedAlone)
    or the target's bare decode of each round's clip (replay_baseline.BareTarget)."""

    missing: list[int]  # final rounds it had no inputs for

    def on_record(self, msgtype: str, raw: bytes) -> None: ...  # called for every record the player published

    def on_final(self, round_id: int, t_ns: int) -> None: ...  # called as each final caption arrives

    def run(self) -> list[tuple[int, bytes]]: ...  # after playback: (T [ns], serialised VerifiedCaption)


#: pipeline -> a reference run on its rounds (None: not available with this pipeline).
ReferenceFactory = Callable[[PipelineHandle], "ReferenceRun | None"]


@dataclass
class PassOutput:
    run_info: dict[str, Any]  # what the report says about the run
    finals: dict[int, tuple[int, bytes]]  # round id -> (T [ns], serialised final VerifiedCaption)
    scan: Any  # the BagScan as this pass played it (topics mapped and skipped)


def _wait_matched(pairs: list[tuple[str, Callable[[], int]]], timeout_s: float) -> list[str]:
    """Wait until every (topic, count fn) has a peer; returns the topics that never matched."""
    deadline = time.monotonic() + timeout_s
    pending = list(pairs)
    while pending and time.monotonic() < deadline:
        pending = [(t, fn) for t, fn in pending if fn() < 1]
        if pending:
            time.sleep(0.02)
    return [t for t, _ in pending]


def _take_windows(nodes: list[Any], topics: dict[str, str]) -> dict[str, int]:
    """Fast mode may run ahead of the pipeline's takes by half the shallowest queue of a topic."""
    from rclpy.qos import HistoryPolicy

    window = {topic: MAX_TAKE_WINDOW for topic in topics}  # no node reads it: not waited for
    for sub in (sub for node in nodes for sub in node.subscriptions):
        qos = sub.qos_profile
        if qos is None:
            continue  # a node in another process whose profile the graph did not give
        depth = qos.depth if qos.history == HistoryPolicy.KEEP_LAST else 2 * MAX_TAKE_WINDOW
        if sub.topic_name in window:
            window[sub.topic_name] = min(window[sub.topic_name], max(1, depth // 2))
    return window


def _discover(nodes: list[Any], outputs: list[str], inputs: dict[str, str]) -> tuple[list[str], list[str]]:
    """Wait for discovery before the first record (an output published before its recorder
    matched, or a record before its subscriber did, would be lost). Returns the topics that never
    matched and the nodes' inputs the bag does not feed."""
    subs = [sub for node in nodes for sub in node.subscriptions]
    pubs = {p.topic_name: p for node in nodes for p in node.publishers}
    pairs = [(f"output {name}", pubs[name].get_subscription_count) for name in outputs]
    pairs += [(f"input {sub.topic_name}", sub.get_publisher_count) for sub in subs if sub.topic_name in inputs]
    # a node on sim time that misses the first /clock messages runs its timers late, if at all
    pairs += [("input /clock", sub.get_publisher_count) for sub in subs if sub.topic_name == "/clock"]
    unmatched = _wait_matched(pairs, MATCH_TIMEOUT_S)
    internal = set(pubs) | {"/clock", "/parameter_events"}
    return unmatched, sorted({sub.topic_name for sub in subs} - set(inputs) - internal)


def _input_counts(nodes: list[Any]) -> dict[str, dict[str, dict[str, int]]]:
    """Per node, what each of its inputs counted (received / malformed / dropped from its buffer):
    set against the records published, it shows whether anything was lost on the way."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for node in nodes:
        subscribed = {sub.topic_name.rsplit("/", 1)[-1] for sub in node.subscriptions}
        remote = getattr(node, "input_counts", None)  # a node in another process: its diagnostics say
        if remote is not None:
            for name, counts in remote().items():
                if name not in STREAM_TOPICS or STREAM_TOPICS[name] in subscribed:
                    out.setdefault(node.get_name(), {})[name] = counts
            continue
        for value in vars(node).values():
            if all(hasattr(value, a) for a in ("name", "received", "malformed", "dropped")):
                if value.name in STREAM_TOPICS and STREAM_TOPICS[value.name] not in subscribed:
                    continue  # counted but not subscribed (the drafter's images with estimate_offset:=false)
                out.setdefault(node.get_name(), {})[str(value.name)] = {
                    "received": int(value.received),
                    "malformed": int(value.malformed),
                    "dropped": int(value.dropped),
                }
    return out


#: Node input counters (their InputStats names) that take every record of one bag stream type.
STREAM_INPUTS = {"events": "event_camera_msgs/msg/EventPacket", "images": "sensor_msgs/msg/Image"}
#: The topic (last name segment) each of those counters belongs to.
STREAM_TOPICS = {"events": "events", "images": "image"}


def _input_losses(
    received: dict[str, dict[str, dict[str, int]]], published: dict[str, int], topics: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Per node and stream input: records published minus records the node received (0: none lost)."""
    by_type: dict[str, int] = {}
    for topic, count in published.items():
        by_type[topics[topic]] = by_type.get(topics[topic], 0) + count
    return {
        node: {
            name: by_type.get(STREAM_INPUTS[name], 0) - counts["received"]
            for name, counts in inputs.items()
            if name in STREAM_INPUTS
        }
        for node, inputs in received.items()
    }


def _settled_input_counts(
    nodes: list[Any], published: dict[str, int], topics: dict[str, str], quiet_s: float = 2.0, timeout_s: float = 30.0
) -> dict[str, dict[str, dict[str, int]]]:
    """Input counts once every record arrived or the counts stopped moving for ``quiet_s``: a node
    still working through a deep queue is late, not lossy."""
    deadline = time.monotonic() + timeout_s
    counts = _input_counts(nodes)
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        losses = _input_losses(counts, published, topics)
        if all(n <= 0 for per_node in losses.values() for n in per_node.values()):
            break
        if time.monotonic() - last_change >= quiet_s:
            break
        time.sleep(0.05)
        now = _input_counts(nodes)
        if now != counts:
            counts, last_change = now, time.monotonic()
    return counts


def _stop(pipeline: PipelineHandle, own_nodes: list[Any], spin_thread: threading.Thread | None) -> None:
    """Take the replay's nodes off the executor, stop it and the pipeline (workers, nodes)."""
    for node in own_nodes:
        pipeline.executor.remove_node(node)
    pipeline.executor.shutdown(timeout_sec=5.0)
    if spin_thread is not None:
        spin_thread.join(timeout=5.0)
    pipeline.close()


def play_pass(
    scan: Any,
    settings: Any,
    make_pipeline: PipelineFactory,
    out_bag: Path,
    references: Mapping[str, ReferenceFactory] | None = None,
) -> PassOutput:
    """Play ``scan``'s bag through ``make_pipeline(context, settings)``, recording into ``out_bag``.

    ``scan`` is not changed (each pass maps topics afresh on a copy, returned in the output);
    ``settings`` is a ReplaySettings. ``references`` maps an output topic to a reference run on
    this pass's rounds; after the pipeline stops, each one's captions are written on its topic and
    ``run_info["references"][topic]`` says how many rounds it covered and which it missed.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from cascade_sd_ros.core import bagio
    from cascade_sd_ros.core.names import stamp_ns
    from cascade_sd_ros.tools.replay.pipeline import auto_remaps, describe_models, node_inputs
    from cascade_sd_ros.tools.replay.player import VERIFIED_CAPTION_TYPE, Player, PlayerNode, TakeCounter
    from cascade_sd_ros.tools.replay.progress import ProgressBar
    from cascade_sd_ros.tools.replay.recorder import BagRecorder, RecorderNode, pipeline_outputs
    from cascade_sd_ros.tools.replay.schedule import Scheduler
    from cascade_sd_ros.tools.replay.source import GROUND_TRUTH_TYPE, Record, iter_records

    scan = copy.deepcopy(scan)
    store = bagio.typestore()
    context = rclpy.context.Context()
    rclpy.init(context=context)
    recorder: BagRecorder | None = None
    pipeline: PipelineHandle | None = None
    own_nodes: list[Any] = []
    spin_thread: threading.Thread | None = None
    refs: dict[str, ReferenceRun] = {}
    finals: dict[int, tuple[int, bytes]] = {}
    try:
        recorder = BagRecorder(out_bag)
        pipeline = make_pipeline(context, settings)
        for topic, make_ref in (references or {}).items():
            ref = make_ref(pipeline)
            if ref is not None:
                refs[topic] = ref
        # A bag recorded on a robot may hold the cascade's own outputs: playing them would talk
        # over the live nodes; the replay records fresh ones instead.
        produced = {p.topic_name for node in pipeline.nodes for p in node.publishers}
        for info in scan.topics.values():
            if info.played and info.published_as in produced:
                info.skip_reason = "an output of the cascade: the replay records its own"
        # Bag topics named otherwise than the nodes' inputs (a driver's /camera/image_raw vs the
        # nodes' image) are mapped by type where that is unambiguous; --remap always wins.
        guessed = auto_remaps(scan, node_inputs(pipeline.nodes), settings.remaps)
        for name, target in guessed.items():
            scan.topics[name].published_as = target
        topics = {t.published_as: t.msgtype for t in scan.topics.values() if t.played}
        player_node = PlayerNode(topics, context=context)
        own_nodes.append(player_node)
        scheduler = Scheduler(
            start_bag_ns=scan.start_ns, rate=settings.rate, lookahead_ns=pipeline.lookahead_ns, stall_s=settings.stall_s
        )

        def on_record(rec: Record, clock_ns: int) -> None:
            # Ground truth is part of the evaluation: keep it in the output bag beside the captions.
            if rec.msgtype == GROUND_TRUTH_TYPE:
                recorder.write(rec.topic, rec.msgtype, rec.t_ns, rec.raw)
            for ref in refs.values():
                ref.on_record(rec.msgtype, rec.raw)

        window = _take_windows(pipeline.nodes, topics)
        takes = TakeCounter(pipeline.nodes, topics) if settings.rate is None else None
        player = Player(
            player_node,
            scheduler,
            scan.end_ns,
            takes=takes,
            take_window=window,
            drain_timeout_s=settings.drain_timeout_s,
            drain_quiet_s=settings.drain_quiet_s,
            progress=ProgressBar(enabled=settings.progress),
            on_record=on_record,
        )

        def on_output(topic: str, msgtype: str, raw: bytes) -> None:
            if msgtype == VERIFIED_CAPTION_TYPE:
                msg = store.deserialize_cdr(raw, msgtype)
                if msg.final:
                    stamp = msg.header.stamp
                    t_ns = stamp_ns(stamp.sec, stamp.nanosec)
                    finals[int(msg.round_id)] = (t_ns, bytes(raw))
                    for ref in refs.values():
                        ref.on_final(int(msg.round_id), t_ns)
            player.observe(topic, msgtype, raw)

        outputs = pipeline_outputs(pipeline.nodes)
        recorder_node = RecorderNode(recorder, outputs, clock_ns=player.clock_ns, on_message=on_output, context=context)
        own_nodes.append(recorder_node)
        for node in own_nodes:
            pipeline.executor.add_node(node)

        def spin() -> None:
            try:
                pipeline.executor.spin()
            except ExternalShutdownException:
                pass

        spin_thread = threading.Thread(target=spin, name="replay-executor", daemon=True)
        spin_thread.start()

        unmatched, unfed = _discover(pipeline.nodes, [o.name for o in outputs], topics)
        # nodes in other processes are matched in the graph a moment before their readers take data
        time.sleep(getattr(pipeline, "match_settle_s", 0.0))

        stats = player.play(iter_records(scan))
        received = _settled_input_counts(pipeline.nodes, stats.published, topics)
        run_info = {
            "mode": settings.mode,
            "pacing": "fast" if settings.rate is None else f"rate {settings.rate:g}",
            "remaps": settings.remaps,
            "auto_remaps": guessed,
            "rounds": settings.rounds,
            "params": settings.params,
            "wall_s": stats.wall_s,
            "held_s": stats.held_s,
            "drain_s": stats.drain_s,
            "drain_timed_out": stats.drain_timed_out,
            "take_timeouts": stats.take_timeouts,
            "take_window": window,
            "stalled_rounds": stats.stalled_rounds,
            "unfinished_rounds": stats.unfinished_rounds,
            "superseded_rounds": sorted(scheduler.tracker.superseded),
            "rounds_opened": scheduler.tracker.opened,
            "published": stats.published,
            "publish_failures": stats.publish_failures,
            "node_inputs_received": received,
            "input_losses": _input_losses(received, stats.published, topics),
            "unmatched_topics": unmatched,
            "node_inputs_not_in_bag": unfed,
            "recorded_topics": [o.name for o in outputs],
            "recording_errors": recorder_node.errors,
            **pipeline.info,
        }
        run_info["model_details"] = describe_models(run_info.get("models") or {})
        # Stop the cascade before the references: the bare target's model is the verifier's, now idle.
        _stop(pipeline, own_nodes, spin_thread)
        spin_thread, pipeline = None, None
        run_info["references"] = {}
        for topic, ref in refs.items():
            written = ref.run()
            for t_ns, raw in written:
                recorder.write(topic, VERIFIED_CAPTION_TYPE, t_ns, raw)
            run_info["references"][topic] = {"rounds": len(written), "rounds_missing": list(ref.missing)}
    finally:
        if pipeline is not None:
            _stop(pipeline, own_nodes, spin_thread)
        for node in own_nodes:
            node.destroy_node()
        if recorder is not None:
            recorder.close()
        if context.ok():
            rclpy.shutdown(context=context)

    return PassOutput(run_info, finals, scan)
