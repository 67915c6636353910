"""``cascade-sd replay BAG``: replay a rosbag2 through the cascade, record its outputs, report.

Reads a rosbag2 (sqlite3 or MCAP), publishes its records by their recorded time with a ``/clock``
(the nodes run on ``use_sim_time``) or, with ``--fast``, as fast as the cascade accepts them, records
every output of the pipeline's nodes into an MCAP bag in ``--out``, runs the verifier alone on the
same rounds as the speed-up baseline, and writes report.json, report.md and PNG plots there.

Pieces: replay_source (scan + records), replay_schedule (when), replay_player (publish + /clock),
replay_recorder (MCAP), replay_baseline (verifier alone), replay_report (figures), and
replay_pipeline (the adapter onto the shared node composition, tools/pipeline.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from cascade_sd_ros.tools.replay_source import ReplayInputError, parse_remaps

OUTPUT_BAG = "output"  # folder name of the recorded MCAP bag inside --out
MATCH_TIMEOUT_S = 10.0  # [s] for publishers and subscriptions to discover each other
MAX_ECHO_WINDOW = 64  # [records] fast mode never runs further ahead of the executor on one topic


class PipelineHandle(Protocol):
    """What the replay needs from a running cascade composition (see replay_pipeline)."""

    nodes: list[Any]  # rclpy nodes whose publishers are the outputs to record
    executor: Any  # rclpy executor the nodes are added to (the replay adds its own two)
    lookahead_ns: int  # fast mode: bag time allowed past an open round (>= the stages' sim-time waits)
    info: dict[str, Any]  # mode, models, versions, config: recorded in the report

    def close(self) -> None: ...


#: (rclpy context, settings) -> a pipeline whose nodes are on ``use_sim_time``.
PipelineFactory = Callable[[Any, "ReplaySettings"], PipelineHandle]


class Baseline(Protocol):
    """The verifier alone on the replay's rounds (see replay_baseline)."""

    missing: list[int]  # final rounds it had no inputs for

    def on_final(self, round_id: int, t_ns: int) -> None: ...  # called as each final caption arrives

    def run(self) -> list[tuple[int, bytes]]: ...  # after playback: (T [ns], serialised VerifiedCaption)


#: pipeline -> its verifier-alone baseline.
BaselineFactory = Callable[[PipelineHandle], "Baseline | None"]


