"""Bounded prompts: a question longer than ``max_prompt_chars`` (or than the model's context leaves
for text), or one carrying control characters, is refused with a reason and counted, by message
and by parameter alike; the question asked before stays."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from cascade_sd_ros.core.stage_model import load_stage_model  # noqa: E402

pytestmark = pytest.mark.ros

BAD = [
    ("x" * 1_000_000, "exceeds max_prompt_chars=240"),  # 1 MB
    ("a" * 241, "241 characters exceeds max_prompt_chars=240"),
    ("what\x1b[2J moves?", "control character U+001B"),  # a terminal escape
    ("what\x00moves", "control character U+0000"),
    ("ok\u202etxt.exe", "control character U+202E"),  # bidirectional override
    ("line one\nline two", "control character U+000A"),
    ("   ", "empty"),
]


@pytest.fixture
def verifier(rclpy_context: Any):  # noqa: ANN201
    from cascade_sd_ros.nodes.video_verifier import VideoVerifier

    node = VideoVerifier(
        context=rclpy_context,
        model=load_stage_model("tiny:0", "target"),
        parameter_overrides=[Parameter("prompt", value="what is here?")],
    )
    yield node
    node.close()
    node.destroy_node()


def test_the_limit_is_a_read_only_parameter(verifier: Any) -> None:
    assert verifier.get_parameter("max_prompt_chars").value == 240
    (res,) = verifier.set_parameters([Parameter("max_prompt_chars", value=10_000)])
    assert not res.successful and "read-only" in res.reason


@pytest.mark.parametrize(("text", "why"), BAD, ids=[b[1].split()[-1] for b in BAD])
def test_a_bad_prompt_message_is_refused_counted_and_the_old_question_stays(verifier: Any, text: str, why: str) -> None:
    before = verifier.prompts_in.malformed
    reason = verifier.prompt_refusal(text.strip())
    assert reason is not None and why in reason
    verifier._on_prompt(String(data=text))
    assert verifier.prompts_in.malformed == before + 1
    assert verifier.stage.question == "what is here?"
    verifier.stage.open_round(7)
    assert verifier.stage.record(7).question == "what is here?"


@pytest.mark.parametrize(("text", "why"), BAD, ids=[b[1].split()[-1] for b in BAD])
def test_a_bad_prompt_parameter_is_refused_with_the_reason(verifier: Any, text: str, why: str) -> None:
    (res,) = verifier.set_parameters([Parameter("prompt", value=text)])
    assert not res.successful and why in res.reason
    assert verifier.stage.question == "what is here?"


def test_good_prompts_pass_up_to_the_limit(verifier: Any) -> None:
    for text in ("what moves?", "  padded question \n", "qué se mueve, 何が動く?", "b" * 240):
        verifier._on_prompt(String(data=text))
        assert verifier.stage.question == text.strip()
    assert verifier.prompts_in.malformed == 0


def test_the_models_context_caps_the_limit(rclpy_context: Any) -> None:
    """A limit above what the model can hold is capped by the context (tiny:0: 1024 positions, 32
    caption tokens, 40 media tokens, 16 of template: 936 bytes of text)."""
    from cascade_sd_ros.nodes.video_verifier import VideoVerifier

    node = VideoVerifier(
        context=rclpy_context,
        model=load_stage_model("tiny:0", "target"),
        parameter_overrides=[Parameter("max_prompt_chars", value=5000)],
    )
    try:
        assert node.prompt_refusal("c" * 936) is None
        assert "may not fit the model's context (936 tokens left" in node.prompt_refusal("c" * 937)
        # bytes, not characters, count against the context: 312 three-byte characters are 936 bytes
        assert node.prompt_refusal("何" * 312) is None and node.prompt_refusal("何" * 313) is not None
    finally:
        node.close()
        node.destroy_node()


class _Sent:
    """Stands in for a node's diagnostics publisher: keeps what it is given."""

    def __init__(self) -> None:
        self.msgs: list[Any] = []

    def publish(self, msg: Any) -> None:
        self.msgs.append(msg)


@pytest.mark.parametrize(
    "node_cls", ["event_drafter.EventDrafter", "frame_refiner.FrameRefiner", "video_verifier.VideoVerifier"]
)
def test_every_stage_refuses_alike_and_says_so_in_diagnostics(rclpy_context: Any, node_cls: str) -> None:
    """The refusals are counted in each stage's own diagnostics (the refiner and the verifier once
    left ``prompts.*`` out, and a reader saw "0" for a key that was never sent)."""
    import importlib

    module, cls = node_cls.split(".")
    role = {"EventDrafter": "drafter", "FrameRefiner": "refiner", "VideoVerifier": "target"}[cls]
    node = getattr(importlib.import_module(f"cascade_sd_ros.nodes.{module}"), cls)(
        context=rclpy_context, model=load_stage_model("tiny:0", role)
    )
    try:
        question = node.stage.question
        node._on_prompt(String(data="z" * 1_000_000))
        node._on_prompt(String(data="bell\x07"))
        assert node.prompts_in.malformed == 2 and node.stage.question == question
        node.pub_diag = sent = _Sent()
        node.publish_diagnostics()
        (status,) = sent.msgs[0].status
        values = {kv.key: kv.value for kv in status.values}
        assert values["prompts.malformed"] == "2" and values["prompts.received"] == "2", values
    finally:
        node.close()
        node.destroy_node()
