"""Messages the stages publish, built from core results: drafts, commits, captions, RViz outputs,
diagnostics. Pure functions of their inputs (no node, no publishing)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from cascade_sd_ros.core.align.offset_tracker import SOURCES as OFFSET_SOURCES
from cascade_sd_ros.core.align.offset_tracker import AppliedOffset
from cascade_sd_ros.core.modes import ModeRules
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec.text_drafts import TextCodec, rebase_text_draft
from cascade_sd_ros.core.stage_model import Vocabulary
from cascade_sd_ros.core.stages.verifier import CaptionUpdate
from cascade_sd_ros.ros.image import numpy_to_image
from cascade_sd_ros.ros.stamps import ns_to_stamp, stamp_to_ns

MAX_DRAFT_TEXT = 4096  # [characters] of a text draft read (a draft is a few words; a flood is refused)


def _f32(x: float) -> float:
    return float(x) if x is not None else math.nan


def draft_msg(
    round_id: int,
    t_ns: int,
    frame_id: str,
    draft: Draft,
    vocab: Vocabulary,
    text: str = "",
    start_position: int | None = None,
) -> Any:
    """``vocab``: the publishing stage's vocabulary, which says what ``token_ids`` mean. A stage of
    another vocabulary than the target's adds ``text`` (what the draft adds, ``draft_text``) and the
    ``start_position`` in the target's tokens (:class:`~cascade_sd_ros.core.spec.text_drafts.CommitTexts`)."""
    from cascade_sd_ros.msg import DraftTokens

    msg = DraftTokens()
    ns_to_stamp(t_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.round_id = int(round_id)
    msg.stage = int(draft.stage)
    msg.commit_seq = int(draft.commit_seq)
    msg.start_position = int(draft.start_position if start_position is None else start_position)
    msg.token_ids = [int(t) for t in draft.token_ids]
    msg.confidence = [float(c) for c in draft.confidence]
    msg.branch_token_ids = [int(t) for t, _ in draft.branches]
    msg.branch_parents = [int(p) for _, p in draft.branches]
    msg.upstream_drafted = int(draft.upstream_drafted)
    msg.upstream_accepted = int(draft.upstream_accepted)
    msg.compute_ms = float(draft.compute_ms)
    msg.degraded = bool(draft.degraded)
    msg.degraded_reason = draft.degraded_reason
    msg.vocab_fingerprint = vocab.fingerprint
    msg.vocab_summary = vocab.summary
    msg.draft_text = text
    return msg


def event_features_msg(
    round_id: int, t_ns: int, frame_id: str, rows: int, dim: int, data: Sequence[float], fingerprint: str
) -> Any:
    """EventFeatures for one round: ``rows`` x ``dim`` row-major ``data`` made by the event encoder
    named ``fingerprint``, stamped with the round's sensor time."""
    from cascade_sd_ros.msg import EventFeatures

    msg = EventFeatures()
    ns_to_stamp(t_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.round_id = int(round_id)
    msg.rows = int(rows)
    msg.dim = int(dim)
    msg.data = np.asarray(data, dtype=np.float32)
    msg.encoder_fingerprint = fingerprint
    return msg


class DraftMessageError(ValueError):
    """A DraftTokens that cannot be a draft (lengths disagree, ids negative, unknown stage)."""


def draft_from_msg(msg: Any, expected_stage: int | None = None, vocab_size: int | None = None) -> Draft:
    tokens = tuple(int(t) for t in msg.token_ids)
    conf = tuple(float(c) for c in msg.confidence)
    if not tokens:
        raise DraftMessageError("DraftTokens has no tokens")
    if len(conf) not in (0, len(tokens)):
        raise DraftMessageError(f"DraftTokens has {len(tokens)} tokens but {len(conf)} confidences")
    if any(t < 0 for t in tokens):
        raise DraftMessageError("DraftTokens has negative token ids")
    if vocab_size is not None and max(tokens) >= vocab_size:
        raise DraftMessageError(f"DraftTokens has token id {max(tokens)} outside the vocabulary of {vocab_size}")
    if any(not (0.0 <= c <= 1.0) for c in conf):  # also rejects NaN
        raise DraftMessageError("DraftTokens confidences must lie in [0, 1]")
    if msg.stage not in (0, 1) or (expected_stage is not None and msg.stage != expected_stage):
        raise DraftMessageError(f"DraftTokens stage {msg.stage} not accepted here (want {expected_stage})")
    branches = _branches_from_msg(msg, len(tokens), vocab_size)
    return Draft(
        stage=int(msg.stage),
        commit_seq=int(msg.commit_seq),
        start_position=int(msg.start_position),
        token_ids=tokens,
        confidence=conf,
        branches=branches,
        upstream_drafted=int(msg.upstream_drafted),
        upstream_accepted=int(msg.upstream_accepted),
        compute_ms=float(msg.compute_ms),
        degraded=bool(msg.degraded),
        degraded_reason=str(msg.degraded_reason),
    )


MAX_BRANCH_NODES = 512  # a draft tree's extra nodes at most (the verifier feeds them all in one forward)


def _branches_from_msg(msg: Any, chain: int, vocab_size: int | None) -> tuple[tuple[int, int], ...]:
    """A DraftTokens' tree nodes (token, parent), checked: equal lengths, ids in the vocabulary,
    each parent an earlier node or -1."""
    tokens = [int(t) for t in msg.branch_token_ids]
    parents = [int(p) for p in msg.branch_parents]
    if len(tokens) != len(parents):
        raise DraftMessageError(f"DraftTokens has {len(tokens)} branch tokens but {len(parents)} branch parents")
    if len(tokens) > MAX_BRANCH_NODES:
        raise DraftMessageError(f"DraftTokens has {len(tokens)} branch nodes, more than {MAX_BRANCH_NODES}")
    if any(t < 0 or (vocab_size is not None and t >= vocab_size) for t in tokens):
        raise DraftMessageError("DraftTokens has a branch token id outside the vocabulary")
    for i, p in enumerate(parents):
        if not -1 <= p < chain + i:
            raise DraftMessageError(f"DraftTokens branch node {i} follows node {p}, not an earlier node or -1")
    return tuple(zip(tokens, parents))


def commit_msg(u: CaptionUpdate, frame_id: str, vocab: Vocabulary, text: str = "") -> Any:
    """``vocab``: the verifier's vocabulary, which says what ``token_ids`` mean; ``text``: those ids
    decoded, for upstream stages of another vocabulary (they draft on from the text)."""
    from cascade_sd_ros.msg import Commit

    msg = Commit()
    ns_to_stamp(u.t_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.round_id = int(u.round_id)
    msg.commit_seq = int(u.commit_seq)
    msg.token_ids = [int(t) for t in u.token_ids]
    msg.accepted = int(u.accepted)
    msg.drafted = int(u.drafted)
    msg.accepted_stage = int(u.accepted_stage)
    msg.final = bool(u.final)
    msg.vocab_fingerprint = vocab.fingerprint
    msg.vocab_summary = vocab.summary
    msg.text = text
    return msg


def draft_from_text_msg(
    msg: Any,
    committed: Sequence[int],
    codec: TextCodec,
    expected_stage: int | None = None,
    max_chars: int = MAX_DRAFT_TEXT,
) -> Draft | None:
    """A DraftTokens of another vocabulary read through its text: this stage's own ids continuing
    ``committed`` (its committed ids for the round), laid after the first ``start_position`` of them
    (:func:`~cascade_sd_ros.core.spec.text_drafts.rebase_text_draft`). None when the draft adds nothing
    beyond ``committed`` or contradicts it (stale); DraftMessageError when the message is malformed."""
    text = str(msg.draft_text)
    if len(text) > max_chars:
        raise DraftMessageError(f"DraftTokens draft_text has {len(text)} characters, more than {max_chars}")
    if msg.stage not in (0, 1) or (expected_stage is not None and msg.stage != expected_stage):
        raise DraftMessageError(f"DraftTokens stage {msg.stage} not accepted here (want {expected_stage})")
    ids = rebase_text_draft(codec, committed, int(msg.start_position), text)
    if not ids:
        return None
    # the publisher's confidences are per its own tokens, which this stage cannot map onto its ids:
    # each re-tokenised id gets the draft's least confident one (what the lossy modes' rules read)
    conf = [float(c) for c in msg.confidence if 0.0 <= float(c) <= 1.0]
    return Draft(
        stage=int(msg.stage),
        commit_seq=int(msg.commit_seq),
        start_position=len(committed),
        token_ids=tuple(ids),
        confidence=(min(conf),) * len(ids) if conf else (),
        upstream_drafted=int(msg.upstream_drafted),
        upstream_accepted=int(msg.upstream_accepted),
        compute_ms=float(msg.compute_ms),
        degraded=bool(msg.degraded),
        degraded_reason=str(msg.degraded_reason),
    )


def message_vocabulary(msg: Any) -> Vocabulary:
    """The vocabulary a DraftTokens or Commit announces (fingerprint "" where it announces none)."""
    fingerprint = str(msg.vocab_fingerprint)
    return Vocabulary(fingerprint, str(msg.vocab_summary) or ("unnamed" if fingerprint else "no vocabulary announced"))


def caption_msg(
    u: CaptionUpdate, text: str, rules: ModeRules, frame_id: str, frame_offset: AppliedOffset | None = None
) -> Any:
    """``frame_offset``: the offset the round picked its frames with (None: not known, NaN and no source)."""
    from cascade_sd_ros.msg import VerifiedCaption

    msg = VerifiedCaption()
    ns_to_stamp(u.t_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.round_id = int(u.round_id)
    msg.text = text
    msg.token_ids = [int(t) for t in u.token_ids]
    msg.final = bool(u.final)
    msg.mode = int(rules.number)
    msg.mode_name = rules.name
    msg.lossless = bool(rules.lossless)
    msg.drafted_per_stage = [int(x) for x in u.drafted_per_stage]
    msg.accepted_per_stage = [int(x) for x in u.accepted_per_stage]
    msg.target_forwards = int(u.target_forwards)
    msg.latency_total_ms = _f32(u.latency_total_ms)
    msg.latency_caption_ms = _f32(u.latency_caption_ms)
    msg.latency_wait_ms = _f32(u.latency_wait_ms)
    msg.latency_draft_wait_ms = _f32(u.latency_wait_ms - u.input_wait_ms)
    msg.latency_prefill_ms = _f32(u.latency_prefill_ms)
    msg.latency_verify_ms = _f32(u.latency_verify_ms)
    msg.latency_draft_ms = _f32(u.latency_draft_ms)
    msg.skew_frame_ms = _f32(u.skew_frame_ms)
    msg.skew_clip_ms = _f32(u.skew_clip_ms)
    msg.clip_span_ms = _f32(u.clip_span_ms)
    msg.degraded = bool(u.degraded)
    msg.degraded_reason = u.degraded_reason
    msg.frame_offset_ms = math.nan if frame_offset is None else _f32(frame_offset.at(u.t_ns) / 1e6)
    msg.frame_offset_source = "" if frame_offset is None else frame_offset.source
    return msg


def clock_offset_msg(applied: AppliedOffset, stamp_ns: int, frame_id: str) -> Any:
    """A ClockOffset for ``applied``, stamped (event clock) at ``stamp_ns`` with the offset there."""
    from cascade_sd_ros.msg import ClockOffset

    msg = ClockOffset()
    ns_to_stamp(max(0, int(stamp_ns)), msg.header.stamp)
    msg.header.frame_id = frame_id
    msg.offset_ns = int(applied.at(stamp_ns))
    msg.drift_ppm = _f32(applied.drift_ppm)
    msg.uncertainty_ms = _f32(applied.uncertainty_ns / 1e6)
    msg.confident = bool(applied.confident)
    msg.source = applied.source
    return msg


class ClockOffsetError(ValueError):
    """A ClockOffset a stage cannot apply (named in one line)."""


def applied_from_msg(msg: Any, max_abs_ns: int = 3600 * 10**9) -> AppliedOffset:
    """The AppliedOffset a ClockOffset carries; raises :class:`ClockOffsetError` for values no clock has."""
    offset = int(msg.offset_ns)
    drift = float(msg.drift_ppm)
    if abs(offset) > max_abs_ns:
        raise ClockOffsetError(f"ClockOffset.offset_ns {offset} is beyond ±{max_abs_ns} ns")
    if not math.isfinite(drift) or abs(drift) > 1000.0:
        raise ClockOffsetError(f"ClockOffset.drift_ppm {drift} is not a clock's (finite, within ±1000)")
    if msg.source not in OFFSET_SOURCES:
        raise ClockOffsetError(f"ClockOffset.source {msg.source!r} is not one of {list(OFFSET_SOURCES)}")
    sigma = float(msg.uncertainty_ms)
    return AppliedOffset(
        offset,
        drift,
        stamp_to_ns(msg.header.stamp),
        sigma * 1e6 if math.isfinite(sigma) else math.inf,
        bool(msg.confident),
        str(msg.source),
    )


def display_text(text: str, u: CaptionUpdate, rules: ModeRules) -> str:
    """What RViz shows: the caption, a '…' while it grows, and any degradation or lossy mode."""
    shown = text if text else "(no caption)"
    if not u.final:
        shown += " …"
    tags = []
    if not rules.lossless:
        tags.append(f"lossy: {rules.name}")
    if u.degraded:
        tags.append(f"degraded: {u.degraded_reason}")
    return shown + (f"  [{'; '.join(tags)}]" if tags else "")


def marker_msg(text: str, t_ns: int, frame_id: str, height_m: float = 0.15) -> Any:
    """A TEXT_VIEW_FACING marker a metre in front of the camera frame."""
    from visualization_msgs.msg import Marker

    m = Marker()
    ns_to_stamp(t_ns, m.header.stamp)
    m.header.frame_id = frame_id
    m.ns = "cascade_sd_caption"
    m.id = 0
    m.type = Marker.TEXT_VIEW_FACING
    m.action = Marker.ADD
    m.pose.position.z = 1.0
    m.pose.orientation.w = 1.0
    m.scale.z = float(height_m)
    m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 1.0, 1.0, 1.0
    m.text = text
    return m


def overlay_image(rgb: np.ndarray, text: str) -> np.ndarray:
    """The frame with the caption drawn on a dark band at the bottom (word-wrapped), uint8 RGB."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    img = PILImage.fromarray(np.ascontiguousarray(rgb), "RGB")
    # tiny frames get upscaled so the text stays legible
    scale = max(1, 256 // max(1, min(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), PILImage.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    chars = max(8, img.width // 7)
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > chars and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    band = 12 * len(lines) + 6
    draw.rectangle([0, img.height - band, img.width, img.height], fill=(0, 0, 0))
    for i, ln in enumerate(lines):
        draw.text((4, img.height - band + 3 + 12 * i), ln, fill=(255, 255, 255), font=font)
    return np.asarray(img, dtype=np.uint8)


def overlay_msg(rgb: np.ndarray, text: str, t_ns: int, frame_id: str) -> Any:
    msg = numpy_to_image(overlay_image(rgb, text), "rgb8")
    ns_to_stamp(t_ns, msg.header.stamp)
    msg.header.frame_id = frame_id
    return msg


def diagnostics_msg(
    stamp: Any, name: str, hardware_id: str, level: int, message: str, values: Mapping[str, object]
) -> Any:
    """One DiagnosticStatus in a DiagnosticArray; ``level`` is 0 OK, 1 WARN, 2 ERROR."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    st = DiagnosticStatus()
    st.level = bytes([int(level)])
    st.name = name
    st.hardware_id = hardware_id
    st.message = message
    st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = [st]
    return arr


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    if isinstance(v, Sequence) and not isinstance(v, str):
        return ",".join(_fmt(x) for x in v)
    return str(v)