@dataclass(frozen=True)
class ReplaySettings:
    bag: Path
    out_dir: Path
    rate: float | None  # None: fast mode
    remaps: dict[str, str] = field(default_factory=dict)
    mode: str = "lossless-greedy"
    models: dict[str, str] = field(default_factory=dict)  # role -> model source (empty: the pipeline's default)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # node (or "common") -> parameter overrides
    rounds: str = "auto"  # replay_pipeline.ROUND_POLICIES
    device: str = "cpu"
    baseline: bool = True
    progress: bool = True
    stall_s: float = 60.0
    drain_timeout_s: float = 120.0
    drain_quiet_s: float = 15.0

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ReplayInputError(f"rate must be > 0, got {self.rate}")
        for name in ("stall_s", "drain_timeout_s", "drain_quiet_s"):
            if not getattr(self, name) > 0:
                raise ReplayInputError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class ReplayResult:
    report: dict[str, Any]
    out_dir: Path
    output_bag: Path


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {"python": sys.version.split()[0]}
    for dist in ("cascade_sd_ros", "torch", "transformers", "rosbags", "rclpy", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "cascade_sd_ros" not in out:
        import cascade_sd_ros

        out["cascade_sd_ros"] = cascade_sd_ros.__version__
    return out


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ReplayInputError(f"--out {out_dir} exists and is not an empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)


def _wait_matched(pairs: list[tuple[str, Callable[[], int]]], timeout_s: float) -> list[str]:
    """Wait until every (topic, count fn) has a peer; returns the topics that never matched."""
    deadline = time.monotonic() + timeout_s
    pending = list(pairs)
    while pending and time.monotonic() < deadline:
        pending = [(t, fn) for t, fn in pending if fn() < 1]
        if pending:
            time.sleep(0.02)
    return [t for t, _ in pending]


def _echo_windows(nodes: list[Any], topics: dict[str, str]) -> dict[str, int]:
    """Fast mode may run ahead of the executor by half the shallowest queue that takes a topic."""
    from rclpy.qos import HistoryPolicy

    window = {topic: MAX_ECHO_WINDOW for topic in topics}  # no node reads it: no limit of its own
    for sub in (sub for node in nodes for sub in node.subscriptions):
        qos = sub.qos_profile
        depth = qos.depth if qos.history == HistoryPolicy.KEEP_LAST else 2 * MAX_ECHO_WINDOW
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
    unmatched = _wait_matched(pairs, MATCH_TIMEOUT_S)
    internal = set(pubs) | {"/clock", "/parameter_events"}
    return unmatched, sorted({sub.topic_name for sub in subs} - set(inputs) - internal)


def _input_counts(nodes: list[Any]) -> dict[str, dict[str, dict[str, int]]]:
    """Per node, what each of its inputs counted (received / malformed / dropped from its buffer):
    set against the records published, it shows whether anything was lost on the way."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for node in nodes:
        for value in vars(node).values():
            if all(hasattr(value, a) for a in ("name", "received", "malformed", "dropped")):
                out.setdefault(node.get_name(), {})[str(value.name)] = {
                    "received": int(value.received), "malformed": int(value.malformed), "dropped": int(value.dropped)}
    return out


#: Node input counters (their InputStats names) that take every record of one bag stream type.
STREAM_INPUTS = {"events": "event_camera_msgs/msg/EventPacket", "images": "sensor_msgs/msg/Image"}


def _input_losses(received: dict[str, dict[str, dict[str, int]]], published: dict[str, int],
                  topics: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per node and stream input: records published minus records the node received (0: none lost)."""
    by_type: dict[str, int] = {}
    for topic, count in published.items():
        by_type[topics[topic]] = by_type.get(topics[topic], 0) + count
    return {node: {name: by_type.get(STREAM_INPUTS[name], 0) - counts["received"]
                   for name, counts in inputs.items() if name in STREAM_INPUTS}
            for node, inputs in received.items()}


def _settled_input_counts(nodes: list[Any], published: dict[str, int], topics: dict[str, str],
                          quiet_s: float = 2.0, timeout_s: float = 30.0) -> dict[str, dict[str, dict[str, int]]]:
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


def run_replay(settings: ReplaySettings, make_pipeline: PipelineFactory,
               make_baseline: BaselineFactory | None = None) -> ReplayResult:
    """Replay ``settings.bag`` through a pipeline and write the report; see the module docstring."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from cascade_sd_ros.core import bagio
    from cascade_sd_ros.tools import replay_report
    from cascade_sd_ros.tools.replay_pipeline import (
        auto_remaps,
        describe_models,
        fast_params,
        merge_params,
        node_inputs,
        round_params,
        zoo_params,
    )
    from cascade_sd_ros.tools.replay_player import VERIFIED_CAPTION_TYPE, Player, PlayerNode
    from cascade_sd_ros.tools.replay_progress import ProgressBar
    from cascade_sd_ros.tools.replay_recorder import BagRecorder, RecorderNode, pipeline_outputs
    from cascade_sd_ros.tools.replay_schedule import Scheduler
    from cascade_sd_ros.tools.replay_source import GROUND_TRUTH_TYPE, Record, iter_records, scan_bag

    scan = scan_bag(settings.bag, settings.remaps)
    # Later layers win: what the zoo was trained on, round timing from the bag, fast mode's
    # queues, then --param.
    layers = (zoo_params(settings.models), round_params(scan, settings.rounds), fast_params(settings.rate is None),
              settings.params)
    settings = replace(settings, params=merge_params(*layers))
    _prepare_out_dir(settings.out_dir)
    out_bag = settings.out_dir / OUTPUT_BAG
    started = dt.datetime.now(dt.timezone.utc)
    store = bagio.typestore()

    context = rclpy.context.Context()
    rclpy.init(context=context)
    recorder: BagRecorder | None = None
    pipeline: PipelineHandle | None = None
    own_nodes: list[Any] = []
    spin_thread: threading.Thread | None = None
    baseline: Baseline | None = None
    try:
        recorder = BagRecorder(out_bag)
        pipeline = make_pipeline(context, settings)
        if make_baseline is not None and settings.baseline:
            baseline = make_baseline(pipeline)
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
        player_node = PlayerNode(topics, echo=settings.rate is None, context=context)
        own_nodes.append(player_node)
        scheduler = Scheduler(start_bag_ns=scan.start_ns, rate=settings.rate, lookahead_ns=pipeline.lookahead_ns,
                              stall_s=settings.stall_s)

        def on_record(rec: Record, clock_ns: int) -> None:
            # Ground truth is part of the evaluation: keep it in the output bag beside the captions.
            if rec.msgtype == GROUND_TRUTH_TYPE:
                recorder.write(rec.topic, rec.msgtype, rec.t_ns, rec.raw)

        window = _echo_windows(pipeline.nodes, topics)
        player = Player(player_node, scheduler, scan.end_ns, echo_window=window,
                        drain_timeout_s=settings.drain_timeout_s, drain_quiet_s=settings.drain_quiet_s,
                        progress=ProgressBar(enabled=settings.progress), on_record=on_record)

        def on_output(topic: str, msgtype: str, raw: bytes) -> None:
            if baseline is not None and msgtype == VERIFIED_CAPTION_TYPE:
                msg = store.deserialize_cdr(raw, msgtype)
                if msg.final:
                    stamp = msg.header.stamp
                    baseline.on_final(int(msg.round_id), int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec))
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

        stats = player.play(iter_records(scan))
        received = _settled_input_counts(pipeline.nodes, stats.published, topics)
        run_info = {
            "mode": settings.mode,
            "pacing": "fast" if settings.rate is None else f"rate {settings.rate:g}",
            "remaps": settings.remaps,
            "auto_remaps": guessed,
            "rounds": settings.rounds,
            "params": settings.params,
            "started_utc": started.isoformat(timespec="seconds"),
            "wall_s": stats.wall_s,
            "held_s": stats.held_s,
            "drain_s": stats.drain_s,
            "drain_timed_out": stats.drain_timed_out,
            "echo_timeouts": stats.echo_timeouts,
            "echo_window": window,
            "stalled_rounds": stats.stalled_rounds,
            "unfinished_rounds": stats.unfinished_rounds,
            "superseded_rounds": sorted(scheduler.tracker.superseded),
            "rounds_opened": scheduler.tracker.opened,
            "published": stats.published,
            "node_inputs_received": received,
            "input_losses": _input_losses(received, stats.published, topics),
            "unmatched_topics": unmatched,
            "node_inputs_not_in_bag": unfed,
            "recorded_topics": [o.name for o in outputs],
            "recording_errors": recorder_node.errors,
            "versions": _versions(),
            **pipeline.info,
        }
        run_info["model_details"] = describe_models(run_info.get("models") or {})
        # Stop the cascade before the baseline: its model is the verifier's, now idle.
        _stop(pipeline, own_nodes, spin_thread)
        spin_thread, pipeline = None, None
        if baseline is not None:
            written = baseline.run()
            for t_ns, raw in written:
                recorder.write(replay_report.BASELINE_TOPIC, VERIFIED_CAPTION_TYPE, t_ns, raw)
            run_info["baseline"] = {"rounds": len(written), "rounds_without_inputs": list(baseline.missing)}
        else:
            run_info["baseline"] = None
    finally:
        if pipeline is not None:
            _stop(pipeline, own_nodes, spin_thread)
        for node in own_nodes:
            node.destroy_node()
        if recorder is not None:
            recorder.close()
        if context.ok():
            rclpy.shutdown(context=context)

    output = replay_report.load_output(out_bag)
    report = replay_report.write_report(output, run_info, scan.to_dict(), settings.out_dir)
    return ReplayResult(report, settings.out_dir, out_bag)


# ------------------------------------------------------------------------------------------- CLI

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cascade_sd_ros.core.spec.engine import MODES
    from cascade_sd_ros.tools.replay_pipeline import ROUND_POLICIES

    parser.add_argument("bag", type=Path, help="rosbag2 folder (or .db3 / .mcap file) to replay")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--rate", type=_positive_float, default=1.0,
                        help="play at R times the recorded speed with a /clock (default 1.0)")
    pacing.add_argument("--fast", action="store_true",
                        help="play as fast as the cascade accepts without dropping (held by rounds in flight)")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="publish bag topic FROM as TO (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder, new or empty (default: replay_<bag name>_<UTC time>)")
    parser.add_argument("--mode", choices=MODES, default=MODES[0], help="decoding mode of the cascade")
    parser.add_argument("--model", action="append", default=[], metavar="ROLE=SOURCE",
                        help="model for a role (target, refiner, drafter): a local HF folder or tiny:SEED "
                             "(default: the shipped zoo)")
    parser.add_argument("--device", default="cpu", help="torch device of the stages' models (cpu, cuda, cuda:N)")
    parser.add_argument("--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                        help="node parameter override, NODE one of common, event_drafter, frame_refiner, "
                             "video_verifier (repeatable), e.g. common:round_period=0.5")
    parser.add_argument("--rounds", choices=ROUND_POLICIES, default="auto",
                        help="round timing: one round at the end of each ground-truth scene as the demo does "
                             "(scenes), the nodes' round_period (period), or scenes when the bag has ground truth (auto)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the verifier-alone baseline")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stall-s", type=_positive_float, default=60.0,
                        help="fast mode: stop waiting for a round after this many wall seconds")


def _parse_models(specs: list[str]) -> dict[str, str]:
    roles = ("target", "refiner", "drafter")
    models: dict[str, str] = {}
    for spec in specs:
        role, sep, source = spec.partition("=")
        if not sep or role not in roles or not source:
            raise ReplayInputError(f"--model {spec!r}: expected ROLE=SOURCE with ROLE one of {', '.join(roles)}")
        models[role] = source
    return models


def _make_baseline(pipeline: Any) -> Baseline | None:
    from cascade_sd_ros.tools.replay_baseline import VerifierAloneBaseline

    verifier = getattr(pipeline, "verifier", None)
    target = getattr(pipeline, "models", {}).get("target")
    return None if verifier is None or target is None else VerifierAloneBaseline(verifier, target)


def run(args: argparse.Namespace) -> int:
    from cascade_sd_ros.tools.replay_pipeline import make_pipeline, parse_params

    try:
        remaps = parse_remaps(args.remap)
        models = _parse_models(args.model)
        params = parse_params(args.param)
    except ReplayInputError as exc:
        print(f"cascade-sd replay: error: {exc}", file=sys.stderr)
        return 2
    out_dir = args.out
    if out_dir is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_dir = Path(f"replay_{args.bag.resolve().name}_{stamp}")
    settings = ReplaySettings(
        bag=args.bag, out_dir=out_dir, rate=None if args.fast else args.rate, remaps=remaps, mode=args.mode,
        models=models, params=params, rounds=args.rounds, device=args.device, baseline=not args.no_baseline,
        progress=not args.no_progress, stall_s=args.stall_s)
    try:
        result = run_replay(settings, make_pipeline, _make_baseline)
    except ReplayInputError as exc:
        print(f"cascade-sd replay: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:  # models, parameters: named by the loaders
        print(f"cascade-sd replay: error: {exc}", file=sys.stderr)
        return 1
    summ, inp = result.report["summary"], result.report["input"]
    for stream, why in inp["missing_streams"].items():
        print(f"missing stream {stream}: {why}", file=sys.stderr)
    for topic, msgtype in inp["unknown_types"].items():
        print(f"skipped {topic}: unknown message type {msgtype}", file=sys.stderr)
    for topic, why in inp["skipped_topics"].items():
        print(f"not played {topic}: {why}", file=sys.stderr)
    for topic, n in inp["corrupt_records"].items():
        print(f"skipped {n} corrupt record(s) on {topic}", file=sys.stderr)
    print(f"{summ['rounds']} rounds; report in {result.out_dir / 'report.md'}; outputs in {result.output_bag}")
    return 0
