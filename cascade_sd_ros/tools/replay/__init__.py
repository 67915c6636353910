"""``cascade-sd replay BAG``: replay a rosbag2 through the cascade, record its outputs, report.

Reads a rosbag2 (sqlite3 or MCAP), publishes its records by their recorded time with a ``/clock``
(the nodes run on ``use_sim_time``) or, with ``--fast``, as fast as the cascade accepts them, records
every output of the pipeline's nodes into an MCAP bag in ``--out``, runs the verifier alone on the
same rounds as the speed reference and times the target bare (no ROS) on the rounds' clips beside
it, and writes report.json, report.md and PNG plots there.

The package follows the data once, a module per step:

* ``source``   read: scan the bag (topics, streams, damage) and iterate its records;
* ``schedule`` when each record goes out (paced by ``/clock``, or held by rounds in flight);
* ``player``   publish: records and ``/clock``, counting what DDS refused;
* ``recorder`` record: every output of the nodes into an MCAP bag;
* ``report``   report: report.json / report.md / plots, a pure function of the output bag;

and around them: ``passes`` (one pass: the nodes, player and recorder together), ``pipeline`` (the
replay's node configuration over the shared composition, tools/pipeline.py), ``processes`` (the nodes
as separate processes, the default when paced), ``baseline`` (the target's bare cost on the same
clips), ``progress`` (the terminal bar) and ``msgtypes`` (bag type names to rclpy classes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cascade_sd_ros.core.names import STAGES
from cascade_sd_ros.tools.replay.passes import PipelineFactory, PipelineHandle, ReferenceFactory, ReferenceRun
from cascade_sd_ros.tools.replay.source import ReplayInputError, parse_remaps

__all__ = [
    "PipelineFactory",
    "PipelineHandle",
    "ReferenceFactory",
    "ReferenceRun",
    "ReplayResult",
    "ReplaySettings",
    "run_replay",
]

OUTPUT_BAG = "output"  # folder name of the recorded MCAP bag inside --out
ALONE_BAG = "verifier_alone"  # folder of the verifier-alone pass's recording inside --out
BASELINES = ("pass", "offline", "none")


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
    oracle_offset: bool = False  # the stages told the ground truth's clock offset (pinned) instead of measuring it
    device: str = "cpu"
    baseline: str = "pass"  # BASELINES
    stages: tuple[str, ...] = STAGES
    progress: bool = True
    stall_s: float = 60.0
    drain_timeout_s: float = 120.0
    drain_quiet_s: float = 15.0
    # the stage nodes in processes of their own, as on a robot (paced replays); fast mode's
    # back-pressure needs them on the replay's executor, so it always composes them in this process
    processes: bool = True

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ReplayInputError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
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


def run_replay(
    settings: ReplaySettings, make_pipeline: PipelineFactory, make_bare: ReferenceFactory | None = None
) -> ReplayResult:
    """Replay ``settings.bag`` through a pipeline and write the report; see the module docstring.

    With ``settings.baseline == "pass"`` the bag is first played through the verifier alone (the
    same node, drafts off, its own recording in ``verifier_alone/``), and its final captions go into
    the cascade's output bag as the speed reference; ``make_bare`` (given the cascade's pipeline)
    times the target bare on each round's clip after the cascade pass, the reference's own honest
    cost; ``"offline"`` runs only the bare target, which is then the reference; ``"none"`` neither.
    """
    from cascade_sd_ros.tools.replay import report as replay_report
    from cascade_sd_ros.tools.replay.passes import play_pass
    from cascade_sd_ros.tools.replay.pipeline import fast_params, merge_params, round_params, zoo_params
    from cascade_sd_ros.tools.replay.source import scan_bag

    scan = scan_bag(settings.bag, settings.remaps)
    # Later layers win: what the zoo was trained on, round timing from the bag, fast mode's
    # queues, then --param.
    layers = (
        zoo_params(settings.models),
        round_params(scan, settings.rounds, settings.oracle_offset),
        fast_params(settings.rate is None),
        settings.params,
    )
    settings = replace(settings, params=merge_params(*layers))
    _prepare_out_dir(settings.out_dir)
    out_bag = settings.out_dir / OUTPUT_BAG
    started = dt.datetime.now(dt.timezone.utc)

    alone_info: dict[str, Any] | None = None
    references: dict[str, ReferenceFactory] = {}
    if settings.baseline == "pass":
        if settings.progress:
            print("pass 1/2: the verifier alone (speed reference)", file=sys.stderr)
        alone_settings = replace(settings, **alone_pass(settings))
        alone = play_pass(scan, alone_settings, make_pipeline, settings.out_dir / ALONE_BAG)
        alone_info = {
            k: alone.run_info.get(k) for k in ("wall_s", "rounds_opened", "input_losses", "unfinished_rounds")
        }
        alone_info["finals"] = len(alone.finals)
        references[replay_report.ALONE_TOPIC] = lambda _pipeline: RecordedAlone(alone.finals)
    if settings.baseline != "none" and make_bare is not None:
        references[replay_report.BARE_TOPIC] = make_bare
    if settings.progress and settings.baseline == "pass":
        print("pass 2/2: the cascade", file=sys.stderr)
    main = play_pass(scan, settings, make_pipeline, out_bag, references)
    refs = main.run_info.pop("references", {})
    alone_ref, bare_ref = refs.get(replay_report.ALONE_TOPIC, {}), refs.get(replay_report.BARE_TOPIC, {})
    run_info = {
        "started_utc": started.isoformat(timespec="seconds"),
        "versions": _versions(),
        **main.run_info,
        "throughput": throughput(main.run_info, len(main.finals), alone_info),
        "baseline": {
            "kind": settings.baseline,
            "rounds": alone_ref.get("rounds", bare_ref.get("rounds", 0)),
            "rounds_missing": alone_ref.get("rounds_missing", bare_ref.get("rounds_missing", [])),
            "verifier_alone_pass": alone_info,
            "target_bare": bare_ref or None,
        },
    }
    output = replay_report.load_output(out_bag)
    report = replay_report.write_report(output, run_info, main.scan.to_dict(), settings.out_dir)
    return ReplayResult(report, settings.out_dir, out_bag)


def throughput(cascade_run: dict[str, Any], cascade_finals: int, alone: dict[str, Any] | None) -> dict[str, Any]:
    """Final captions per second of playback (:class:`~cascade_sd_ros.core.speed.Throughput`) of the
    cascade pass and, where it ran, of the verifier-alone pass, with their ratio."""
    from cascade_sd_ros.core.speed import Throughput, throughput_ratio

    def of(info: dict[str, Any], finals: int) -> Throughput:
        return Throughput(int(info.get("rounds_opened") or 0), finals, float(info.get("wall_s") or 0.0))

    cascade = of(cascade_run, cascade_finals)
    out: dict[str, Any] = {"cascade": cascade.to_dict(), "alone": None, "ratio": None}
    if alone is not None:
        ref = of(alone, int(alone.get("finals") or 0))
        out.update(alone=ref.to_dict(), ratio=throughput_ratio(cascade, ref))
    return out


def alone_pass(settings: ReplaySettings) -> dict[str, Any]:
    """The verifier-alone pass's stages and parameters: the verifier, drafts off. Where the cascade
    measures the clock offset (in its drafter, which the verifier follows), a drafter that opens no
    rounds (``round_period`` 0: it drafts nothing) stays as the alone verifier's offset source, so
    both passes measure it alike."""
    from cascade_sd_ros.tools.replay.pipeline import merge_params

    extra: dict[str, dict[str, Any]] = {"video_verifier": {"use_drafts": "none"}}
    drafter = {**settings.params.get("common", {}), **settings.params.get("event_drafter", {})}
    follows = bool(settings.params.get("video_verifier", {}).get("follow_clock_offset", True))
    if "drafter" in settings.stages and follows and bool(drafter.get("estimate_offset", True)):
        extra["event_drafter"] = {"round_period": 0.0}
        return {"stages": ("drafter", "verifier"), "params": merge_params(settings.params, extra)}
    return {"stages": ("verifier",), "params": merge_params(settings.params, extra)}


class RecordedAlone:
    """The verifier-alone pass's final captions, handed to the cascade pass as its reference."""

    def __init__(self, finals: dict[int, tuple[int, bytes]]) -> None:
        self._finals = dict(finals)
        self._wanted: list[int] = []
        self.missing: list[int] = []

    def on_record(self, msgtype: str, raw: bytes) -> None:
        """Nothing to see: the captions were recorded in the first pass."""

    def on_final(self, round_id: int, t_ns: int) -> None:
        self._wanted.append(round_id)

    def run(self) -> list[tuple[int, bytes]]:
        """The alone captions of the rounds the cascade finished (the others are ``missing``)."""
        self.missing = sorted(r for r in set(self._wanted) if r not in self._finals)
        return [self._finals[r] for r in sorted(set(self._wanted)) if r in self._finals]


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
    from cascade_sd_ros.tools.replay.pipeline import ROUND_POLICIES

    parser.add_argument("bag", type=Path, help="rosbag2 folder (or .db3 / .mcap file) to replay")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--rate",
        type=_positive_float,
        default=1.0,
        help="play at R times the recorded speed with a /clock (default 1.0)",
    )
    pacing.add_argument(
        "--fast",
        action="store_true",
        help="play as fast as the cascade accepts without dropping (held by rounds in flight)",
    )
    parser.add_argument(
        "--remap", action="append", default=[], metavar="FROM:=TO", help="publish bag topic FROM as TO (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder, new or empty (default: replay_<bag name>_<UTC time>)"
    )
    parser.add_argument("--mode", choices=MODES, default=MODES[0], help="decoding mode of the cascade")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ROLE=SOURCE",
        help="model for a role (target, refiner, drafter): a local HF folder or tiny:SEED (default: the shipped zoo)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the stages' models (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NODE:NAME=VALUE",
        help="node parameter override, NODE one of common, event_drafter, frame_refiner, "
        "video_verifier (repeatable), e.g. common:round_period=0.5",
    )
    parser.add_argument(
        "--rounds",
        choices=ROUND_POLICIES,
        default="auto",
        help="round timing: one round at the end of each ground-truth scene as the demo does "
        "(scenes), the nodes' round_period (period), or scenes when the bag has ground truth (auto)",
    )
    parser.add_argument(
        "--oracle-offset",
        action="store_true",
        help="with ground truth in the bag: tell the stages its clock offset, pinned (as before "
        "issue 18); default: the drafter measures it and the refiner and verifier follow",
    )
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        default="pass",
        help="speed reference: a second pass of the bag through the verifier node alone, with the "
        "target's bare cost on the same clips beside it (pass, default); the target decoding "
        "each round's clip bare after the cascade, no ROS (offline); or none",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="compose the stage nodes in this process (default for --fast; a paced replay "
        "otherwise starts each stage as a process of its own, as on a robot)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stall-s",
        type=_positive_float,
        default=60.0,
        help="fast mode: stop waiting for a round after this many wall seconds",
    )


