"""The replay report, computed from the recorded output bag only: report.json, report.md, PNG plots.

Everything a report states about rounds comes from the output MCAP: the cascade's final
``VerifiedCaption`` per round, the references the replay wrote next to it (the verifier node alone
on :data:`ALONE_TOPIC`, the target's bare decode of each round's clip on :data:`BARE_TOPIC`) and the
``/ground_truth`` scenes the player forwarded. So anyone can recompute a report from its bag
(:func:`load_output` + :func:`cascade_sd_ros.core.report.summarise`); the speed figure is caption
latency through :func:`cascade_sd_ros.core.speed.compare`, as in ``demo``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core import report as rpt
from cascade_sd_ros.core import speed as spd
from cascade_sd_ros.core.names import stamp_ns
from cascade_sd_ros.core.report import Reference, RoundRecord, SceneInterval

VERIFIED_CAPTION_TYPE = "cascade_sd_ros/msg/VerifiedCaption"
DRAFT_TYPE = "cascade_sd_ros/msg/DraftTokens"
COMMIT_TYPE = "cascade_sd_ros/msg/Commit"
GROUND_TRUTH_TYPE = "cascade_sd_ros/msg/SceneGroundTruth"
#: Where the replay writes the verifier node alone's final captions (the second pass), one per round.
ALONE_TOPIC = "/replay/verifier_alone"
#: Where it writes the target's bare greedy decode of each round's clip, timed without ROS.
BARE_TOPIC = "/replay/target_bare"
BARE_MODE = "target-bare"
REFERENCE_TOPICS = (ALONE_TOPIC, BARE_TOPIC)
SCHEMA = "cascade_sd_ros.replay_report/2"


def _stamp_ns(t: Any) -> int:
    return stamp_ns(t.sec, t.nanosec)


def record_from_caption(
    msg: Any,
    ground_truth: str | None = None,
    alone: Reference | None = None,
    bare: Reference | None = None,
    true_offset_ns: int | None = None,
) -> RoundRecord:
    """A final ``VerifiedCaption`` (rosbags or rclpy message) as a :class:`RoundRecord`."""
    return RoundRecord(
        round_id=int(msg.round_id),
        stamp_ns=_stamp_ns(msg.header.stamp),
        text=str(msg.text),
        token_ids=tuple(int(t) for t in msg.token_ids),
        mode_name=str(msg.mode_name),
        lossless=bool(msg.lossless),
        drafted_per_stage=tuple(int(v) for v in msg.drafted_per_stage),
        accepted_per_stage=tuple(int(v) for v in msg.accepted_per_stage),
        target_forwards=int(msg.target_forwards),
        latency_ms={
            "caption": float(msg.latency_caption_ms),
            "prefill": float(msg.latency_prefill_ms),
            "verify": float(msg.latency_verify_ms),
            "draft_wait": float(msg.latency_draft_wait_ms),
            "total": float(msg.latency_total_ms),
            "wait": float(msg.latency_wait_ms),
            "draft": float(msg.latency_draft_ms),
        },
        skew_ms={
            "skew_frame": float(msg.skew_frame_ms),
            "skew_clip": float(msg.skew_clip_ms),
            "clip_span": float(msg.clip_span_ms),
        },
        degraded=bool(msg.degraded),
        degraded_reason=str(msg.degraded_reason),
        ground_truth=ground_truth,
        alone=alone,
        bare=bare,
        frame_offset_ms=float(getattr(msg, "frame_offset_ms", float("nan"))),
        frame_offset_source=str(getattr(msg, "frame_offset_source", "")),
        true_offset_ms=None if true_offset_ns is None else true_offset_ns / 1e6,
    )


def reference_from_caption(msg: Any) -> Reference:
    """A reference run's final caption: its caption latency (the bare target's: preprocessing +
    prefill + decode) and those two parts."""
    return Reference(
        token_ids=tuple(int(t) for t in msg.token_ids),
        text=str(msg.text),
        caption_ms=float(msg.latency_caption_ms),
        target_forwards=int(msg.target_forwards),
        prefill_ms=float(msg.latency_prefill_ms),
        verify_ms=float(msg.latency_verify_ms),
    )


@dataclass
class OutputBag:
    """What a replay's output bag holds, read back."""

    path: Path
    rounds: list[RoundRecord]
    scenes: list[SceneInterval]
    counts: dict[str, int]  # topic -> messages
    drafts_per_stage: dict[int, int] = field(default_factory=dict)  # DraftTokens messages by stage
    degraded_drafts: int = 0
    commits: int = 0
    duplicate_finals: int = 0  # final captions repeated for a round already final
    non_final_captions: int = 0


