"""Byte vectors written by hand from each format's public specification, not by our encoders.

Sources (read, not copied): Prophesee's "EVT 2.0 Format" page (Metavision SDK docs), libcaer's
``include/libcaer/events/polarity.h`` (docs.ros.org/en/jazzy/p/libcaer), event_camera_codecs'
``libcaer_cmp_types.h`` (the reference the event_camera_msgs README points to for libcaer_cmp),
and the event_camera_msgs README table for ``mono``. Every expected value below is derived in the
comments from the bit layouts; all words are little-endian.
"""

from __future__ import annotations

import numpy as np
import pytest

from cascade_sd_ros.core.events import EventDecodeError, make_decoder


def _cd(res) -> list[tuple[int, int, int, int]]:  # noqa: ANN001
    return [tuple(int(v) for v in row) for row in res.cd.tolist()]


# ----------------------------------------------------------------------------------- EVT 2.0
# 32-bit words, type in bits 31..28: CD_OFF 0000, CD_ON 0001, EVT_TIME_HIGH 1000, EXT_TRIGGER 1010.
# CD_OFF/CD_ON: 27..22 time stamp bits 5..0, 21..11 x, 10..0 y.
# EVT_TIME_HIGH: 27..0 time stamp bits 33..6.
# EXT_TRIGGER: 27..22 time stamp bits 5..0, 12..8 channel id, 0 value (spec: 0 falling, 1 rising).


def test_evt2_words_from_the_spec() -> None:
    words = [
        0x80000010,  # TIME_HIGH 0x10: time bits 33..6 = 16 -> 16 << 6 = 1024 µs
        0x114320C8,  # CD_ON: (1<<28) | (5<<22) | (100<<11) | 200 -> x 100, y 200, p 1, t 1024 + 5
        0x0FC00001,  # CD_OFF: (63<<22) | (0<<11) | 1 -> x 0, y 1, p 0, t 1024 + 63 = 1087
        0xA0800101,  # EXT_TRIGGER: (0xA<<28) | (2<<22) | (1<<8) | 1 -> id 1, value 1, t 1026
        0x80000011,  # TIME_HIGH 0x11 -> 1088 µs
        0x103FFFFF,  # CD_ON: (1<<28) | (2047<<11) | 2047 -> x 2047, y 2047, t 1088
        0xE0000000,  # OTHERS: ignored, not counted as skipped
    ]
    payload = np.array(words, "<u4").tobytes()
    assert payload[:4] == bytes([0x10, 0x00, 0x00, 0x80])  # little-endian on the wire
    res = make_decoder("evt2", 2048, 2048).decode(payload)
    assert _cd(res) == [(100, 200, 1, 1029), (0, 1, 0, 1087), (2047, 2047, 1, 1088)]
    assert res.triggers.tolist() == [(1, 1, 1026)]  # p is the spec's value bit
    assert (res.skipped_words, res.time_resyncs, res.events_dropped_span) == (0, 0, 0)
    # On a 640x480 sensor the (2047, 2047) event is outside: skipped and counted.
    small = make_decoder("evt2", 640, 480).decode(payload)
    assert small.cd.size == 2 and small.skipped_words == 1


def test_evt2_words_before_the_first_time_high_are_skipped_and_the_34_bit_time_wraps() -> None:
    words = [
        0x114320C8,  # CD_ON before any TIME_HIGH: no valid time, skipped
        0x8FFFFFFF,  # TIME_HIGH 2**28 - 1 -> (2**28 - 1) << 6 = 2**34 - 64 µs
        0x0FC00001,  # CD_OFF t low 63 -> 2**34 - 1 (the last µs of the 34-bit range)
        0x80000000,  # TIME_HIGH 0: 64 µs after 2**34 - 64, i.e. one wrap -> 2**34
        0x10401804,  # CD_ON: (1<<28) | (1<<22) | (3<<11) | 4 -> x 3, y 4, t 2**34 + 1
    ]
    res = make_decoder("evt2", 640, 480).decode(np.array(words, "<u4").tobytes())
    assert _cd(res) == [(0, 1, 0, (1 << 34) - 1), (3, 4, 1, (1 << 34) + 1)]
    assert (res.skipped_words, res.time_resyncs) == (1, 0)