def _parse_models(specs: list[str]) -> dict[str, str]:
    roles = ("target", "refiner", "drafter")
    models: dict[str, str] = {}
    for spec in specs:
        role, sep, source = spec.partition("=")
        if not sep or role not in roles or not source:
            raise ReplayInputError(f"--model {spec!r}: expected ROLE=SOURCE with ROLE one of {', '.join(roles)}")
        if not source.startswith("tiny:") and not Path(source).is_dir():  # refused before any node starts
            raise ReplayInputError(f"--model {spec!r}: the {role} model folder {source} does not exist")
        models[role] = source
    return models


def speed_lines(sp: dict[str, Any]) -> list[str]:
    """The report's speed figure in a few lines: caption latency p50 of the cascade, its reference
    and the bare target, the ratio, and a plain warning when the reference was not honest."""
    if not sp.get("reference"):
        return []

    def ms(d: dict[str, Any]) -> str:
        return "-" if d["p50_ms"] is None else f"{d['p50_ms']:.0f} ms"

    ref = "verifier alone" if sp["reference"] == "verifier-alone" else "target bare"
    ratio = "n/a" if sp["speedup_p50"] is None else f"{sp['speedup_p50']:.2f}x"
    lines = [
        f"caption latency p50 over {sp['rounds']} rounds: cascade {ms(sp['caption_latency_cascade'])}, "
        f"{ref} {ms(sp['caption_latency_alone'])} (target bare, no ROS: {ms(sp['target_bare'])}); "
        f"speed-up over the {ref}: {ratio}"
    ]
    if sp["reference_honest"] is False:
        lines.append(
            f"NOT AN HONEST REFERENCE: the verifier alone took {sp['alone_over_bare']:.2f}x the target's bare "
            f"cost (over {100 * sp['honest_margin']:.0f} %); the speed-up flatters the cascade"
        )
    return lines