def load_output(path: Path) -> OutputBag:
    """Read an output bag back into round records (ground truth and references attached)."""
    finals: dict[int, Any] = {}
    refs: dict[str, dict[int, Reference]] = {topic: {} for topic in REFERENCE_TOPICS}
    scenes: list[SceneInterval] = []
    counts: dict[str, int] = {}
    drafts: dict[int, int] = {}
    degraded_drafts = commits = duplicates = partial = 0
    for topic, msgtype, _t, msg in bagio.iter_messages(path):
        counts[topic] = counts.get(topic, 0) + 1
        if msgtype == VERIFIED_CAPTION_TYPE:
            if not msg.final:
                partial += topic not in refs
                continue
            if topic in refs:
                refs[topic][int(msg.round_id)] = reference_from_caption(msg)
            else:
                duplicates += int(msg.round_id) in finals
                finals[int(msg.round_id)] = msg
        elif msgtype == DRAFT_TYPE:
            drafts[int(msg.stage)] = drafts.get(int(msg.stage), 0) + 1
            degraded_drafts += bool(msg.degraded)
        elif msgtype == COMMIT_TYPE:
            commits += 1
        elif msgtype == GROUND_TRUTH_TYPE:
            scenes.append(
                SceneInterval(
                    int(msg.scene_index),
                    _stamp_ns(msg.start),
                    _stamp_ns(msg.end),
                    str(msg.caption),
                    int(msg.event_offset_ns),
                )
            )
    scenes.sort(key=lambda s: (s.start_ns, s.index))
    rounds = []
    for rid in sorted(finals, key=lambda r: (_stamp_ns(finals[r].header.stamp), r)):
        msg = finals[rid]
        scene = rpt.match_ground_truth(_stamp_ns(msg.header.stamp), scenes)
        # A video-derived bag has scenes without captions: no ground truth to score against.
        truth = scene.caption if scene is not None and scene.caption else None
        rounds.append(
            record_from_caption(
                msg,
                truth,
                refs[ALONE_TOPIC].get(rid),
                refs[BARE_TOPIC].get(rid),
                None if scene is None else scene.event_offset_ns,
            )
        )
    return OutputBag(Path(path), rounds, scenes, counts, drafts, degraded_drafts, commits, duplicates, partial)


def scene_captions(rounds: list[RoundRecord], scenes: list[SceneInterval]) -> list[dict[str, Any]]:
    """Per ground-truth scene: its caption and the final captions of the rounds inside it."""
    out = []
    for scene in scenes:
        inside = [r for r in rounds if scene.contains_event_time(r.stamp_ns)]
        out.append(
            {
                "index": scene.index,
                "ground_truth": scene.caption,
                "rounds": [
                    {
                        "round_id": r.round_id,
                        "stamp_ns": r.stamp_ns,
                        "caption": r.text,
                        "frame_offset_ms": r.frame_offset_ms if math.isfinite(r.frame_offset_ms) else None,
                        "frame_offset_source": r.frame_offset_source,
                        "frame_offset_error_ms": r.frame_offset_error_ms,
                    }
                    for r in inside
                ],
                "last_caption": inside[-1].text if inside else None,
            }
        )
    return out