def test_evt2_a_time_high_step_back_is_not_a_wrap() -> None:
    """EVT 2.0 time only wraps from the top of the 34-bit range; a TIME_HIGH that steps back from
    the middle of it (one corrupt word) is counted and does not shift later time by 4.8 hours."""
    words = [
        0x80000010,  # 1024 µs
        0x88000010,  # bit 27 flipped: time bits 33..6 = 2**27 + 16 -> 2**33 + 1024 µs (a jump)
        0x00000005,  # CD_OFF t low 0, x 0, y 5 -> stamped 2**33 + 1024 (the corrupt word's time)
        0x80000011,  # the next good TIME_HIGH: 1088 µs again, no wrap
        0x00400006,  # CD_OFF t low 1, y 6 -> 1089
    ]
    res = make_decoder("evt2", 640, 480, max_span_us=None).decode(np.array(words, "<u4").tobytes())
    assert res.cd["t"].tolist() == [(1 << 33) + 1024, 1089]
    assert res.time_resyncs == 2  # the jump forward and the return


# ----------------------------------------------------------------------------------- libcaer
# caer_polarity_event: uint32 data, int32 timestamp [µs]. data: bit 0 valid mark, bit 1 polarity
# (POLARITY_SHIFT 1), bits 16..2 y (POLARITY_Y_ADDR_SHIFT 2, mask 0x7FFF), bits 31..17 x
# (POLARITY_X_ADDR_SHIFT 17, mask 0x7FFF). Sensor time = time_base [ns] + timestamp * 1000.


def test_libcaer_records_from_the_spec() -> None:
    payload = bytes(
        [
            0x1F,
            0x00,
            0x0A,
            0x00,  # data 0x000A001F = (5<<17) | (7<<2) | (1<<1) | 1: x 5, y 7, p 1
            0xE8,
            0x03,
            0x00,
            0x00,  # timestamp 1000 µs
            0x7D,
            0x07,
            0xFE,
            0x04,  # data 0x04FE077D = (639<<17) | (479<<2) | 1: x 639, y 479, p 0
            0xE9,
            0x03,
            0x00,
            0x00,  # timestamp 1001 µs
            0x01,
            0x00,
            0x14,
            0x00,  # data 0x00140001 = 10<<17 | 1: x 10, y 0, p 0
            0x00,
            0x00,
            0x00,
            0x80,  # timestamp -2**31: no camera writes it, the record is skipped
        ]
    )
    res = make_decoder("libcaer", 640, 480).decode(payload, time_base=3_000_000_000)  # 3 s = 3e6 µs
    assert _cd(res) == [(5, 7, 1, 3_001_000), (639, 479, 0, 3_001_001)]
    assert res.skipped_words == 1 and res.consumed == 24


def test_libcaer_timestamp_wraps_only_from_the_top() -> None:
    rec = np.zeros(3, [("data", "<u4"), ("ts", "<i4")])
    rec["data"] = (1 << 17) | (2 << 2) | 1  # x 1, y 2, p 0
    # 2**31 - 1, then 4: a step of 5 µs across the 31-bit wrap -> 2**31 + 4. Then 2: a step back
    # of 2 µs, which no wrap explains (it would be 35 minutes): counted, no second wrap.
    rec["ts"] = [(1 << 31) - 1, 4, 2]
    res = make_decoder("libcaer", 640, 480).decode(rec.tobytes(), time_base=0)
    assert res.cd["t"].tolist() == [(1 << 31) - 1, (1 << 31) + 4, (1 << 31) + 2]
    assert res.time_resyncs == 1


# ------------------------------------------------------------------------------- libcaer_cmp
# 16-bit words, code in bits 15..12: TIME_HIGH 0 (t 11..0 = offset bits 23..12), TIME_LOW 1
# (offset bits 11..0), ADDR_X 2 (x 10..0), ADDR_Y 3 (y 10..0, polarity 11: one event at the
# current x), VECT_BASE_Y 4 (y 10..0, polarity 11), VECT_8 5 (valid 7..0: events at base_y + k,
# then base_y += 8). Sensor time = time_base [ns] / 1000 + offset [µs].