def _make_bare(pipeline: Any) -> ReferenceRun | None:
    """The target's bare decode of each round's clip: in one process on the pipeline's own target
    model and the verifier's kept clips; with the stages in their own processes on the same target
    loaded here and the verifier's clip rule over the frames the replay published."""
    from cascade_sd_ros.tools.replay.baseline import BareTarget, verifier_clips
    from cascade_sd_ros.tools.replay.processes import BagClips, ProcessPipeline, verifier_params

    verifier = getattr(pipeline, "verifier", None)
    if verifier is None:
        return None
    if isinstance(pipeline, ProcessPipeline):
        from cascade_sd_ros.core.stage_model import load_stage_model

        config = pipeline.config
        target = load_stage_model(config.source("target"), "target", device=config.device, dtype=config.dtype)
        budget = int(verifier_params(config.params)["max_new_tokens"])
        return BareTarget(target, budget, BagClips.for_verifier(config.params))
    target = getattr(pipeline, "models", {}).get("target")
    return None if target is None else BareTarget(target, int(verifier.cfg.max_new_tokens), verifier_clips(verifier))


def _check_vocabularies(settings: ReplaySettings) -> None:
    """Stages whose models give token ids different meanings: refused in one line (exit 2)."""
    from cascade_sd_ros.core.stage_model import VocabularyMismatch
    from cascade_sd_ros.tools.pipeline import PipelineConfig, check_source_vocabularies

    try:
        check_source_vocabularies(PipelineConfig(models=dict(settings.models), stages=tuple(settings.stages)))
    except VocabularyMismatch as exc:
        raise ReplayInputError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from cascade_sd_ros.tools.replay.pipeline import make_pipeline, parse_params

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
        bag=args.bag,
        out_dir=out_dir,
        rate=None if args.fast else args.rate,
        remaps=remaps,
        mode=args.mode,
        models=models,
        params=params,
        rounds=args.rounds,
        device=args.device,
        baseline=args.baseline,
        oracle_offset=args.oracle_offset,
        progress=not args.no_progress,
        stall_s=args.stall_s,
        processes=not (args.one_process or args.fast),
    )
    try:
        _check_vocabularies(settings)  # a mix of vocabularies: one line, before the bag is read
        result = run_replay(settings, make_pipeline, _make_bare)
    except ReplayInputError as exc:
        print(f"cascade-sd replay: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:  # models, parameters: named by the loaders
        if getattr(args, "debug", False):
            raise
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
    if inp.get("storage_error"):
        print(f"partial: {inp['storage_error']}", file=sys.stderr)
    print(f"{summ['rounds']} rounds; report in {result.out_dir / 'report.md'}; outputs in {result.output_bag}")
    for line in speed_lines(summ.get("speed") or {}):
        print(line)
    from cascade_sd_ros.tools.replay.report import throughput_line

    tp_line = throughput_line((result.report.get("run") or {}).get("throughput"))
    if tp_line:
        print(tp_line)
    return 3 if inp.get("storage_error") or inp["corrupt_records"] else 0  # 3: partial (damaged input)