def build_report(output: OutputBag, run: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The report.json document."""
    return {
        "schema": SCHEMA,
        "run": dict(run),
        "input": dict(inputs),
        "output": {
            "bag": str(output.path),
            "topics": output.counts,
            "drafts_per_stage": {str(k): v for k, v in sorted(output.drafts_per_stage.items())},
            "degraded_drafts": output.degraded_drafts,
            "commits": output.commits,
            "growing_captions": output.non_final_captions,
            "duplicate_finals": output.duplicate_finals,
        },
        "summary": rpt.summarise(output.rounds),
        "rounds": [rpt.round_to_dict(r) for r in output.rounds],
        "scenes": scene_captions(output.rounds, output.scenes),
    }


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None so report.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(report: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------- plots


def write_plots(rounds: list[RoundRecord], out_dir: Path) -> list[str]:
    """PNG figures (Agg backend): caption latency and its parts, acceptance, skew, speed against the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    if not rounds:
        return written
    x = list(range(len(rounds)))
    labels = [str(i) for i in x]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)

    # Caption latency and its parts (prefill, verify, draft wait, other = the rest): they add up to
    # the total, so a stack taller or shorter than the dot is a bug, not a gap.
    fig, ax = plt.subplots(figsize=(8, 3.5))
    parts = [r.caption_parts_ms for r in rounds]
    bottom = [0.0] * len(rounds)
    for comp in spd.CAPTION_PARTS:
        vals = [_finite_or_zero(p[comp]) for p in parts]
        ax.bar(x, vals, 0.6, bottom=bottom, label=comp.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.plot(x, [r.latency_ms["caption"] for r in rounds], "k.", label="caption latency")
    ax.set(xlabel="round", ylabel="ms", title="Caption latency per round (inputs complete -> final caption)")
    ax.set_xticks(x, labels)
    ax.legend(fontsize=7)
    save(fig, "latency.png")

    fig, ax = plt.subplots(figsize=(8, 3.0))
    n_stages = max(len(r.drafted_per_stage) for r in rounds)
    for s in range(n_stages):
        vals = [rpt.round_acceptance(r)[s] if s < len(r.drafted_per_stage) else None for r in rounds]
        ax.plot(
            x,
            [float("nan") if v is None else v for v in vals],
            "o-",
            label=rpt.STAGE_NAMES[s] if s < len(rpt.STAGE_NAMES) else f"stage {s}",
        )
    ax.set(xlabel="round", ylabel="accepted / drafted", ylim=(-0.05, 1.05), title="Acceptance per stage")
    ax.set_xticks(x, labels)
    ax.legend(fontsize=7)
    save(fig, "acceptance.png")

    fig, ax = plt.subplots(figsize=(8, 3.0))
    for comp, label in (("skew_frame", "refiner frame − T"), ("skew_clip", "newest clip frame − T")):
        ax.plot(x, [r.skew_ms[comp] for r in rounds], "o-", label=label)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set(xlabel="round", ylabel="ms", title="Alignment skew")
    ax.set_xticks(x, labels)
    ax.legend(fontsize=7)
    save(fig, "skew.png")

    if any(r.reference is not None for r in rounds):
        fig, ax = plt.subplots(figsize=(8, 3.0))
        w = 0.27
        nan = float("nan")
        alone_label = "verifier alone" if any(r.alone is not None for r in rounds) else "reference"
        ax.bar([i - w for i in x], [r.latency_ms["caption"] for r in rounds], w, label="cascade")
        if any(r.alone is not None for r in rounds):
            ax.bar(x, [r.alone.caption_ms if r.alone else nan for r in rounds], w, label=alone_label)
        ax.bar(
            [i + w for i in x],
            [r.bare.caption_ms if r.bare else nan for r in rounds],
            w,
            label="target bare (no ROS)",
            color="grey",
        )
        sp = rpt.speed(rounds)
        ratio = "–" if sp["speedup_p50"] is None else f"{sp['speedup_p50']:.2f}x"
        ref = "the verifier alone" if sp["reference"] == "verifier-alone" else "the target bare"
        ax.set(xlabel="round", ylabel="ms", title=f"Caption latency: cascade vs {ref} (p50 speed-up {ratio})")
        ax.set_xticks(x, labels)
        ax.legend(fontsize=7)
        save(fig, "speedup.png")
    return written


def _finite_or_zero(v: float) -> float:
    """A bar's height: NaN (no caption latency) draws nothing; a negative rest draws nothing either."""
    return float(v) if math.isfinite(float(v)) and v > 0 else 0.0


# -------------------------------------------------------------------------------------- markdown


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.{nd}f}"
    return str(v)


def _offset_cell(r: Mapping[str, Any]) -> str:
    """The clock offset a round picked its frames with, where it came from, and its error against the
    bag's ground truth (when the bag has one)."""
    return rpt.offset_text(r.get("frame_offset_ms"), r.get("frame_offset_source") or "", r.get("frame_offset_error_ms"))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def throughput_line(tp: Mapping[str, Any] | None) -> str | None:
    """One line: final captions per second of playback, cascade and verifier alone, and their ratio."""
    if not tp or tp["cascade"]["captions_per_s"] is None:
        return None

    def one(d: Mapping[str, Any]) -> str:
        return f"{d['captions_per_s']:.2f} ({d['finals']} finals in {d['playback_s']:.1f} s)"

    line = f"final captions per second of playback: cascade {one(tp['cascade'])}"
    if tp.get("alone") and tp["alone"]["captions_per_s"] is not None:
        line += f", verifier alone {one(tp['alone'])}"
        if tp.get("ratio") is not None:
            line += f": {tp['ratio']:.2f}x"
    return line