def test_libcaer_cmp_words_from_the_spec() -> None:
    words = [
        0x0001,  # TIME_HIGH 1 -> offset 1 << 12 = 4096 µs
        0x1005,  # TIME_LOW 5 -> offset 4101 µs; with time_base 2 ms: t = 2000 + 4101 = 6101
        0x200A,  # ADDR_X 10
        0x3814,  # ADDR_Y: polarity bit 11 set, y 0x14 = 20 -> (10, 20, 1, 6101)
        0x4064,  # VECT_BASE_Y: polarity 0, y 0x64 = 100
        0x5005,  # VECT_8 valid 0b101 -> (10, 100, 0), (10, 102, 0); base_y -> 108
        0x5001,  # VECT_8 valid 0b1 -> (10, 108, 0)
        0x1006,  # TIME_LOW 6 -> t 6102
        0x3015,  # ADDR_Y polarity 0, y 21 -> (10, 21, 0, 6102)
    ]
    res = make_decoder("libcaer_cmp", 640, 480).decode(np.array(words, "<u2").tobytes(), time_base=2_000_000)
    assert _cd(res) == [
        (10, 20, 1, 6101),
        (10, 100, 0, 6101),
        (10, 102, 0, 6101),
        (10, 108, 0, 6101),
        (10, 21, 0, 6102),
    ]
    assert (res.skipped_words, res.time_resyncs) == (0, 0)


def test_libcaer_cmp_time_restarts_with_every_packet() -> None:
    decoder = make_decoder("libcaer_cmp", 640, 480)
    first = np.array([0x0002, 0x1001, 0x2003, 0x3004], "<u2").tobytes()  # offset 8193 -> (3, 4, 0)
    second = np.array([0x2003, 0x3004], "<u2").tobytes()  # no time words: offset 0 again
    assert decoder.decode(first, time_base=0).cd["t"].tolist() == [8193]
    assert decoder.decode(second, time_base=1_000_000).cd["t"].tolist() == [1000]


# ---------------------------------------------------------------------------------------- mono
# One uint64 per event: bit 63 polarity (1 ON), bits 62..48 y (15 bits), bits 47..32 x (16 bits),
# bits 31..0 dt [ns]; sensor time = time_base + dt [ns]; decoded t is floor(ns / 1000) µs.


def test_mono_words_from_the_spec() -> None:
    payload = bytes(
        [
            0xDC,
            0x05,
            0x00,
            0x00,
            0x04,
            0x00,
            0x03,
            0x80,  # 0x80030004000005DC: p 1, y 3, x 4, dt 1500 ns
            0x00,
            0x00,
            0x00,
            0x00,
            0xFF,
            0xFF,
            0x00,
            0x00,  # x 0xFFFF: outside a 640x480 sensor, skipped
            0xE7,
            0x03,
            0x00,
            0x00,
            0x7F,
            0x02,
            0xDF,
            0x01,  # 0x01DF027F000003E7: p 0, y 479, x 639, dt 999
        ]
    )
    res = make_decoder("mono", 640, 480).decode(payload, time_base=10_000_000)
    # (10_000_000 + 1500) // 1000 = 10001; (10_000_000 + 999) // 1000 = 10000 (floor)
    assert _cd(res) == [(4, 3, 1, 10001), (639, 479, 0, 10000)]
    assert res.skipped_words == 1
    assert res.time_resyncs == 1  # the third event is earlier than the first: counted


def test_mono_time_base_bounds_and_span() -> None:
    one = np.array([(1 << 63) | (3 << 48) | (4 << 32) | 1500], "<u8").tobytes()
    far = np.array([(4 << 32) | 0xFFFFFFFF], "<u8").tobytes()  # dt 4_294_967_295 ns
    decoder = make_decoder("mono", 640, 480)
    # 2**62 ns is the largest time_base: (2**62 + 1500) // 1000
    assert decoder.decode(one, time_base=1 << 62).cd["t"].tolist() == [((1 << 62) + 1500) // 1000]
    for bad in (2**64 - 1, 10**19, (1 << 62) + 1, -1):
        with pytest.raises(EventDecodeError, match="time_base"):
            decoder.decode(one, time_base=bad)
    # 1500 ns and 4.29 s apart: more than the default 1 s span; the window with most events
    # (a tie: the earliest) is kept and the other event counted as dropped.
    res = decoder.decode(one + far, time_base=0)
    assert res.cd["t"].tolist() == [1] and res.events_dropped_span == 1
    both = make_decoder("mono", 640, 480, max_span_us=None).decode(one + far, time_base=0)
    assert both.cd["t"].tolist() == [1, 4_294_967] and both.events_dropped_span == 0
