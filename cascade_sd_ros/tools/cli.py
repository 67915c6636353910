"""``cascade-sd``: the package's command line.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen command's module is imported, so ``--help`` and light commands start fast and
never load torch or rclpy for nothing.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help). Keep sorted by workflow, not alphabet.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cascade_sd_ros.tools.demo", "synthetic scenes through the three real nodes: verified captions and speed-up"),
    "replay": ("cascade_sd_ros.tools.replay", "replay a rosbag2 through the cascade and write a report"),
    "events": ("cascade_sd_ros.tools.events_cmd", "event-camera recordings: stats, decode"),
    "make-bag": ("cascade_sd_ros.tools.make_bag", "write a synthetic (or video-derived) rosbag2 with ground truth"),
    "train": ("cascade_sd_ros.tools.train", "train the tiny model zoo on synthetic scenes"),
    "distill": ("cascade_sd_ros.tools.distill", "distil drafter and refiner toward the target's outputs"),
    "eval-zoo": ("cascade_sd_ros.tools.eval_zoo", "evaluate the model zoo: accuracy and acceptance per stage"),
}


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="cascade-sd",
        description="Verified captions from event + RGB cameras by cascaded speculative decoding.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser()
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help, or the error for an unknown command, and exits 2
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"cascade-sd {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
