"""What temporal misalignment costs the cascade, and what finding the offset from the data buys back (issue 18).

The shipped zoo through the speculative-decoding engine (lossless greedy, drafter -> refiner -> target),
one round at the end of every synthetic scene (48 px, the zoo's geometry), inputs picked exactly as the
nodes pick them: the drafter's event image of [T - window, T] on the event clock (no offset involved),
the refiner's frame nearest T and the target's 8-frame clip ending at T, both on the RGB clock through
the offset the stages *believe* (``T - believed``). Per condition: drafter and refiner acceptance
(chain), caption exact match against the ground truth, and caption tokens per verifier step.

Axes (one at a time, the others at their defaults: error 0, no jitter, no drops, window 0.25 s,
clip span 1 s):

* offset error (believed minus true): 0, ±10, ±30, ±100, ±300 ms, with the round 40 ms before its
  scene's end (the demo's schedule: a scene cut follows, as when a robot turns a corner) and with
  the round 1.5 s into its scene (clip and error stay inside one scene: only motion moves);
* RGB stamp jitter (std), frame drop rate, event window length, clip span;
* where the offset comes from: the oracle (the truth), the estimate (the drafter's ClockOffsetSource,
  fed the stream online, starting from 0 with the truth at 137 ms), trigger sync
  (the exposure strobe in the event stream, 40 ppm drift and a missing edge; the streams' starts,
  else the estimate, pick the strobe alias, as in the drafter). These three run on scenes in motion (a still scene has nothing to align by;
  the other axes use the zoo's mix, still objects included). For these three the table also gives exact match over the rounds after the
  first 5 s, next to the oracle's on the same rounds.

    nice -n 10 .venv/bin/python bench/misalignment.py [--scenes 12] [--seed 0] [--quick] [--json]

Plots: ``bench/figures/misalignment_axes.png`` (the four figures against every axis) and
``bench/figures/misalignment_sources.png`` (applied offset error per round, per source).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench scripts run from a checkout

from cascade_sd_ros.core.align.buffer import TimeBuffer  # noqa: E402
from cascade_sd_ros.core.align.clip import select_clip  # noqa: E402
from cascade_sd_ros.core.align.offset_source import ClockOffsetSource  # noqa: E402
from cascade_sd_ros.core.events import CD_DTYPE, EventFrameRenderer  # noqa: E402
from cascade_sd_ros.core.spec.engine import CascadeDecoder  # noqa: E402
from cascade_sd_ros.core.synth.clocks import ClockModel  # noqa: E402
from cascade_sd_ros.core.synth.esim import EsimConfig  # noqa: E402
from cascade_sd_ros.core.synth.packets import EventPacketData, PacketConfig  # noqa: E402
from cascade_sd_ros.core.synth.stream import RgbFrame, SceneData, StreamConfig, StrobeConfig, iter_scenes  # noqa: E402
from cascade_sd_ros.core.zoo import load_zoo  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"
TRUE_OFFSET_MS = 137.0
MARGIN_NS = 40_000_000  # the round sits this long before its scene's end (as tools.pipeline.scene_rounds)
ERRORS_MS = (-300.0, -100.0, -30.0, -10.0, 0.0, 10.0, 30.0, 100.0, 300.0)
JITTER_MS = (0.0, 5.0, 15.0, 30.0)
DROPS = (0.0, 0.1, 0.3, 0.5)
WINDOWS_S = (0.05, 0.1, 0.25, 0.5)
SPANS_S = (0.25, 0.5, 1.0, 1.5)
MID_ROUND_S = 1.5  # the mid-scene schedule: the clip [0.5, 1.5] s and ±300 ms around it stay in the scene
SETTLE_S = 5.0  # the Must-show's "after at most 5 s"


@dataclass(frozen=True)
class Setup:
    error_ms: float = 0.0
    window_s: float = 0.25
    span_s: float = 1.0


class Stream:
    """One synthetic stream, its rounds, and every input a round can ask for."""

    def __init__(
        self,
        zoo: Any,
        scenes: int,
        seed: int,
        jitter_ms: float = 0.0,
        drop: float = 0.0,
        drift_ppm: float = 0.0,
        strobe: bool = False,
        moving_only: bool = False,
        round_at_s: float | None = None,
    ) -> None:
        g = zoo.geometry
        self.config = StreamConfig(
            n_scenes=scenes,
            height=g.image_size,
            width=g.image_size,
            seed=seed,
            scene_duration_s=g.scene_duration_s,
            clocks=ClockModel(
                event_offset_ns=int(TRUE_OFFSET_MS * 1e6),
                jitter_ms=jitter_ms,
                drop_rate=drop,
                event_drift_ppm=drift_ppm,
            ),
            packets=PacketConfig(time_threshold_us=5000),
            esim=replace(EsimConfig(), noise_rate_hz=0.1),
            strobe=StrobeConfig(missing=(11,)) if strobe else None,
            **({"motions": ("left", "right", "up", "down")} if moving_only else {}),
        )
        self.scenes: list[SceneData] = list(iter_scenes(self.config))
        self.frames: TimeBuffer[np.ndarray] = TimeBuffer(100_000)
        for s in self.scenes:
            for f in s.frames:
                self.frames.insert(f.stamp_ns, f.image)
        anchor = self.config.start_ns + self.config.clocks.event_offset_ns  # event clock = sensor time + anchor
        self.events = (
            np.concatenate([p.events for s in self.scenes for p in s.packets]) if self.scenes else np.zeros(0, CD_DTYPE)
        )
        self.event_ns = self.events["t"].astype(np.int64) * 1000 + anchor
        self.anchor_ns = anchor
        d = self.config.scene_duration_ns
        # round i at the end of scene i (as the demo schedules them) or ``round_at_s`` into it, on the
        # event clock; the true offset there (drift included)
        at = d - MARGIN_NS if round_at_s is None else int(round_at_s * 1e9)
        self.rounds_rgb = [self.config.start_ns + i * d + at for i in range(scenes)]
        self.true_ns = [self.config.clocks.offset_at(t - self.config.start_ns) for t in self.rounds_rgb]
        self.rounds = [t + o for t, o in zip(self.rounds_rgb, self.true_ns)]
        self.truth = [s.truth.caption for s in self.scenes]
        self.renderer = EventFrameRenderer(g.image_size, g.image_size, g.event_chunks)
        self.geometry = g

    def inputs(self, i: int, believed_ns: int, setup: Setup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(event image, refiner frame, target clip) of round ``i`` with the stages believing ``believed_ns``."""
        T = self.rounds[i]
        w = int(setup.window_s * 1e9)
        sel = (self.event_ns >= T - w) & (self.event_ns <= T)
        event_image = np.asarray(self.renderer.render(self.events[sel])[0], np.uint8).reshape(
            self.geometry.image_size, self.geometry.image_size, 3
        )
        t_rgb = T - believed_ns
        near = self.frames.nearest(t_rgb)
        assert near is not None
        clip = select_clip(self.frames, t_rgb, int(setup.span_s * 1e9), self.geometry.num_frames, slop_ns=10**12)
        assert clip is not None
        return event_image, near[1], np.stack(clip.items)


