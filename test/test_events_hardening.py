"""Decoders under hostile and broken input: the defects a fuzzing session found (issue 19), and
property tests that throw random, truncated and bit-flipped payloads at every decoder.

What every decoder promises (see ``payload``, ``clock`` and ``DecodedEvents``): only
EventDecodeError is raised; x/y inside the sensor; times in 0..MAX_T_US; one call's events span
at most ``max_span_us``; time never steps back further than ``UNFLAGGED_BACKWARD_US`` without a
``time_resyncs`` count; and the next valid packet decodes exactly (evt3/evt2: exact x, y, p and
time within the counter's period, whose wrap count is stream state; after ``reset()`` exactly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cascade_sd_ros.core.events import (
    CD_DTYPE,
    TRIGGER_DTYPE,
    EventDecodeError,
    Evt3Encoder,
    encode_evt2,
    encode_evt3,
    encode_libcaer,
    encode_libcaer_cmp,
    encode_mono,
    encode_trigger,
    make_decoder,
)
from cascade_sd_ros.core.events.clock import follow_time_high
from cascade_sd_ros.core.events.evt3 import ROLLOVER_US
from cascade_sd_ros.core.events.factory import UNFLAGGED_BACKWARD_US
from cascade_sd_ros.core.events.payload import MAX_T_US, MAX_TIME_BASE_NS, MAX_TIME_JUMP_US

ENCODINGS = ("evt3", "evt2", "libcaer", "libcaer_cmp", "mono", "trigger")
PERIOD = {"evt3": 1 << 24, "evt2": 1 << 34}
W, H = 640, 480
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cd(n: int, t0: int, span_us: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cd = np.zeros(n, CD_DTYPE)
    cd["x"], cd["y"], cd["p"] = rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, 2, n)
    cd["t"] = t0 + np.sort(rng.integers(0, span_us, n))
    return cd


def valid_packet(encoding: str, seed: int) -> tuple[bytes, int, np.ndarray, np.ndarray]:
    """A packet of ``encoding`` from a fresh encoder (it carries all the state it needs), its
    time_base, and the CD and trigger events it decodes to. Spans at most 50 ms."""
    cd = _cd(60, 3_000_000 + 997 * seed, 50_000, seed)
    trig = np.zeros(2, TRIGGER_DTYPE)
    trig["t"], trig["id"], trig["p"] = [int(cd["t"][3]), int(cd["t"][40])], [1, 0], [0, 1]
    if encoding == "evt3":
        return encode_evt3(cd, trig), 0, cd, trig
    if encoding == "evt2":
        return encode_evt2(cd, trig), 0, cd, trig
    if encoding == "trigger":
        payload, tb = encode_trigger(trig)
        return payload, tb, cd[:0], trig
    payload, tb = {"libcaer": encode_libcaer, "libcaer_cmp": encode_libcaer_cmp, "mono": encode_mono}[encoding](cd)
    return payload, tb, cd, trig[:0]


def _real_evt3_packets() -> list[bytes]:
    bag = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "evt3_test_events_1"
    if not (bag / "metadata.yaml").is_file():
        return []
    from cascade_sd_ros.core.events.sources import iter_packets

    return [p.payload.tobytes() for i, p in enumerate(iter_packets(bag)) if i % 20 == 0]


REAL_EVT3 = _real_evt3_packets()


def _source_payload(encoding: str, seed: int) -> tuple[bytes, int]:
    if encoding == "evt3" and REAL_EVT3:
        return REAL_EVT3[seed % len(REAL_EVT3)], 0
    payload, tb, _, _ = valid_packet(encoding, seed)
    return payload, tb


class Checker:
    """Follows one decoder's outputs: the invariants every call must keep."""

    def __init__(self, encoding: str, max_span_us: int = 1_000_000) -> None:
        self.encoding, self.max_span_us = encoding, max_span_us
        self.tolerance = UNFLAGGED_BACKWARD_US[encoding]
        # evt3/evt2 carry their clock across calls; the others take each packet's time_base as given
        self.across_calls = encoding in PERIOD
        self.last = {"cd": None, "triggers": None}
        self.pending_flag = False
        self.unflagged_backward = 0

    def check(self, res, payload_len: int, word_bytes: int, until: int | None) -> None:  # noqa: ANN001
        assert res.cd.dtype == CD_DTYPE and res.triggers.dtype == TRIGGER_DTYPE
        assert 0 <= res.consumed <= payload_len and res.consumed % word_bytes == 0
        assert min(res.time_resyncs, res.events_dropped_span, res.skipped_words) >= 0
        if res.cd.size:
            assert res.cd["x"].max() < W and res.cd["y"].max() < H and set(np.unique(res.cd["p"])) <= {0, 1}
        times = [a["t"] for a in (res.cd, res.triggers) if a.size]
        if times:
            t = np.concatenate(times)
            assert t.min() >= 0 and t.max() <= MAX_T_US
            assert t.max() - t.min() <= self.max_span_us
            if until is not None:
                assert t.max() < until
        flagged = res.time_resyncs > 0 or self.pending_flag
        for key in ("cd", "triggers"):
            t = getattr(res, key)["t"].astype(np.int64)
            if not t.size:
                continue
            last = self.last[key] if self.across_calls and self.last[key] is not None else int(t[0])
            prev = np.concatenate(([last], t[:-1]))
            if not flagged:
                self.unflagged_backward += int(np.count_nonzero(t < prev - self.tolerance))
            self.last[key] = int(t[-1])
        # a count in a call that returned no events after it still covers the next events
        self.pending_flag = res.time_resyncs > 0 or (self.pending_flag and not times)


