"""``cascade-sd``: the package's command line.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen command's module is imported, so ``--help`` and light commands start fast and
never load torch or rclpy for nothing.

Exit status (every command): 0 done; 1 an error in the input or the run (a missing or unreadable
file, a bad model folder, ...); 2 bad arguments; 3 partial: the input was damaged (a bag cut short
or with a corrupt chunk or record) and the output covers what could be read before the damage;
130 interrupted. Errors are one line on stderr (``cascade-sd COMMAND: error: ...``); the global
``--debug`` flag (before or after the command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Sequence

# name -> (module, one-line help). Keep sorted by workflow, not alphabet.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "cascade_sd_ros.tools.demo",
        "synthetic scenes through the three real nodes: verified captions and speed-up",
    ),
    "replay": ("cascade_sd_ros.tools.replay", "replay a rosbag2 through the cascade and write a report"),
    "events": ("cascade_sd_ros.tools.events_cmd", "event-camera recordings: stats, decode"),
    "make-bag": ("cascade_sd_ros.tools.make_bag", "write a synthetic (or video-derived) rosbag2 with ground truth"),
    "train": ("cascade_sd_ros.tools.train", "train the tiny model zoo on synthetic scenes"),
    "distill": ("cascade_sd_ros.tools.distill", "distil drafter and refiner toward the target's outputs"),
    "eval-zoo": ("cascade_sd_ros.tools.eval_zoo", "evaluate the model zoo: accuracy and acceptance per stage"),
}
EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 1, 2, 3, 130
DEBUG_FLAG = "--debug"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="cascade-sd",
        description="Verified captions from event + RGB cameras by cascaded speculative decoding.",
        epilog="exit status: 0 done, 1 error, 2 bad arguments, 3 partial (damaged input, output covers "
        "what was read), 130 interrupted",
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, sub


def _is_input_error(exc: BaseException) -> bool:
    """Bad input rather than a bug: what parsers of paths, values and files raise."""
    return isinstance(exc, (ValueError, OSError)) or type(exc).__module__.split(".")[0] == "safetensors"


def _one_line(exc: BaseException) -> str:
    """The exception as one line: its own words (with its type where they are not enough)."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, (ValueError, OSError)) or not text:
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        return f"{text}: {exc.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:split]
    argv = [a for i, a in enumerate(argv) if a != DEBUG_FLAG or i >= split]
    parser, _ = build_parser()
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help, or the error for an unknown command, and exits 2
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(COMMANDS[name][0])
        cmd_parser = OneLineParser(prog=f"cascade-sd {name}", description=COMMANDS[name][1])
        module.add_arguments(cmd_parser)
        args = cmd_parser.parse_args(rest)
        args.debug = debug  # a command that reports its own errors re-raises them under --debug
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as exc:  # the command line's edge: one line, the traceback only with --debug
        if debug:
            raise
        if _is_input_error(exc):  # bad input, named by whoever raised it
            print(f"cascade-sd {name}: error: {_one_line(exc)}", file=sys.stderr)
        else:
            print(f"cascade-sd {name}: internal error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


def entry() -> None:
    """The ``cascade-sd`` command. An interrupted command exits as soon as ``main`` has stopped its
    child processes and closed its files: the interpreter's own teardown (DDS participants and
    their threads, found by the final garbage collection) took 7 s of a Ctrl-C on a loaded
    machine, and a robot's operator pressing Ctrl-C wants the prompt back."""
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
