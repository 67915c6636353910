"""Fuzz every event decoder with random, truncated and bit-flipped payloads (issue 19).

Payloads: the real recording's packets (``../shared/data/evt3_test_events_1``) for evt3, and its
events re-encoded packet by packet with our encoders for the other formats; synthetic events
through the same encoders where the recording is absent. Each decoder is one long-lived stream
(its state carries from input to input, as on a robot). After every hostile input a valid packet
is decoded and compared with what it must give (evt3/evt2: exact x, y, p and time within the
counter's period, the wrap count being stream state; the others exactly).

Counted per decoder: inputs, decode errors (EventDecodeError: the documented refusal), crashes
(any other exception), hangs (an input running past ``--hang-s``: a watchdog kills the worker and
the run resumes at the next input), violations (x/y outside the sensor, a time outside
0..MAX_T_US, a call spanning more than its max_span_us, events at or after until_t_us, a bad
``consumed``), poisoned states (the valid packet after an input decoded wrong) and unflagged
backward times (decoded time stepping back further than ``UNFLAGGED_BACKWARD_US`` with no
``time_resyncs`` count since the last event).

    .venv/bin/python bench/fuzz_decoders.py [--inputs 20000] [--seed 0] [--hang-s 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from cascade_sd_ros.core.events import (  # noqa: E402
    CD_DTYPE,
    TRIGGER_DTYPE,
    EventDecodeError,
    Evt3Encoder,
    encode_evt2,
    encode_libcaer,
    encode_libcaer_cmp,
    encode_mono,
    encode_trigger,
    make_decoder,
    supported_encodings,
)
from cascade_sd_ros.core.events.factory import UNFLAGGED_BACKWARD_US  # noqa: E402
from cascade_sd_ros.core.events.payload import MAX_T_US, MAX_TIME_BASE_NS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BAG = ROOT.parent / "shared" / "data" / "evt3_test_events_1"
W, H = 640, 480
PERIOD = {"evt3": 1 << 24, "evt2": 1 << 34}
COUNTERS = (
    "inputs",
    "decode_errors",
    "crashes",
    "violations",
    "poisoned",
    "unflagged_backward",
    "time_resyncs",
    "events_dropped_span",
    "bytes",
)


# ------------------------------------------------------------------------------ payloads


def _events_per_packet(bag: Path) -> tuple[list[bytes], list[tuple[np.ndarray, np.ndarray]], str]:
    """The real evt3 payloads and their decoded events per packet (or synthetic ones)."""
    if (bag / "metadata.yaml").is_file():
        from cascade_sd_ros.core.events.sources import iter_packets

        decoder = make_decoder("evt3", W, H)
        payloads, events = [], []
        for packet in iter_packets(bag):
            res = decoder.decode(packet.payload)
            payloads.append(packet.payload.tobytes())
            events.append((res.cd, res.triggers))
        return payloads, events, str(bag)
    rng = np.random.default_rng(0)
    enc, payloads, events = Evt3Encoder(), [], []
    t0 = 5_000_000
    for _ in range(200):
        n = int(rng.integers(50, 800))
        cd = np.zeros(n, CD_DTYPE)
        cd["x"], cd["y"], cd["p"] = rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, 2, n)
        cd["t"] = t0 + np.sort(rng.integers(0, 4000, n))
        trig = np.zeros(1, TRIGGER_DTYPE)
        trig["t"], trig["p"] = int(cd["t"][0]), int(rng.integers(0, 2))
        payloads.append(enc.encode(cd, trig))
        events.append((cd, trig))
        t0 += 4000
    return payloads, events, "synthetic (no recording found)"


def corpus(
    encoding: str, payloads: list[bytes], events: list[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[bytes, int]]:
    """(payload, time_base) per packet of the stream in ``encoding``."""
    if encoding == "evt3":
        return [(p, 0) for p in payloads]
    out = []
    for cd, trig in events:
        if encoding == "evt2":
            out.append((encode_evt2(cd, trig), 0))
        elif encoding == "trigger":
            if trig.size:
                out.append(encode_trigger(trig))
        elif cd.size:
            out.append(
                {"libcaer": encode_libcaer, "libcaer_cmp": encode_libcaer_cmp, "mono": encode_mono}[encoding](cd)
            )
    return out


def probes(
    encoding: str, events: list[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[bytes, int, np.ndarray, np.ndarray]]:
    """Valid packets from a fresh encoder (they carry all the state they need) and their events."""
    out = []
    for cd, trig in events[:: max(1, len(events) // 16)][:16]:
        if encoding == "evt3":
            from cascade_sd_ros.core.events import encode_evt3

            out.append((encode_evt3(cd, trig), 0, cd, trig))
        elif encoding == "evt2":
            out.append((encode_evt2(cd, trig), 0, cd, trig))
        elif encoding == "trigger":
            if trig.size:
                payload, tb = encode_trigger(trig)
                out.append((payload, tb, cd[:0], trig))
        else:
            payload, tb = {"libcaer": encode_libcaer, "libcaer_cmp": encode_libcaer_cmp, "mono": encode_mono}[encoding](
                cd
            )
            out.append((payload, tb, cd, trig[:0]))
    return out


def hostile(rng: np.random.Generator, source: list[tuple[bytes, int]], word: int) -> tuple[str, bytes, int, int | None]:
    """One hostile input: (kind, payload, time_base, until_t_us). Three in four sizes and cuts are
    whole words (the rest are refused outright, which tests little)."""
    payload, tb = source[int(rng.integers(len(source)))]
    kind = ("random", "truncated", "bitflip")[int(rng.integers(3))]
    align = word if rng.random() < 0.75 else 1
    if kind == "random":
        size = int(rng.choice([int(rng.integers(0, 64)), int(rng.integers(0, 4096)), int(rng.integers(0, 65536))]))
        data = rng.integers(0, 256, size - size % align, dtype=np.uint8).tobytes()
    elif kind == "truncated":
        a = int(rng.integers(0, len(payload) + 1))
        b = int(rng.integers(a, len(payload) + 1))
        a, b = a - a % align, b - b % align
        data = payload[a:b] if rng.random() < 0.5 else payload[:b]
    else:
        flipped = np.frombuffer(payload, np.uint8).copy()
        if flipped.size:
            bits = rng.integers(0, 8 * flipped.size, int(rng.integers(1, 9)))
            np.bitwise_xor.at(flipped, bits // 8, (1 << (bits % 8)).astype(np.uint8))
        data = flipped.tobytes()
    r = rng.random()
    time_base = (
        tb
        if r < 0.85
        else int(rng.choice([0, MAX_TIME_BASE_NS, MAX_TIME_BASE_NS + 1, 2**63 - 1, 2**64 - 1, 10**19, -1]))
    )
    r = rng.random()
    until = None if r < 0.7 else int(rng.choice([0, 2**63 - 1, -(2**63), int(rng.integers(0, 2**40))]))
    return kind, data, time_base, until


# ------------------------------------------------------------------------------ checking


class StreamCheck:
    def __init__(self, encoding: str, max_span_us: int) -> None:
        self.tolerance = UNFLAGGED_BACKWARD_US[encoding]
        self.across_calls = encoding in PERIOD  # the others take each packet's time_base as given
        self.max_span_us = max_span_us
        self.last: dict[str, int | None] = {"cd": None, "triggers": None}
        self.pending = False

    def check(self, res, nbytes: int, word: int, until: int | None) -> tuple[int, int]:  # noqa: ANN001
        """(violations, unflagged backward steps) of one call's result."""
        bad = 0
        bad += not (0 <= res.consumed <= nbytes and res.consumed % word == 0)
        bad += res.cd.dtype != CD_DTYPE or res.triggers.dtype != TRIGGER_DTYPE
        if res.cd.size:
            bad += bool(res.cd["x"].max() >= W or res.cd["y"].max() >= H)
        times = [a["t"] for a in (res.cd, res.triggers) if a.size]
        if times:
            t = np.concatenate(times)
            bad += bool(t.min() < 0 or t.max() > MAX_T_US or t.max() - t.min() > self.max_span_us)
            bad += bool(until is not None and t.max() >= until)
        flagged = res.time_resyncs > 0 or self.pending
        back = 0
        for key in ("cd", "triggers"):
            t = getattr(res, key)["t"].astype(np.int64)
            if not t.size:
                continue
            last = self.last[key] if self.across_calls and self.last[key] is not None else int(t[0])
            if not flagged:
                back += int(np.count_nonzero(t < np.concatenate(([last], t[:-1])) - self.tolerance))
            self.last[key] = int(t[-1])
        self.pending = res.time_resyncs > 0 or (self.pending and not times)
        return bad, back