def _garbage(data: st.DataObject, encoding: str) -> tuple[bytes, int]:
    mode = data.draw(st.sampled_from(["random", "truncated", "bitflip", "words"]))
    seed = data.draw(st.integers(0, 50))
    source, tb = _source_payload(encoding, seed)
    if mode == "random":
        return data.draw(st.binary(max_size=600)), data.draw(st.sampled_from([0, tb, MAX_TIME_BASE_NS]))
    if mode == "truncated":
        a = data.draw(st.integers(0, len(source)))
        b = data.draw(st.integers(a, len(source)))
        return source[a:b], tb
    if mode == "words":  # valid word types with random payloads: time words in particular
        word = {"evt3": 2, "libcaer_cmp": 2, "evt2": 4}.get(encoding, 8)
        return data.draw(st.binary(min_size=word, max_size=120 * word)), tb
    flipped = bytearray(source)
    for _ in range(data.draw(st.integers(1, 8))):
        bit = data.draw(st.integers(0, 8 * len(flipped) - 1)) if flipped else 0
        if flipped:
            flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped), tb


def _assert_decodes_next(encoding: str, decoder, seed: int, checker: Checker, exact_time: bool) -> None:  # noqa: ANN001
    payload, tb, want_cd, want_trig = valid_packet(encoding, seed)
    got = decoder.decode(payload, tb)
    checker.check(got, len(payload), decoder.word_bytes, None)
    assert got.events_dropped_span == 0
    for have, want in ((got.cd, want_cd), (got.triggers, want_trig)):
        assert have.size == want.size
        assert all(np.array_equal(have[k], want[k]) for k in want.dtype.names if k != "t")
        shift = have["t"] - want["t"]
        if exact_time or encoding not in PERIOD:
            assert np.all(shift == 0), f"{encoding}: times shifted by {np.unique(shift)}"
        else:  # the wrap count is stream state; within the period, and relative to each other, exact
            assert np.all(shift % PERIOD[encoding] == 0) and np.all(shift == (shift[0] if shift.size else 0))


@FUZZ
@pytest.mark.parametrize("encoding", ENCODINGS)
@given(data=st.data())
def test_hostile_payloads_raise_only_decode_errors_and_never_poison_the_stream(
    encoding: str, data: st.DataObject
) -> None:
    decoder = make_decoder(encoding, W, H)
    checker = Checker(encoding)
    first, tb, _, _ = valid_packet(encoding, data.draw(st.integers(0, 50)))
    checker.check(decoder.decode(first, tb), len(first), decoder.word_bytes, None)
    for _ in range(data.draw(st.integers(1, 3))):
        junk, junk_tb = _garbage(data, encoding)
        until = data.draw(st.none() | st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(0, 1 << 33))
        try:
            res = decoder.decode(junk, junk_tb, until)
        except EventDecodeError:
            assert len(junk) % decoder.word_bytes
            continue
        checker.check(res, len(junk), decoder.word_bytes, until)
        # the one documented ambiguity: a new packet that looks exactly like the remainder
        if encoding in ("libcaer", "libcaer_cmp") and not res.finished:
            assume(False)
    seed = data.draw(st.integers(0, 50))
    _assert_decodes_next(encoding, decoder, seed, checker, exact_time=False)
    assert checker.unflagged_backward == 0
    decoder.reset()
    _assert_decodes_next(encoding, decoder, seed, Checker(encoding), exact_time=True)


