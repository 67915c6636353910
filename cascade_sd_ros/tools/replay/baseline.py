"""The target's bare cost on the replay's rounds: what an honest verifier-alone reference costs.

For every round the cascade finished, the verifier node keeps the exact clip and question it
conditioned on (``VideoVerifier.inputs``); they are captured as each final caption arrives. After
playback, with the cascade stopped, the same target model decodes each captured round greedily
on its own, in this process, without ROS (``target_only_greedy``: one forward per token), from
pixels as the node does (preprocessing counts). Each result goes into the output bag as a final
``VerifiedCaption`` on ``/replay/target_bare`` (mode_name "target-bare"; ``latency_caption_ms`` =
``latency_prefill_ms`` (preprocessing + prefill) + ``latency_verify_ms`` (decode)). The report sets
the verifier-alone pass beside it (``alone_over_bare``), and with ``--baseline offline`` (no
verifier-alone pass) it is the reference itself.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np
import torch

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.names import split_ns
from cascade_sd_ros.core.speed import bare_caption
from cascade_sd_ros.tools.replay.report import BARE_MODE

VERIFIED_CAPTION_TYPE = "cascade_sd_ros/msg/VerifiedCaption"


#: (round id, T [ns]) -> (clip frames uint8 [F, H, W, 3], question), or None when the round had none.
ClipSource = Callable[[int, int], "tuple[np.ndarray, str] | None"]


def verifier_clips(verifier: Any) -> ClipSource:
    """The clips a verifier node in this process kept (``VideoVerifier.inputs``)."""

    def clip(round_id: int, _t_ns: int) -> tuple[np.ndarray, str] | None:
        inputs = verifier.inputs.get(round_id)
        return None if inputs is None else (np.asarray(inputs.frames), inputs.question)

    return clip


class BareTarget:
    """Captures each finished round's clip while the replay runs, decodes them bare afterwards.

    ``clips`` gives a round's clip when its final caption arrives: the verifier node's own memory
    (:func:`verifier_clips`, one process) or the verifier's clip rule over the published frames
    (``replay_processes.BagClips``, stages in their own processes), whose ``on_record`` sees them.
    """

    def __init__(self, target: Any, max_new_tokens: int, clips: ClipSource) -> None:
        if target is None:
            raise ValueError("the bare target needs the target model")
        self._target = target  # StageModel (adapter, context builder, decode)
        self._max_new_tokens = int(max_new_tokens)
        self._clips = clips
        self._captured: dict[int, tuple[int, np.ndarray, str]] = {}  # round id -> (T [ns], frames, question)
        self._lock = threading.Lock()
        self.missing: list[int] = []  # final rounds without kept inputs (no frames: nothing to verify)

    def on_record(self, msgtype: str, raw: bytes) -> None:
        """A record the player published (player thread): a clip source that rebuilds clips sees it."""
        feed = getattr(self._clips, "on_record", None)
        if feed is not None:
            feed(msgtype, raw)

    def on_final(self, round_id: int, t_ns: int) -> None:
        """A final caption arrived (recorder thread): keep that round's clip and question."""
        clip = self._clips(round_id, t_ns)
        with self._lock:
            if clip is None:
                self.missing.append(round_id)
            else:
                self._captured[round_id] = (t_ns, clip[0], clip[1])

    @torch.inference_mode()
    def run(self) -> list[tuple[int, bytes]]:
        """Decode every captured round bare; (T [ns], serialised VerifiedCaption) in round order."""
        store = bagio.typestore()
        with self._lock:
            rounds = sorted(self._captured.items())
        out: list[tuple[int, bytes]] = []
        for round_id, (t_ns, frames, question) in rounds:
            bare = bare_caption(self._target, frames, question, self._max_new_tokens)
            tokens = bare.tokens
            # The first token comes from the prefill's logits; every later one costs one forward.
            forwards = max(0, len(tokens) - 1)
            msg = _caption(
                store,
                round_id,
                t_ns,
                tokens,
                self._target.decode(list(tokens)),
                forwards,
                bare.prefill_ms,
                bare.decode_ms,
            )
            out.append((t_ns, bytes(store.serialize_cdr(msg, VERIFIED_CAPTION_TYPE))))
        return out


def _caption(
    store: Any,
    round_id: int,
    t_ns: int,
    tokens: list[int],
    text: str,
    forwards: int,
    prefill_ms: float,
    decode_ms: float,
) -> Any:
    types = store.types
    stamp = types["builtin_interfaces/msg/Time"](sec=split_ns(t_ns)[0], nanosec=split_ns(t_ns)[1])
    return types[VERIFIED_CAPTION_TYPE](
        header=types["std_msgs/msg/Header"](stamp=stamp, frame_id=""),
        round_id=round_id,
        text=text,
        token_ids=np.asarray(tokens, np.int32),
        final=True,
        mode=0,
        mode_name=BARE_MODE,
        lossless=True,
        drafted_per_stage=np.zeros(0, np.uint32),
        accepted_per_stage=np.zeros(0, np.uint32),
        target_forwards=forwards,
        latency_total_ms=prefill_ms + decode_ms,
        latency_caption_ms=prefill_ms + decode_ms,
        latency_wait_ms=0.0,
        latency_draft_wait_ms=0.0,
        latency_prefill_ms=prefill_ms,
        latency_verify_ms=decode_ms,
        latency_draft_ms=0.0,
        skew_frame_ms=math.nan,
        skew_clip_ms=math.nan,
        clip_span_ms=math.nan,
        degraded=False,
        degraded_reason="",
        frame_offset_ms=math.nan,
        frame_offset_source="",
    )