def same(encoding: str, res, cd: np.ndarray, trig: np.ndarray) -> bool:  # noqa: ANN001
    for have, want in ((res.cd, cd), (res.triggers, trig)):
        if have.size != want.size or not all(np.array_equal(have[k], want[k]) for k in want.dtype.names if k != "t"):
            return False
        shift = have["t"] - want["t"]
        if encoding in PERIOD:
            if shift.size and (np.any(shift % PERIOD[encoding]) or np.any(shift != shift[0])):
                return False
        elif np.any(shift):
            return False
    return True


def worker(encoding: str, start: int, stop: int, seed: int, counts, progress) -> None:  # noqa: ANN001
    payloads, events, _ = _events_per_packet(Path(os.environ["FUZZ_BAG"]))
    source = corpus(encoding, payloads, events)
    valid = probes(encoding, events)
    decoder = make_decoder(encoding, W, H)
    check = StreamCheck(encoding, decoder.max_span_us)
    shown = 0
    progress.value = start  # set up: the watchdog starts timing inputs now
    for i in range(start, stop):
        progress.value = i
        rng = np.random.default_rng([seed, supported_encodings().index(encoding), i])
        kind, data, time_base, until = hostile(rng, source, decoder.word_bytes)
        counts[COUNTERS.index("inputs")] += 1
        counts[COUNTERS.index("bytes")] += len(data)
        try:
            res = decoder.decode(data, time_base, until)
        except EventDecodeError:
            counts[COUNTERS.index("decode_errors")] += 1
            res = None
        except Exception:  # noqa: BLE001 - the point: anything else is a crash
            counts[COUNTERS.index("crashes")] += 1
            if shown < 3:
                shown += 1
                print(f"[{encoding}] crash on input {i} ({kind}):\n{traceback.format_exc()}", file=sys.stderr)
            decoder = make_decoder(encoding, W, H)
            check = StreamCheck(encoding, decoder.max_span_us)
            continue
        if res is not None:
            bad, back = check.check(res, len(data), decoder.word_bytes, until)
            counts[COUNTERS.index("violations")] += bad
            counts[COUNTERS.index("unflagged_backward")] += back
            counts[COUNTERS.index("time_resyncs")] += res.time_resyncs
            counts[COUNTERS.index("events_dropped_span")] += res.events_dropped_span
            if not res.finished and encoding in ("libcaer", "libcaer_cmp"):
                rest = decoder.decode(data[res.consumed :], time_base)  # finish the packet (remainder semantics)
                bad, back = check.check(rest, len(data) - res.consumed, decoder.word_bytes, None)
                counts[COUNTERS.index("violations")] += bad
                counts[COUNTERS.index("unflagged_backward")] += back
        payload, tb, cd, trig = valid[i % len(valid)]
        good = decoder.decode(payload, tb)
        bad, back = check.check(good, len(payload), decoder.word_bytes, None)
        counts[COUNTERS.index("violations")] += bad
        counts[COUNTERS.index("unflagged_backward")] += back
        if not same(encoding, good, cd, trig) or good.events_dropped_span:
            counts[COUNTERS.index("poisoned")] += 1
            if shown < 3:
                shown += 1
                print(f"[{encoding}] poisoned after input {i} ({kind})", file=sys.stderr)
    progress.value = stop


