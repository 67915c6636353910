"""``cascade-sd events``: figures and decoded arrays of an event-camera recording.

``stats PATH`` prints one JSON object (counts, time span, sum of t, the recording's event rate
and this run's decode speed); ``decode PATH -o out.npy`` writes the CD events (CD_DTYPE) and,
with ``--triggers``, the trigger events. PATH is a rosbag2 folder, a storage file (sqlite3 or
MCAP, whatever its name), or a Metavision ``.raw`` file (EVT 2.0 / 3.0).

A damaged bag (cut short, a corrupt chunk or record) gives the figures of what could be read, a
``"partial"`` entry in the JSON saying where and why reading stopped, one line on stderr, and exit
status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cascade_sd_ros.core.events import EventDecodeError, supported_encodings
from cascade_sd_ros.core.events.sources import RAW_SUFFIX, Packet, event_topic, iter_packets
from cascade_sd_ros.core.events.stats import compute_stats, decode_all
from cascade_sd_ros.core.names import stamp_ns

EXIT_PARTIAL = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", type=Path, help="rosbag2 folder, .db3/.mcap file, or Metavision .raw file")
    common.add_argument("--topic", help="EventPacket topic (default: the bag's only one)")
    common.add_argument(
        "--encoding", choices=supported_encodings(), help="override the packets' encoding (or a raw file's header)"
    )
    sub.add_parser("stats", parents=[common], help="print event counts, time span and rates as JSON")
    decode = sub.add_parser("decode", parents=[common], help="decode all events to .npy")
    decode.add_argument("-o", "--output", type=Path, required=True, help="CD events .npy (CD_DTYPE)")
    decode.add_argument("--triggers", type=Path, help="also write trigger events (TRIGGER_DTYPE) here")


def bag_packets(bag: object, topic: str | None, encoding: str | None, report: object) -> Iterator[Packet]:
    """The EventPacket records of one topic of an opened :class:`bagio.Bag`; corrupt records are
    skipped and counted in ``report`` (a :class:`bagio.ReadReport`), damage is left in ``bag.damage``."""
    from cascade_sd_ros.core import bagio

    assert isinstance(bag, bagio.Bag) and isinstance(report, bagio.ReadReport)
    chosen = event_topic({c.topic: c.msgtype for c in bag.connections}, topic)
    conns = [c for c in bag.connections if c.topic == chosen]
    for conn in conns:
        if conn.store is None:
            raise bagio.BagError(conn.error)
    for conn, _t_ns, raw in bag.messages(conns):
        try:
            msg = bag.deserialize(raw, conn)
        except bagio.CorruptRecord:
            report.corrupt[conn.topic] = report.corrupt.get(conn.topic, 0) + 1
            continue
        stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        yield Packet(
            encoding or str(msg.encoding),
            int(msg.width),
            int(msg.height),
            int(msg.time_base),
            np.asarray(msg.events, np.uint8),
            stamp,
        )


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the .npy")
    if not path.parent.is_dir():
        raise ValueError(f"the folder of {path} does not exist")


def run(args: argparse.Namespace) -> int:
    """Errors (EventDecodeError, BagError, OSError) reach the command line's edge: one line."""
    from cascade_sd_ros.core import bagio

    report = bagio.ReadReport()
    if args.action == "decode":
        _check_output(args.output)
        if args.triggers is not None:
            _check_output(args.triggers)
    if args.path.suffix == RAW_SUFFIX or not args.path.exists():
        result = _compute(args, iter_packets(args.path, args.topic, args.encoding))
    else:
        if args.encoding is not None and args.encoding not in supported_encodings():
            raise EventDecodeError(f"unknown event encoding {args.encoding!r}")
        with bagio.open_bag(args.path) as bag:
            result = _compute(args, bag_packets(bag, args.topic, args.encoding, report))
            report.damage.extend(bag.damage)
    if report.partial:
        result["partial"] = {"damage": [str(d) for d in report.damage], "corrupt_records": report.corrupt}
    print(json.dumps(result, indent=2 if args.action == "stats" else None))
    if report.partial:
        print(f"cascade-sd events: partial: {report.summary()}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _compute(args: argparse.Namespace, packets: Iterator[Packet]) -> dict[str, object]:
    if args.action == "stats":
        return compute_stats(packets).as_dict()
    cd, triggers = decode_all(packets)
    np.save(args.output, cd)
    if args.triggers is not None:
        np.save(args.triggers, triggers)
    return {
        "cd_events": int(cd.size),
        "trigger_events": int(triggers.size),
        "output": str(args.output),
        "triggers": str(args.triggers) if args.triggers else None,
    }