@settings(max_examples=40, deadline=None)
@pytest.mark.parametrize("encoding", ["evt3", "evt2"])
@given(packet=st.integers(1, 18), word=st.integers(0, 10_000), bit=st.integers(0, 27))
def test_one_flipped_time_high_bit_shifts_nothing_after_the_next_time_high(
    encoding: str, packet: int, word: int, bit: int
) -> None:
    """A stream cut into packets; one bit of one TIME_HIGH word flipped. Every later packet decodes
    exactly as without the flip (before the fix: +16.8 s for evt3, +4.8 h for evt2, for good)."""
    cd = _cd(4000, 5_000_000, 20 * 900_000, 3)
    if encoding == "evt3":
        enc = Evt3Encoder()
        bounds = np.searchsorted(cd["t"], cd["t"][0] + 900_000 * np.arange(21))
        packets = [enc.encode(cd[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]  # one continuous stream
        words = np.frombuffer(packets[packet], "<u2").copy()
        highs = np.flatnonzero(words >> 12 == 0x8)
        words[highs[word % highs.size]] ^= np.uint16(1 << (bit % 12))
    else:
        stream = np.frombuffer(encode_evt2(cd), "<u4")
        cuts = np.linspace(0, stream.size, 21).astype(int)  # a stateful decoder takes any cut
        packets = [stream[a:b].tobytes() for a, b in zip(cuts[:-1], cuts[1:])]
        words = np.frombuffer(packets[packet], "<u4").copy()
        highs = np.flatnonzero(words >> 28 == 0x8)
        words[highs[word % highs.size]] ^= np.uint32(1 << bit)
    flipped = words.tobytes()
    clean = make_decoder(encoding, W, H, max_span_us=None)
    dirty = make_decoder(encoding, W, H, max_span_us=None)
    checker = Checker(encoding, max_span_us=MAX_T_US)
    for i, payload in enumerate(packets):
        want = clean.decode(payload)
        got = dirty.decode(flipped if i == packet else payload)
        checker.check(got, len(payload), dirty.word_bytes, None)
        # events up to the next good TIME_HIGH (in this packet or the next) carry the bad time
        if i >= packet + 2:
            assert np.array_equal(got.cd, want.cd) and got.time_resyncs == 0, f"packet {i} after the flip differs"
        else:
            assert np.array_equal(got.cd[["x", "y", "p"]], want.cd[["x", "y", "p"]])
    assert checker.unflagged_backward == 0


def test_time_base_and_until_outside_int64_or_the_horizon_are_decode_errors() -> None:
    for encoding in ENCODINGS:
        payload, tb, _, _ = valid_packet(encoding, 1)
        decoder = make_decoder(encoding, W, H)
        for bad_tb in (2**64 - 1, 10**19, 2**63, MAX_TIME_BASE_NS + 1, -1, 1.5, True, None):
            with pytest.raises(EventDecodeError, match="time_base"):
                decoder.decode(payload, bad_tb)  # type: ignore[arg-type]
        for bad_until in (2**63, 2**64, -(2**63) - 1, 1.0):
            with pytest.raises(EventDecodeError, match="until"):
                decoder.decode(payload, tb, bad_until)  # type: ignore[arg-type]
        res = decoder.decode(payload, tb, 2**63 - 1)  # the largest until is no limit
        assert res.finished and res.cd.size + res.triggers.size > 0
        far = decoder.decode(payload, MAX_TIME_BASE_NS)  # the largest time_base: times stay in range
        t = np.concatenate([far.cd["t"], far.triggers["t"]])
        assert t.size == 0 or (t.min() >= 0 and t.max() <= MAX_T_US)
        assert int(t.max()) * 1000 < 2**63 if t.size else True
        with pytest.raises(EventDecodeError, match="max_span_us"):
            make_decoder(encoding, W, H, max_span_us=-1)


def test_a_libcaer_packet_with_the_largest_uint64_time_base_is_refused_not_sized() -> None:
    payload, _, _, _ = valid_packet("libcaer", 2)
    with pytest.raises(EventDecodeError):
        make_decoder("libcaer", W, H).decode(payload, 2**64 - 1)


def test_random_4_mb_evt3_payload_is_clipped_to_one_second_and_counted() -> None:
    junk = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8)
    decoder = make_decoder("evt3", W, H)
    res = decoder.decode(junk)
    t = np.concatenate([res.cd["t"], res.triggers["t"]])
    assert t.max() - t.min() <= 1_000_000 and t.min() >= 0 and t.max() <= MAX_T_US
    assert res.events_dropped_span > 0 and res.time_resyncs > 0
    unbounded = make_decoder("evt3", W, H, max_span_us=None).decode(junk)
    assert unbounded.cd.size + unbounded.triggers.size == t.size + res.events_dropped_span
    # the stream afterwards: exact up to the 16.8 s period, and exact after reset()
    payload, _, want, _ = valid_packet("evt3", 4)
    got = decoder.decode(payload)
    assert np.array_equal(got.cd[["x", "y", "p"]], want[["x", "y", "p"]])
    assert np.all((got.cd["t"] - want["t"]) % ROLLOVER_US == 0)
    decoder.reset()
    assert np.array_equal(decoder.decode(payload).cd, want)


def test_span_clipping_keeps_the_densest_second_and_counts_the_rest() -> None:
    cd = np.zeros(103, CD_DTYPE)
    cd["x"], cd["y"] = np.arange(103) % W, 1
    cd["t"][:100] = 10_000 + np.arange(100) * 10
    cd["t"][100:] = 10_000 + 3_000_000 + np.arange(3)  # three events 3 s later (a corrupt time word)
    encoders = {
        "evt3": lambda c: (encode_evt3(c), 0),
        "evt2": lambda c: (encode_evt2(c), 0),
        "mono": encode_mono,
        "libcaer": encode_libcaer,
        "libcaer_cmp": encode_libcaer_cmp,
    }
    for encoding, encode in encoders.items():
        payload, tb = encode(cd)
        res = make_decoder(encoding, W, H).decode(payload, tb)
        assert np.array_equal(res.cd, cd[:100]) and res.events_dropped_span == 3, encoding
        whole = make_decoder(encoding, W, H, max_span_us=None).decode(payload, tb)
        assert np.array_equal(whole.cd, cd) and whole.events_dropped_span == 0


def test_time_high_following_rules() -> None:
    period, jitter, jump, horizon = ROLLOVER_US, 10 << 12, MAX_TIME_JUMP_US, MAX_T_US - ROLLOVER_US
    top = period - 4096

    def follow(v: int, high: int, trusted: int) -> tuple[int, int, int]:
        return tuple(int(x) for x in follow_time_high(v, high, trusted, period, jitter, jump, horizon))  # type: ignore[return-value]

    assert follow(0, top, top) == (period, period, 0)  # a wrap from the top of the range
    assert follow(0x100 << 12, 0x105 << 12, 0x105 << 12) == (0x100 << 12, 0x105 << 12, 0)  # jitter
    # a step back from the middle: no wrap, counted; the trusted time stays
    assert follow(0x100 << 12, 0x900 << 12, 0x900 << 12) == (0x100 << 12, 0x900 << 12, 1)
    # a flipped bit 11 and the return: both counted, nothing carried
    assert follow(0x923 << 12, 0x123 << 12, 0x123 << 12) == (0x923 << 12, 0x123 << 12, 1)
    assert follow(0x124 << 12, 0x923 << 12, 0x123 << 12) == (0x124 << 12, 0x124 << 12, 1)
    # after a jump to 0x900 (counted), a step from it confirms the new timeline: followed, trusted
    assert follow(0x905 << 12, 0x900 << 12, 0x100 << 12) == (0x905 << 12, 0x905 << 12, 0)
    # repeated jitter steps back cannot walk time backwards unflagged
    assert follow(0x0F0 << 12, 0x0FB << 12, 0x105 << 12)[2] == 1
    # no wrap past the horizon (here two periods): refused, counted, kept in the last period
    small = 2 * period - 1
    got = follow_time_high(0, period + top, period + top, period, jitter, jump, small)
    assert tuple(int(x) for x in got) == (period, period + top, 1)