def run_encoding(encoding: str, n: int, seed: int, hang_s: float) -> dict[str, int]:
    ctx = mp.get_context("fork")
    counts = ctx.Array("q", len(COUNTERS), lock=False)
    progress = ctx.Value("q", 0, lock=False)
    hangs = 0
    start = 0
    while start < n:
        proc = ctx.Process(target=worker, args=(encoding, start, n, seed, counts, progress), daemon=True)
        progress.value = -1  # the worker is loading its payloads (not an input: no guard)
        proc.start()
        last, since, killed = progress.value, time.monotonic(), False
        while proc.is_alive():
            proc.join(0.2)
            if progress.value != last:
                last, since = progress.value, time.monotonic()
            elif last >= 0 and time.monotonic() - since > hang_s:  # one input ran past the guard
                proc.kill()
                proc.join()
                hangs, killed = hangs + 1, True
                print(f"[{encoding}] input {progress.value} ran past {hang_s} s: counted as a hang", file=sys.stderr)
        if not killed and proc.exitcode != 0 and progress.value < n:
            print(f"[{encoding}] worker died (exit {proc.exitcode}) at input {progress.value}", file=sys.stderr)
            counts[COUNTERS.index("crashes")] += 1
            if progress.value < 0:
                raise RuntimeError(f"{encoding}: the fuzz worker failed while loading its payloads")
        start = max(progress.value + 1, start + 1) if progress.value < n else n
    out = dict(zip(COUNTERS, (int(c) for c in counts)))
    out["hangs"] = hangs
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20_000, help="hostile inputs per decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=10.0, help="an input running longer is a hang")
    parser.add_argument("--bag", type=Path, default=DEFAULT_BAG)
    args = parser.parse_args()
    os.environ["FUZZ_BAG"] = str(args.bag)
    _, _, source = _events_per_packet(args.bag)
    results: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    for encoding in supported_encodings():
        start = time.perf_counter()
        results[encoding] = run_encoding(encoding, args.inputs, args.seed, args.hang_s)
        results[encoding]["seconds"] = round(time.perf_counter() - start, 1)  # type: ignore[assignment]
        print(f"{encoding}: {json.dumps(results[encoding])}", file=sys.stderr)
    total = {k: sum(r[k] for r in results.values()) for k in (*COUNTERS, "hangs")}
    print(
        json.dumps(
            {
                "source": source,
                "seed": args.seed,
                "per_decoder": results,
                "total": total,
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )
    failed = total["crashes"] + total["hangs"] + total["violations"] + total["poisoned"] + total["unflagged_backward"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
