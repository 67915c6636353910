"""lossless-sample through the real nodes over DDS: an EventDrafter and a VideoVerifier (in-process
rclpy nodes on one executor, as the one-process pipeline runs them) fed event packets and frames
over topics; drafts, commits and captions travel as messages. The first caption token keeps the
target's distribution (seeded chi-square at p = 1e-6, as test_verifier_sampling does for the round
machinery alone), and a verifier that trusts drafts is rejected by the same statistic.

Each round is driven by conditions, never by clocks: the packet that opens round ``T`` on the
drafter goes out, the verifier's draft counter shows the draft arrived over DDS, then the frame that
completes the round's clip goes out, and the final caption is waited for. Every round therefore
checks a draft (the test asserts it), and the drafter proposes the target's least likely token with
full confidence, so most samples come from the residual, where a wrong rule would show.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch
from test_spec_sampling import VOCAB, _chi2_rejects, _first_token_probs

pytest.importorskip("rclpy")

from cascade_sd_ros.core.events import CD_DTYPE, Evt3Encoder  # noqa: E402
from cascade_sd_ros.core.modes import mode_rules  # noqa: E402
from cascade_sd_ros.core.spec import StageContext  # noqa: E402
from cascade_sd_ros.core.spec.testing import ScriptedDrafter, TableLM  # noqa: E402
from cascade_sd_ros.core.stage_model import StageModel, tiny_vocabulary  # noqa: E402
from cascade_sd_ros.ros.stamps import ns_to_stamp  # noqa: E402
from cascade_sd_ros.tools.pipeline import Pipeline, PipelineConfig, build_pipeline  # noqa: E402

pytestmark = pytest.mark.ros

CTX = StageContext((1, 5, 6, 3), None, "text")
SIZE = 8  # [px] sensor and frames
BASE_NS = 100_000_000_000  # a multiple of the period: round times are multiples of it
PERIOD_NS = 10_000_000  # the smallest round_period a node takes
AFTER_NS = 6_000_000  # inputs of step k are stamped T_k + 6 ms: past T_k + slop, inside T_{k+1}'s clip
# rounds whose windows start before a stream does are opened by neither stage: events start at step
# 0 (the drafter's first round is T_2) and frames at step 1 (so is the verifier's; a round the
# verifier opened and the drafter never drafts would wait out draft_wait)
LEAD_IN = 2
N = 400
WAIT_S = 30.0


def _models(draft_token: Callable[[dict[tuple[int, ...], float]], int]) -> dict[str, StageModel]:
    """The target (a seeded table LM) and a drafter proposing ``draft_token(probs)`` every time."""
    torch.set_num_threads(1)
    target = TableLM(31, VOCAB, scale=1.5, name="target")
    target.prefill(CTX)
    token = draft_token(_first_token_probs(target, 1.0))
    drafter = ScriptedDrafter(lambda prefix, k: [token] * k, VOCAB, name="drafter")
    vocab = tiny_vocabulary(VOCAB)
    decode: Callable[[Sequence[int]], str] = lambda ids: " ".join(map(str, ids))  # noqa: E731
    return {
        "target": StageModel("target", target, 1, SIZE, lambda px, q: CTX, decode, vocab),
        "drafter": StageModel("drafter", drafter, 1, SIZE, lambda px, q: CTX, decode, vocab),
    }


def _config(mode: str) -> PipelineConfig:
    common = {"round_period": PERIOD_NS / 1e9, "max_new_tokens": 1, "sensor_reliability": "reliable"}
    return PipelineConfig(
        stages=("drafter", "verifier"),
        params={
            "common": common,
            "event_drafter": {"event_window": 0.005},
            # generous waits: every round has its draft and frames in hand before it starts (see above)
            "video_verifier": {
                "mode": mode,
                "frames": 1,
                "clip_duration": 0.005,
                "slop": 0.002,
                "max_wait": 10.0,
                "draft_wait": 10.0,
                "use_drafts": "drafter",
                "publish_overlay": False,
                "seed": 7,
            },
        },
    )


class _Sensor:
    """Publishes the event packet and the frame of each step, on the drafter's and verifier's inputs."""

    def __init__(self, pipeline: Pipeline) -> None:
        from event_camera_msgs.msg import EventPacket
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        node = pipeline.verifier  # any node of the context: only its publishers are used
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._events = node.create_publisher(EventPacket, "events", qos)
        self._images = node.create_publisher(Image, "image", qos)
        self._encoder = Evt3Encoder()
        self._event_type, self._image_type = EventPacket, Image
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            self._events.get_subscription_count() and self._images.get_subscription_count()
        ):
            time.sleep(0.01)
        assert self._events.get_subscription_count() and self._images.get_subscription_count(), "no subscribers"

    def events(self, t_ns: int) -> None:
        cd = np.zeros(2, CD_DTYPE)
        cd["x"], cd["y"], cd["p"] = (1, 2), (3, 4), (0, 1)
        cd["t"] = (t_ns - BASE_NS) // 1000 + np.arange(2)
        msg = self._event_type(encoding="evt3", height=SIZE, width=SIZE)
        msg.events = self._encoder.encode(cd)
        ns_to_stamp(t_ns, msg.header.stamp)  # the stamp of the packet's first event
        self._events.publish(msg)

    def frame(self, t_ns: int) -> None:
        msg = self._image_type(height=SIZE, width=SIZE, encoding="rgb8", step=3 * SIZE)
        msg.data = bytes(SIZE * SIZE * 3)
        ns_to_stamp(t_ns, msg.header.stamp)
        self._images.publish(msg)


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def _first_tokens(context: Any, models: dict[str, StageModel], mode: str, n: int) -> Counter:
    """Play ``n`` rounds; the first token of each final caption, counted."""
    pipeline = build_pipeline(_config(mode), context, models=models)
    pipeline.start()
    firsts: Counter = Counter()
    try:
        sensor = _Sensor(pipeline)
        verifier, collector = pipeline.verifier, pipeline.collector
        for k in range(n + LEAD_IN):
            t_ns = BASE_NS + k * PERIOD_NS + AFTER_NS  # T_k + 6 ms
            drafts = verifier.drafts_in.received + 1
            sensor.events(t_ns)  # opens round T_k on the drafter, which drafts it
            if k >= LEAD_IN:
                _wait(lambda n=drafts: verifier.drafts_in.received >= n, f"round {k}'s draft at the verifier")
            if k >= 1:
                sensor.frame(t_ns)  # completes round T_k's clip (the frame of step k - 1) at the verifier
            if k >= LEAD_IN:
                round_id = BASE_NS + k * PERIOD_NS
                assert collector.wait_final(round_id, timeout_s=WAIT_S), f"round {k}: no final caption"
                msg = collector.finals[round_id]
                assert list(msg.drafted_per_stage)[0] == 1, f"round {k}: the draft was not checked ({msg})"
                assert msg.mode_name == mode and not msg.degraded, msg
                firsts[(int(msg.token_ids[0]),)] += 1
    finally:
        pipeline.close()
    return firsts


def test_first_token_keeps_the_target_distribution_through_the_nodes(rclpy_context: Any) -> None:
    models = _models(lambda probs: min(probs, key=probs.get)[0])  # the target's least likely token
    probs = _first_token_probs(models["target"].adapter, 1.0)
    counts = _first_tokens(rclpy_context, models, "lossless-sample", N)
    rejected, stat, limit = _chi2_rejects(counts, probs, N)
    assert not rejected, f"chi-square {stat:.1f} > {limit:.1f}: {dict(counts)} vs {probs}"


def test_the_same_statistic_rejects_a_verifier_that_trusts_drafts(rclpy_context: Any, monkeypatch: Any) -> None:
    """Sanity of the test itself: a verifier node that accepts drafts without the p/q test (greedy
    acceptance of the target's top token, drafted every round) is caught over the same topics."""
    import cascade_sd_ros.core.stages.verifier as stages

    real = stages.verify_step

    def trusting(adapter: Any, committed: list[int], tail: list[int], **kw: Any) -> Any:
        if tail:
            kw["level"], kw["q"] = mode_rules("lossless-greedy").verifier, None  # ignores p/q
        return real(adapter, committed, tail, **kw)

    monkeypatch.setattr(stages, "verify_step", trusting)
    models = _models(lambda probs: max(probs, key=probs.get)[0])  # the target's most likely token
    probs = _first_token_probs(models["target"].adapter, 1.0)
    n = 100
    counts = _first_tokens(rclpy_context, models, "lossless-sample", n)
    rejected, stat, limit = _chi2_rejects(counts, probs, n)
    assert rejected, f"a trusting verifier passed as lossless-sample: chi-square {stat:.1f} <= {limit:.1f}"
