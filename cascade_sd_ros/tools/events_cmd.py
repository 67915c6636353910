"""``cascade-sd events``: figures and decoded arrays of an event-camera recording.

``stats PATH`` prints one JSON object (counts, time span, sum of t, the recording's event rate
and this run's decode speed); ``decode PATH -o out.npy`` writes the CD events (CD_DTYPE) and,
with ``--triggers``, the trigger events. PATH is a rosbag2 folder, a ``.db3``/``.mcap`` file,
or a Metavision ``.raw`` file (EVT 2.0 / 3.0).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cascade_sd_ros.core.events import EventDecodeError, supported_encodings
from cascade_sd_ros.core.events.sources import iter_packets
from cascade_sd_ros.core.events.stats import compute_stats, decode_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", type=Path, help="rosbag2 folder, .db3/.mcap file, or Metavision .raw file")
    common.add_argument("--topic", help="EventPacket topic (default: the bag's only one)")
    common.add_argument("--encoding", choices=supported_encodings(),
                        help="override the packets' encoding (or a raw file's header)")
    sub.add_parser("stats", parents=[common], help="print event counts, time span and rates as JSON")
    decode = sub.add_parser("decode", parents=[common], help="decode all events to .npy")
    decode.add_argument("-o", "--output", type=Path, required=True, help="CD events .npy (CD_DTYPE)")
    decode.add_argument("--triggers", type=Path, help="also write trigger events (TRIGGER_DTYPE) here")


def run(args: argparse.Namespace) -> int:
    try:
        packets = iter_packets(args.path, args.topic, args.encoding)
        if args.action == "stats":
            print(json.dumps(compute_stats(packets).as_dict(), indent=2))
            return 0
        cd, triggers = decode_all(packets)
    except (EventDecodeError, FileNotFoundError, ValueError) as err:  # BagError is a ValueError
        print(f"cascade-sd events: {err}", file=sys.stderr)
        return 1
    np.save(args.output, cd)
    if args.triggers is not None:
        np.save(args.triggers, triggers)
    print(json.dumps({"cd_events": int(cd.size), "trigger_events": int(triggers.size),
                      "output": str(args.output), "triggers": str(args.triggers) if args.triggers else None}))
    return 0
