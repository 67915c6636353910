"""EVT 3.0 decode speed against expelliarmus on the same bytes, one core, one run.

The bytes are the real recording's packets concatenated (``--repeat`` times, for a longer
stream), with the EXT_TRIGGER words removed because expelliarmus rejects them, written as a
Metavision ``.raw`` file. Both decoders read that file and decode it whole; each is timed best
of ``--rounds`` (interleaved, so load from other processes hits both alike). Also reported:
decoding the bag packet by packet as a ROS node does (per-call overhead included).

    .venv/bin/python bench/events.py [--bag ../shared/data/evt3_test_events_1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from cascade_sd_ros.core.events import CD_DTYPE, encode_evt3, make_decoder  # noqa: E402
from cascade_sd_ros.core.events.sources import iter_packets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BAG = ROOT.parent / "shared" / "data" / "evt3_test_events_1"
RAW_HEADER = b"% evt 3.0\n% format EVT3;height=480;width=640\n% geometry 640x480\n% end\n"


def synthetic_packets(n: int = 400_000) -> list[bytes]:
    """Stand-in when the real recording is absent: random events at ~170 kev/s."""
    rng = np.random.default_rng(0)
    cd = np.zeros(n, CD_DTYPE)
    cd["x"], cd["y"], cd["p"] = rng.integers(0, 640, n), rng.integers(0, 480, n), rng.integers(0, 2, n)
    cd["t"] = np.sort(rng.integers(0, n * 6, n))
    return [encode_evt3(cd)]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag", type=Path, default=DEFAULT_BAG, help="EVT 3.0 rosbag2 (synthetic events if absent)")
    parser.add_argument("--repeat", type=int, default=4, help="concatenate the stream this many times")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per decoder (best counts)")
    args = parser.parse_args()
    if args.repeat < 1 or args.rounds < 1:
        parser.error("--repeat and --rounds must be >= 1")
    try:
        from expelliarmus import Wizard
    except ImportError:
        print("expelliarmus is not installed (see requirements.lock)", file=sys.stderr)
        return 1

    if (args.bag / "metadata.yaml").is_file():
        packets = [p.payload.tobytes() for p in iter_packets(args.bag)]
        source = str(args.bag)
    else:
        packets, source = synthetic_packets(), "synthetic (no bag found)"
    words = np.frombuffer(b"".join(packets), "<u2")
    words = np.tile(words[(words >> 12) != 0xA], args.repeat)

    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "stream.raw"
        raw_path.write_bytes(RAW_HEADER + words.tobytes())
        wizard = Wizard(encoding="evt3")
        wizard.set_file(str(raw_path))

        def ours() -> np.ndarray:
            payload = np.fromfile(raw_path, np.uint8, offset=len(RAW_HEADER))
            # a whole 8 s file in one call, as expelliarmus reads it: no per-packet span bound
            return make_decoder("evt3", 640, 480, max_span_us=None).decode(payload).cd

        ours_cd, theirs = ours(), wizard.read()  # warm-up; numba kernels come from its cache
        if theirs is None or len(theirs) != ours_cd.size:
            print(
                f"event counts differ: ours {ours_cd.size}, expelliarmus {None if theirs is None else len(theirs)}",
                file=sys.stderr,
            )
            return 1
        same_xyp = all(np.array_equal(ours_cd[k], theirs[k]) for k in ("x", "y", "p"))
        best = {"ours": float("inf"), "expelliarmus": float("inf")}
        for _ in range(args.rounds):
            for name, fn in (("ours", ours), ("expelliarmus", wizard.read)):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)

    decoder = make_decoder("evt3", 640, 480)
    arrays = [np.frombuffer(p, np.uint8) for p in packets]
    decoder.decode(arrays[0][:0])
    per_packet = float("inf")
    n_packet_events = 0
    for _ in range(args.rounds):
        decoder = make_decoder("evt3", 640, 480)
        start = time.perf_counter()
        n_packet_events = sum(decoder.decode(a).cd.size for a in arrays)
        per_packet = min(per_packet, time.perf_counter() - start)

    n = ours_cd.size
    result = {
        "source": source,
        "events": int(n),
        "bytes": int(words.nbytes),
        "ours_mev_s": round(n / best["ours"] / 1e6, 1),
        "expelliarmus_mev_s": round(n / best["expelliarmus"] / 1e6, 1),
        "ratio": round(best["expelliarmus"] / best["ours"], 2),
        "same_x_y_p": bool(same_xyp),
        "per_packet_mev_s": round(n_packet_events / per_packet / 1e6, 1),
        "packets": len(packets),
        "cpu": cpu_model(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
