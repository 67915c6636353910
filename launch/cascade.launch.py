"""Start the cascade on a robot: event_drafter -> frame_refiner -> video_verifier.

    ros2 launch cascade_sd_ros cascade.launch.py device:=cuda target_model:=/models/Video-LLaVA-7B-hf \
        events_topic:=/event_camera/events image_topic:=/camera/image_raw

On CUDA every stage whose model fits runs the static-KV/CUDA-graphs path in bfloat16 by default
(``backend:=auto dtype:=auto``); ``backend:=transformers`` forces the transformers fallback.

Before any node starts, the launch checks from the model folders alone (no weights) that the stages
can cooperate and logs how drafts reach the target (token ids, or text re-tokenised where a stage's
vocabulary differs, ``draft_ids:=auto``); an upstream stage left on the shipped zoo under a real
``target_model``, or a vocabulary mix under ``draft_ids:=same-vocab``, stops the launch with one line
saying why and what to set.

Parameters come from config/cascade.yaml (``params_file``); the arguments below override it.
Topic remaps: ``events_topic`` and ``image_topic`` name the camera drivers' topics; everything the
stages exchange (drafts, commits, captions) stays under ``namespace``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "cascade_sd_ros"

ARGUMENTS = (
    ("namespace", "cascade_sd", "namespace of the three stages and their topics"),
    (
        "params_file",
        PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "cascade.yaml"]),
        "parameter file for the three stages",
    ),
    ("device", "cpu", "torch device of every stage (cpu, cuda, cuda:N)"),
    ("dtype", "auto", "model dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, float16, bfloat16"),
    (
        "backend",
        "auto",
        "what runs each stage's model: auto (cuda-graphs where it can, else transformers), "
        "cuda-graphs or transformers; each node logs its choice and why",
    ),
    ("target_model", "", "Video-LLaVA folder (empty: the shipped zoo)"),
    ("refiner_model", "", "refiner LLaVA folder (empty: the shipped zoo)"),
    ("drafter_model", "", "drafter LLaVA folder (empty: the shipped zoo)"),
    ("mode", "lossless-greedy", "lossless-greedy, lossless-sample, pyramid or cascade"),
    (
        "draft_ids",
        "auto",
        "how drafts reach the target: auto (ids where vocabularies agree, else text), text, "
        "or same-vocab (a vocabulary mix stops the launch)",
    ),
    ("use_sim_time", "false", "follow /clock (bag replay)"),
    (
        "autostart",
        "true",
        "each stage configures (loads and warms up its model) and activates itself; false: the stages "
        "wait unconfigured for a lifecycle manager (ros2 lifecycle set NODE configure, then activate)",
    ),
    ("run_drafter", "true", "start event_drafter"),
    ("run_refiner", "true", "start frame_refiner"),
    ("run_verifier", "true", "start video_verifier"),
    ("events_topic", "/event_camera/events", "event_camera_msgs/EventPacket input"),
    ("image_topic", "/camera/image_raw", "sensor_msgs/Image input"),
)


def _stage(
    executable: str,
    model_arg: str,
    run_arg: str,
    remaps: list[tuple[str, LaunchConfiguration]],
    extra: dict | None = None,
) -> Node:
    overrides = {
        "model": LaunchConfiguration(model_arg),
        "device": LaunchConfiguration("device"),
        "dtype": LaunchConfiguration("dtype"),
        "backend": LaunchConfiguration("backend"),
        "draft_ids": LaunchConfiguration("draft_ids"),
        "use_sim_time": LaunchConfiguration("use_sim_time"),
        "autostart": LaunchConfiguration("autostart"),
        **(extra or {}),
    }
    return Node(
        package=PACKAGE,
        executable=executable,
        name=executable,
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=remaps,
        condition=IfCondition(LaunchConfiguration(run_arg)),
        output="screen",
    )


STAGES = (
    ("drafter", "drafter_model", "run_drafter"),
    ("refiner", "refiner_model", "run_refiner"),
    ("target", "target_model", "run_verifier"),
)


def _check_models(context: object) -> list[LogInfo]:
    """The start-up check (core.cooperation): one line and no nodes when the stages cannot cooperate."""
    from cascade_sd_ros.core.cooperation import plan_cooperation
    from cascade_sd_ros.core.stage_model import VocabularyMismatch

    sources = {
        role: LaunchConfiguration(model).perform(context)
        for role, model, run in STAGES
        if LaunchConfiguration(run).perform(context).strip().lower() in ("true", "1", "yes")
    }
    try:
        plan = plan_cooperation(sources, LaunchConfiguration("draft_ids").perform(context))
    except (VocabularyMismatch, ValueError) as exc:
        raise RuntimeError(str(exc)) from None  # ros2 launch prints it as one line and starts nothing
    return [LogInfo(msg=line) for line in plan.lines]


def generate_launch_description() -> LaunchDescription:
    events = ("events", LaunchConfiguration("events_topic"))
    image = ("image", LaunchConfiguration("image_topic"))
    mode = {"mode": LaunchConfiguration("mode")}
    return LaunchDescription(
        [
            *(
                DeclareLaunchArgument(name, default_value=default, description=desc)
                for name, default, desc in ARGUMENTS
            ),
            OpaqueFunction(function=_check_models),
            _stage("event_drafter", "drafter_model", "run_drafter", [events]),
            _stage("frame_refiner", "refiner_model", "run_refiner", [image], mode),
            _stage("video_verifier", "target_model", "run_verifier", [image, events], mode),
        ]
    )
