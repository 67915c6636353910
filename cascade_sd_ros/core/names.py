"""The package's vocabulary, said once: stage ids and names, node names, topic names, decoding
modes, stamp arithmetic. ROS-free and light (standard library only: the command line's fast paths
import it), so the core, the nodes, the tools and the tests all import it from here instead of
spelling it again.
"""

from __future__ import annotations

# --- stages ---------------------------------------------------------------------------------------
#: ``DraftTokens.stage`` of the two upstream stages; ``Commit.accepted_stage`` when the verifier
#: decoded alone is :data:`STAGE_NONE`. :data:`STAGE_HEAD` is the verifier's own draft head (issue
#: 17): it publishes no DraftTokens, but ``Commit.accepted_stage`` and the per-stage counts of
#: ``VerifiedCaption`` (``drafted_per_stage``/``accepted_per_stage``, :data:`NUM_DRAFT_SOURCES` long)
#: name it by this index.
STAGE_DRAFTER, STAGE_REFINER, STAGE_HEAD = 0, 1, 2
NUM_UPSTREAM_STAGES = 2
NUM_DRAFT_SOURCES = 3
STAGE_NONE = 255
STAGE_NAMES: dict[int, str] = {STAGE_DRAFTER: "drafter", STAGE_REFINER: "refiner", STAGE_HEAD: "head"}

#: The three stages by key, their model roles (zoo folder names, ``load_stage_model``) and nodes.
STAGES: tuple[str, ...] = ("drafter", "refiner", "verifier")
ROLE_OF_STAGE: dict[str, str] = {"drafter": "drafter", "refiner": "refiner", "verifier": "target"}
NODE_OF_STAGE: dict[str, str] = {"drafter": "event_drafter", "refiner": "frame_refiner", "verifier": "video_verifier"}
#: Where parameter overrides go: every stage node ("common") or one node by name.
PARAM_TARGETS: tuple[str, ...] = ("common", *NODE_OF_STAGE.values())


def stage_name(stage: int) -> str:
    """``DraftTokens.stage`` in words (an unknown id says so rather than failing)."""
    return STAGE_NAMES.get(stage, f"stage {stage}")


# --- topics (relative, so a namespace and remaps apply) -------------------------------------------
TOPIC_EVENTS = "events"
TOPIC_IMAGE = "image"
TOPIC_PROMPT = "prompt"
TOPIC_DRAFTS_DRAFTER = "drafter/drafts"
TOPIC_DRAFTS_REFINER = "refiner/drafts"
TOPIC_FEATURES = "drafter/features"  # EventFeatures: the event tokens of each round, for the verifier's draft head
TOPIC_COMMIT = "commit"
TOPIC_CAPTION = "caption"
TOPIC_MARKER = "caption_marker"
TOPIC_OVERLAY = "caption_image"
TOPIC_CLOCK_OFFSET = "clock_offset"  # ClockOffset, latched: the event-to-RGB offset the drafter measured
TOPIC_DIAGNOSTICS = "/diagnostics"

# --- decoding modes -------------------------------------------------------------------------------
#: ``VerifiedCaption.mode`` by name (``core/modes.py`` gives each its acceptance rules).
MODES: dict[str, int] = {"lossless-greedy": 0, "lossless-sample": 1, "pyramid": 2, "cascade": 3}

# --- time -----------------------------------------------------------------------------------------
NS_PER_S = 1_000_000_000


def stamp_ns(sec: int, nanosec: int) -> int:
    """A ``builtin_interfaces/Time``'s two fields (rclpy's or a bag reader's) -> ns, unchecked;
    ``ros.stamps.stamp_to_ns`` checks what a sensor stamp must be."""
    return int(sec) * NS_PER_S + int(nanosec)


def split_ns(t_ns: int) -> tuple[int, int]:
    """ns -> (sec, nanosec) of a ``builtin_interfaces/Time``."""
    sec, nanosec = divmod(int(t_ns), NS_PER_S)
    return sec, nanosec