def _speed_lines(sp: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """The speed paragraph: caption latency, cascade vs the reference vs the bare target, the one
    ratio, and whether the reference was honest."""
    if not sp["reference"]:
        return ["", "No reference run (no rounds, or `--baseline none`): no speed-up figure."]
    alone = sp["reference"] == "verifier-alone"
    ref_name = "verifier alone" if alone else "target bare (the reference)"
    lines = [
        "",
        f"**Caption latency** (the round's inputs complete -> its final caption; `core/speed.py`, as "
        f"`demo`) on the {sp['rounds']} rounds both runs finished:",
        "",
        "| | p50 ms | p95 ms | mean ms | rounds |",
        "|---|---|---|---|---|",
    ]
    rows = [("cascade", sp["caption_latency_cascade"]), (ref_name, sp["caption_latency_alone"])]
    if alone:
        rows.append(("target bare (no ROS, same clips)", sp["target_bare"]))
    for name, d in rows:
        lines.append(f"| {name} | {_fmt(d['p50_ms'])} | {_fmt(d['p95_ms'])} | {_fmt(d['mean_ms'])} | {d['n']} |")
    lines += [
        "",
        f"Speed-up over the {'verifier alone' if alone else 'target bare'} (p50 caption latency): "
        f"**{_fmt(sp['speedup_p50'], 2)}x** (p95: {_fmt(sp['speedup_p95'], 2)}x).",
    ]
    margin = _fmt(100 * sp["honest_margin"], 0)
    if not alone:
        lines += [
            "",
            "The reference is the target's bare greedy decode of each round's clip, timed without ROS "
            "after the cascade had stopped (`--baseline offline`): no verifier node ran alone, and the "
            "cascade's verifier shared the machine with the drafter and refiner, which the bare decode did not.",
        ]
    elif sp["reference_honest"] is None and sp["alone_over_bare"] is not None:
        lines += [
            "",
            f"The target's bare decode took {_fmt(1 / sp['alone_over_bare'], 2)}x the verifier alone's time on the "
            "same clips: the floor itself was slowed (it is timed after playback, in this process), so whether "
            "the verifier alone was an honest reference is unknown.",
        ]
    elif sp["reference_honest"] is None:
        lines += [
            "",
            "The target's bare cost was not measured: whether the verifier alone was an honest reference is unknown.",
        ]
    elif sp["reference_honest"]:
        lines += [
            "",
            f"The verifier alone ran at {_fmt(sp['alone_over_bare'], 2)}x the target's bare cost on the same "
            f"clips (within {margin} %): an honest reference.",
        ]
    else:
        lines += [
            "",
            f"**Not an honest reference:** the verifier alone took {_fmt(sp['alone_over_bare'], 2)}x the "
            f"target's bare cost on the same clips, more than {margin} % over. Something other than the "
            "target model slowed it (the player, the executor, a shared core), so the speed-up above "
            "flatters the cascade; do not quote it.",
        ]
    lines += [
        "",
        f"Verifier forwards: cascade {sp['cascade_forwards']}, reference {sp['reference_forwards']} "
        f"({_fmt(sp['tokens_per_forward'], 2)} caption tokens per cascade forward); same tokens as the "
        f"reference in {_fmt(None if sp['lossless_match'] is None else 100 * sp['lossless_match'], 0)} % of "
        f"rounds.",
    ]
    by_len = sp.get("by_caption_length") or {}
    if len(by_len) > 1:
        lines += [
            "",
            "By caption length (both runs pay the prefill; the drafts save decode steps):",
            "",
            "| caption tokens | rounds | cascade p50 [ms] | reference p50 [ms] | speed-up p50 |",
            "|---|---|---|---|---|",
        ]
        for n, d in by_len.items():
            lines.append(
                f"| {n} | {d['caption_latency_cascade']['n']} | {_fmt(d['caption_latency_cascade']['p50_ms'])} | "
                f"{_fmt(d['caption_latency_alone']['p50_ms'])} | {_fmt(d['speedup_p50'], 2)}x |"
            )
    tp_line = throughput_line(run.get("throughput"))
    if tp_line:
        lines += [
            "",
            tp_line[0].upper() + tp_line[1:] + ". When rounds open faster than the verifier captions them, it "
            "captions the newest and drops the rest: this is its capacity; when they open slower, the "
            "stream sets the rate and both runs show the same figure.",
        ]
    if alone and (run.get("baseline") or {}).get("kind") == "pass":
        lines += [
            "",
            "The verifier alone is a second pass of the same bag through the verifier node alone (drafts "
            "off), under the same player, before the cascade's; its captions are in `verifier_alone/`.",
        ]
    return lines


def render_markdown(report: Mapping[str, Any], figures: list[str]) -> str:
    run, inp, summ = report["run"], report["input"], report["summary"]
    lines = [f"# Replay report: `{inp.get('bag', '?')}`", ""]
    lines += ["## Run", "", "| | |", "|---|---|"]
    for key in ("mode", "pacing", "remaps", "started_utc", "wall_s"):
        if key in run:
            lines.append(f"| {key} | {_md_escape(str(run[key]))} |")
    for name, desc in (run.get("models") or {}).items():
        lines.append(f"| model {name} | {_md_escape(str(desc))} |")
    for name, ver in (run.get("versions") or {}).items():
        lines.append(f"| {name} | {ver} |")
    losses = run.get("input_losses")
    if losses is not None:
        lost = {f"{node}/{name}": n for node, per in losses.items() for name, n in per.items() if n}
        lines += [
            "",
            "Records lost on the way to the nodes: "
            + (
                "none (every node received every event packet and image published)."
                if not lost
                else ", ".join(f"{k} {v}" for k, v in lost.items()) + "."
            ),
        ]
    lines.append("")

    lines += [
        "## Input",
        "",
        f"Duration {_fmt(inp.get('duration_s'), 2)} s.",
        "",
        "| topic | type | published as | records | corrupt |",
        "|---|---|---|---|---|",
    ]
    skipped = inp.get("skipped_topics") or {}
    for name, t in (inp.get("topics") or {}).items():
        pub = (
            t["published_as"]
            if t.get("played", t.get("publishable"))
            else f"(skipped: {skipped[name]})"
            if name in skipped
            else "(skipped: type unknown here)"
        )
        lines.append(f"| {name} | {t['type']} | {pub} | {t['count']} | {t['corrupt']} |")
    missing = inp.get("missing_streams") or {}
    if missing:
        lines += ["", "**Missing streams:**", ""] + [f"* `{s}`: {why}" for s, why in missing.items()]
    if inp.get("unknown_types"):
        lines += [
            "",
            "**Unknown message types (skipped):** "
            + ", ".join(f"`{k}` [{v}]" for k, v in inp["unknown_types"].items()),
        ]
    if inp.get("corrupt_records"):
        lines += [
            "",
            "**Corrupt records (skipped):** " + ", ".join(f"`{k}`: {v}" for k, v in inp["corrupt_records"].items()),
        ]
    if inp.get("storage_error"):
        lines += ["", f"**Storage error (reading stopped early):** {inp['storage_error']}"]
    for topic, ev in (inp.get("events") or {}).items():
        if "error" in ev:
            lines += ["", f"Events on `{topic}`: not decodable ({_md_escape(ev['error'])})."]
            continue
        lines += [
            "",
            f"Events on `{topic}` ({ev['encoding']}, {ev['packets']} packets): "
            f"OFF {ev['off']}, ON {ev['on']}, trigger rise {ev['trigger_rise']}, fall {ev['trigger_fall']}, "
            f"sum t {ev['sum_t_us']} µs, mean rate {_fmt(ev['mean_rate_ev_s'], 0)} ev/s.",
        ]
    lines.append("")

    lines += [
        "## Summary",
        "",
        f"{summ['rounds']} rounds, modes {', '.join(summ['modes']) or '–'}, "
        f"{summ['tokens']} caption tokens, {summ['target_forwards']} verifier forwards.",
        "",
    ]
    lines += ["| stage | drafted | accepted | rate |", "|---|---|---|---|"]
    for stage, a in summ["acceptance"].items():
        lines.append(f"| {stage} | {a['drafted']} | {a['accepted']} | {_fmt(a['rate'], 3)} |")
    lines += _speed_lines(summ["speed"], run)
    parts = summ["caption_parts_ms"]
    lines += [
        "",
        "Where caption latency went, per round: prefill (clip preprocessing, encode, prompt) + verify "
        "(verifier passes) + draft wait (for drafts, once the clip was in) + other (the rest) = caption "
        "latency; the means add up, percentiles need not.",
        "",
        "| caption latency (ms) | p50 | p95 | p99 | mean |",
        "|---|---|---|---|---|",
    ]
    for comp in (*spd.CAPTION_PARTS, "caption"):
        d = parts[comp]
        name = "caption latency (total)" if comp == "caption" else comp.replace("_", " ")
        lines.append(f"| {name} | {_fmt(d['p50'])} | {_fmt(d['p95'])} | {_fmt(d['p99'])} | {_fmt(d['mean'])} |")
    lines += ["", "| other latencies (ms) | p50 | p95 | p99 | mean |", "|---|---|---|---|---|"]
    for comp, desc in (
        ("total", "round open -> final caption"),
        ("wait", "waiting for frames and drafts"),
        ("draft", "upstream model time of the drafts used"),
    ):
        d = summ["latency_ms"][comp]
        lines.append(
            f"| {comp} ({desc}) | {_fmt(d['p50'])} | {_fmt(d['p95'])} | {_fmt(d['p99'])} | {_fmt(d['mean'])} |"
        )
    lines += ["", "| abs skew (ms) | p50 | p95 | p99 | max |", "|---|---|---|---|---|"]
    for comp, d in summ["abs_skew_ms"].items():
        lines.append(f"| {comp} | {_fmt(d['p50'])} | {_fmt(d['p95'])} | {_fmt(d['p99'])} | {_fmt(d['max'])} |")
    deg = summ["degraded"]
    lines += [
        "",
        f"Degraded rounds: {deg['count']}"
        + ("" if not deg["reasons"] else " (" + "; ".join(f"{k}: {v}" for k, v in deg["reasons"].items()) + ")"),
    ]
    acc = summ["accuracy"]
    if acc["rounds"]:
        lines += [
            "",
            f"Caption accuracy on {acc['rounds']} rounds with ground truth: exact match "
            f"{_fmt(100 * acc['exact_match'], 0)} % (objects in any order "
            f"{_fmt(100 * acc['any_order_match'], 0)} %), word accuracy {_fmt(100 * acc['word_accuracy'], 0)} %"
            + (
                ""
                if acc["reference_exact_match"] is None
                else f" (the reference: exact {_fmt(100 * acc['reference_exact_match'], 0)} %)"
            )
            + ".",
        ]
    else:
        lines += ["", "No ground truth in the bag: caption accuracy not computed."]

    lines += [
        "",
        "## Rounds",
        "",
        "| # | T − bag start (s) | caption | ground truth | accepted/drafted per stage | caption latency ms "
        "(cascade / alone / bare) | skew frame/clip ms | clock offset ms (source, error) | degraded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(report["rounds"]):
        acc_txt = ", ".join(f"{a}/{d}" for a, d in zip(r["accepted_per_stage"], r["drafted_per_stage"]))
        skew = f"{_fmt(r['skew_ms']['skew_frame'])} / {_fmt(r['skew_ms']['skew_clip'])}"
        deg_txt = _md_escape(r["degraded_reason"] or "yes") if r["degraded"] else ""
        t_rel = (r["stamp_ns"] - int(inp.get("start_ns") or 0)) / 1e9
        alone, bare = r["verifier_alone"], r["target_bare"]
        lat = (
            f"{_fmt(r['latency_ms']['caption'])} / {_fmt(alone and alone['caption_ms'])} / "
            f"{_fmt(bare and bare['caption_ms'])}"
        )
        lines.append(
            f"| {i} | {t_rel:.3f} | {_md_escape(r['caption'])} | "
            f"{_md_escape(r['ground_truth'] or '–')} | {acc_txt} | {lat} | {skew} | {_offset_cell(r)} | {deg_txt} |"
        )
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(output: OutputBag, run: Mapping[str, Any], inputs: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write report.json, report.md and the PNGs into ``out_dir``; returns the report dict."""
    report = build_report(output, run, inputs)
    figures = write_plots(output.rounds, out_dir)
    report["figures"] = figures
    write_json(report, out_dir / "report.json")
    (out_dir / "report.md").write_text(render_markdown(_json_safe(report), figures))
    return report