def run_round(zoo: Any, stream: Stream, i: int, believed_ns: int, setup: Setup, budget: int) -> dict[str, Any]:
    ev, frame, clip = stream.inputs(i, believed_ns, setup)
    ctx = [zoo.context("drafter", ev), zoo.context("refiner", frame), zoo.context("target", clip)]
    res = CascadeDecoder(
        [zoo.drafter, zoo.refiner, zoo.target], mode="lossless-greedy", gamma=4, adaptive=False
    ).generate(ctx, budget)
    eos = zoo.target.eos_token_id
    text = zoo.decode([t for t in res.token_ids if t != eos])
    s = res.stats.stages
    return {
        "drafted": [s[0].drafted, s[1].drafted],
        "accepted": [s[0].accepted, s[1].accepted],
        "tokens": len(res.token_ids),
        "forwards": res.stats.target_forwards,
        "exact": text.strip() == stream.truth[i],
        "text": text,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    d = np.sum([r["drafted"] for r in rows], axis=0)
    a = np.sum([r["accepted"] for r in rows], axis=0)
    return {
        "drafter_acceptance": float(a[0] / max(d[0], 1)),
        "refiner_acceptance": float(a[1] / max(d[1], 1)),
        "exact_match": float(np.mean([r["exact"] for r in rows])),
        "tokens_per_step": float(sum(r["tokens"] for r in rows) / max(sum(r["forwards"] for r in rows), 1)),
        "rounds": len(rows),
    }


def sweep(zoo: Any, stream: Stream, setups: list[tuple[str, float, Setup]], budget: int) -> list[dict[str, Any]]:
    out = []
    for axis, value, setup in setups:
        rows = [
            run_round(zoo, stream, i, stream.true_ns[i] + int(setup.error_ms * 1e6), setup, budget)
            for i in range(len(stream.rounds))
        ]
        out.append({"axis": axis, "value": value, **summarise(rows)})
        print(
            f"  {axis:>14} {value:>8}: {json.dumps({k: round(v, 3) for k, v in out[-1].items() if isinstance(v, float)})}",
            flush=True,
        )
    return out


def applied_offsets(stream: Stream, source: str) -> tuple[list[int], list[str]]:
    """Per round, the offset a stage applies at the round's opening under ``source``: the drafter's own
    :class:`ClockOffsetSource` (starting from 0, the truth at 137 ms), fed the stream online in
    publication order with an update after every input, as the node runs it (an estimate at most
    every 1 s of event time, a strobe fit whenever edges came, the alias by the streams' starts);
    "estimate" is the same without the strobe's edges."""
    if source == "oracle":
        return list(stream.true_ns), ["oracle"] * len(stream.rounds)
    src = ClockOffsetSource(initial_ns=0, bound_ns=400_000_000)
    w, h = stream.config.width, stream.config.height
    out: list[int] = []
    sources: list[str] = []
    for scene in stream.scenes:
        for stamp, kind, item in scene.timeline():
            while len(out) < len(stream.rounds) and kind == "events" and stamp > stream.rounds[len(out)]:
                applied = src.current()  # the round opens as the event stream passes T
                out.append(applied.at(stream.rounds[len(out)]))
                sources.append(applied.source)
            if isinstance(item, EventPacketData):
                ev_ns = item.events["t"].astype(np.int64) * 1000 + stream.anchor_ns
                tr_ns = item.triggers["t"].astype(np.int64) * 1000 + stream.anchor_ns
                firsts = [int(a.min()) for a in (ev_ns, tr_ns) if a.size]
                if firsts:
                    src.add_packet(item.seq, min(firsts))
                if source == "trigger" and tr_ns.size:
                    src.add_triggers(tr_ns, item.triggers["id"], item.triggers["p"], arrival_s=stamp / 1e9)
                e = item.events
                src.add_events(ev_ns, e["x"], e["y"], e["p"], w, h)
            elif isinstance(item, RgbFrame):
                src.add_frame(item.stamp_ns, item.image, arrival_s=stamp / 1e9)
            if src.due():
                src.update()
    while len(out) < len(stream.rounds):  # rounds past the last packet
        applied = src.current()
        out.append(applied.at(stream.rounds[len(out)]))
        sources.append(applied.source)
    return out, sources


def compare_sources(zoo: Any, stream: Stream, budget: int) -> dict[str, Any]:
    setup = Setup()
    result: dict[str, Any] = {}
    oracle_rows = None
    settled = [i for i, T in enumerate(stream.rounds_rgb) if T - stream.config.start_ns > SETTLE_S * 1e9]
    for source in ("oracle", "estimate", "trigger"):
        t0 = time.perf_counter()
        believed, sources = applied_offsets(stream, source)
        rows = [run_round(zoo, stream, i, b, setup, budget) for i, b in enumerate(believed)]
        if source == "oracle":
            oracle_rows = rows
        assert oracle_rows is not None
        errors = [(b - t) / 1e6 for b, t in zip(believed, stream.true_ns)]
        result[source] = {
            **summarise(rows),
            "offset_error_ms": [round(e, 3) for e in errors],
            "sources": sources,
            "max_error_after_settle_ms": max((abs(errors[i]) for i in settled), default=float("nan")),
            "exact_after_settle": float(np.mean([rows[i]["exact"] for i in settled])) if settled else float("nan"),
            "oracle_exact_same_rounds": float(np.mean([oracle_rows[i]["exact"] for i in settled]))
            if settled
            else float("nan"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"  source {source:>8}: errors after {SETTLE_S:.0f} s max {result[source]['max_error_after_settle_ms']:.2f} ms, "
            f"exact {result[source]['exact_after_settle']:.3f} vs oracle {result[source]['oracle_exact_same_rounds']:.3f}",
            flush=True,
        )
    result["round_times_s"] = [round((t - stream.config.start_ns) / 1e9, 3) for t in stream.rounds_rgb]
    return result


def plot(axes_rows: list[dict[str, Any]], sources: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    names = [
        ("offset_error", "offset error [ms], round 40 ms before a cut"),
        ("offset_error_mid", "offset error [ms], round mid-scene"),
        ("jitter", "RGB stamp jitter std [ms]"),
        ("drop_rate", "frame drop rate"),
        ("event_window", "event window [s]"),
        ("clip_span", "clip span [s]"),
    ]
    metrics = [
        ("drafter_acceptance", "drafter acceptance"),
        ("refiner_acceptance", "refiner acceptance"),
        ("exact_match", "caption exact match"),
        ("tokens_per_step", "tokens / verifier step"),
    ]
    fig, axs = plt.subplots(len(metrics), len(names), figsize=(4 * len(names), 2.6 * len(metrics)), squeeze=False)
    for c, (axis, label) in enumerate(names):
        rows = sorted((r for r in axes_rows if r["axis"] == axis), key=lambda r: r["value"])
        xs = [r["value"] for r in rows]
        for r_i, (key, mlabel) in enumerate(metrics):
            ax = axs[r_i][c]
            ax.plot(xs, [r[key] for r in rows], "o-")
            if axis.startswith("offset_error"):
                ax.set_xscale("symlog", linthresh=10)
            if r_i == len(metrics) - 1:
                ax.set_xlabel(label)
            if c == 0:
                ax.set_ylabel(mlabel)
            ax.grid(alpha=0.3)
    fig.suptitle("what temporal misalignment costs (shipped zoo, lossless greedy, one round per 2 s scene)")
    fig.tight_layout()
    p1 = FIGURES / "misalignment_axes.png"
    fig.savefig(p1, dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    times = sources["round_times_s"]
    for src in ("oracle", "estimate", "trigger"):
        ax.plot(times, sources[src]["offset_error_ms"], "o-", label=src)
    ax.axvline(SETTLE_S, color="grey", ls=":")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("round time since start [s]")
    ax.set_ylabel("applied minus true offset [ms]")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"offset the stages apply (truth {TRUE_OFFSET_MS:.0f} ms, starting from 0)")
    fig.tight_layout()
    p2 = FIGURES / "misalignment_sources.png"
    fig.savefig(p2, dpi=90)
    plt.close(fig)
    return [p1, p2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=12, help="scenes (= rounds) per condition (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="4 scenes, fewer axis values (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.scenes < 4:
        parser.error("--scenes must be >= 4 (the source comparison needs rounds after 5 s)")
    import torch

    torch.set_num_threads(1)
    scenes = 4 if args.quick else args.scenes
    started = time.perf_counter()
    zoo = load_zoo()
    budget = args.max_new_tokens
    errors = (-100.0, 0.0, 100.0) if args.quick else ERRORS_MS
    base = Stream(zoo, scenes, args.seed)
    print(f"misalignment study: {scenes} rounds per condition, truth {TRUE_OFFSET_MS} ms", flush=True)
    rows = sweep(zoo, base, [("offset_error", e, Setup(error_ms=e)) for e in errors], budget)
    mid = Stream(zoo, scenes, args.seed, round_at_s=MID_ROUND_S)
    rows += sweep(zoo, mid, [("offset_error_mid", e, Setup(error_ms=e)) for e in errors], budget)
    rows += sweep(
        zoo,
        base,
        [("event_window", w, Setup(window_s=w)) for w in (WINDOWS_S[:2] if args.quick else WINDOWS_S)],
        budget,
    )
    rows += sweep(
        zoo, base, [("clip_span", s, Setup(span_s=s)) for s in (SPANS_S[:2] if args.quick else SPANS_S)], budget
    )
    for j in JITTER_MS[1:2] if args.quick else JITTER_MS:
        rows += sweep(zoo, Stream(zoo, scenes, args.seed, jitter_ms=j), [("jitter", j, Setup())], budget)
    for d in DROPS[1:2] if args.quick else DROPS:
        rows += sweep(zoo, Stream(zoo, scenes, args.seed, drop=d), [("drop_rate", d, Setup())], budget)
    # the Must-show's condition: scenes in motion (a still scene has nothing to align by)
    strobed = Stream(zoo, scenes, args.seed, drift_ppm=40.0, strobe=True, moving_only=True)
    sources = compare_sources(zoo, strobed, budget)
    figures = [] if args.no_plots else plot(rows, sources)
    result = {
        "scenes": scenes,
        "seed": args.seed,
        "true_offset_ms": TRUE_OFFSET_MS,
        "axes": rows,
        "sources": sources,
        "figures": [str(p) for p in figures],
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(result, indent=1))
    print(f"done in {result['seconds']} s; figures: {', '.join(result['figures']) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
