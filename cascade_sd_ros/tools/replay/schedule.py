"""When the replay player publishes each bag message: the ROS-free half of the player.

Two policies:

* **paced** (``--rate R``): a message recorded at bag time ``t`` is due ``(t − t0) / R`` wall
  seconds after the start, and ``/clock`` follows bag time in between messages;
* **fast** (``--fast``): no wall pacing; the player only waits for the pipeline. Once a round is
  seen to open, bag time may run at most ``lookahead`` beyond where it stood then, until that
  round's final caption arrives. The lookahead lets the frames just after ``T`` (nearest-frame
  alignment, a refiner waiting ``max_wait`` of sim time) arrive, while buffers sized for a real-time
  camera never have to hold more than a lookahead of data: nothing is pushed faster than the
  cascade consumes it. A round that never finishes (a stage down) stops holding the player after
  ``stall_s`` of wall time and is reported as stalled.

The player (replay_player.py) asks :meth:`Scheduler.plan` what to do next and sleeps or publishes;
every decision is a pure function of the bag times, the wall clock it is handed and the rounds seen,
so it is unit-tested without ROS.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundTracker:
    """Rounds the pipeline's outputs have shown: opened (any output naming the round) and final.

    Round ids are the rounds' times ``T`` (cascade_sd_ros.core.rounds.round_id_for), so id order is
    time order.
    """

    opened_at_bag_ns: dict[int, int] = field(default_factory=dict)  # round id -> bag time when first seen
    opened_at_wall: dict[int, float] = field(default_factory=dict)  # round id -> wall time when first seen
    finished: set[int] = field(default_factory=set)
    stalled: set[int] = field(default_factory=set)
    superseded: set[int] = field(default_factory=set)  # open rounds older than a final one

    def observe(self, round_id: int, final: bool, bag_ns: int, wall: float) -> None:
        """Record one output message of ``round_id`` seen while bag time stood at ``bag_ns``."""
        if round_id not in self.opened_at_bag_ns:
            self.opened_at_bag_ns[round_id] = bag_ns
            self.opened_at_wall[round_id] = wall
        if final:
            self.finished.add(round_id)
            self.stalled.discard(round_id)
            # The verifier finishes rounds in time order (round ids are times T): an older round
            # still open was dropped or ignored by it and will never be final.
            self.superseded.update(r for r in self.in_flight() if r < round_id)

    def in_flight(self) -> list[int]:
        """Rounds opened, not final and not given up on, oldest first."""
        done = self.finished | self.stalled | self.superseded
        return sorted(
            (r for r in self.opened_at_bag_ns if r not in done),
            key=lambda r: (self.opened_at_bag_ns[r], r),
        )

    def mark_stalled(self, now_wall: float, stall_s: float) -> list[int]:
        """Give up waiting on rounds in flight for longer than ``stall_s``; returns the new ones."""
        newly = [r for r in self.in_flight() if now_wall - self.opened_at_wall[r] > stall_s]
        self.stalled.update(newly)
        return newly

    @property
    def opened(self) -> int:
        return len(self.opened_at_bag_ns)


@dataclass(frozen=True)
class Publish:
    """Publish the next message now, with ``/clock`` at ``clock_ns`` first."""

    clock_ns: int


@dataclass(frozen=True)
class Wait:
    """Nothing due: sleep up to ``seconds`` (less if an output arrives), ``/clock`` at ``clock_ns``."""

    seconds: float
    clock_ns: int
    gated: bool = False  # True when the pipeline (not pacing) holds the player


@dataclass
class Scheduler:
    """Decides, message by message, between publishing and waiting.

    Args:
        start_bag_ns: bag time of the first message (``/clock`` starts there).
        rate: wall pacing factor (1.0 = recorded speed); ``None`` for fast mode.
        lookahead_ns: fast mode: how far bag time may run past a round opened and not final.
        stall_s: fast mode: wall seconds after which an unfinished round stops holding the player.
        clock_period_s: how often ``/clock`` ticks while nothing is published.
    """

    start_bag_ns: int
    rate: float | None
    lookahead_ns: int = 500_000_000
    stall_s: float = 60.0
    clock_period_s: float = 0.01
    tracker: RoundTracker = field(default_factory=RoundTracker)
    _wall0: float | None = None
    _clock_ns: int = 0

    def __post_init__(self) -> None:
        if self.rate is not None and not (self.rate > 0.0):
            raise ValueError(f"rate must be > 0 (got {self.rate}); use fast mode for 'as fast as possible'")
        if self.lookahead_ns < 0:
            raise ValueError(f"lookahead must be >= 0 ns (got {self.lookahead_ns})")
        if not (self.stall_s > 0.0):
            raise ValueError(f"stall_s must be > 0 (got {self.stall_s})")
        self._clock_ns = self.start_bag_ns

    @property
    def clock_ns(self) -> int:
        """Bag time ``/clock`` stands at."""
        return self._clock_ns

    def start(self, now_wall: float) -> None:
        self._wall0 = now_wall

    def _paced_bag_ns(self, now_wall: float) -> int:
        """Bag time that wall time ``now_wall`` corresponds to under pacing."""
        assert self._wall0 is not None and self.rate is not None
        return self.start_bag_ns + int((now_wall - self._wall0) * self.rate * 1e9)

    def gate_limit_ns(self, now_wall: float) -> int | None:
        """Fast mode: latest bag time the pipeline accepts now (None: not held)."""
        self.tracker.mark_stalled(now_wall, self.stall_s)
        waiting = self.tracker.in_flight()
        if not waiting:
            return None
        return self.tracker.opened_at_bag_ns[waiting[0]] + self.lookahead_ns

    def plan(self, next_bag_ns: int, now_wall: float) -> Publish | Wait:
        """What to do about the next message, recorded at ``next_bag_ns``."""
        if self._wall0 is None:
            raise RuntimeError("Scheduler.start() must be called before plan()")
        if self.rate is not None:
            paced = self._paced_bag_ns(now_wall)
            if paced >= next_bag_ns:
                self._clock_ns = max(self._clock_ns, next_bag_ns)
                return Publish(self._clock_ns)
            self._clock_ns = max(self._clock_ns, paced)
            remaining_s = (next_bag_ns - paced) / 1e9 / self.rate
            return Wait(min(remaining_s, self.clock_period_s), self._clock_ns)
        limit = self.gate_limit_ns(now_wall)
        if limit is None or next_bag_ns <= limit:
            self._clock_ns = max(self._clock_ns, next_bag_ns)
            return Publish(self._clock_ns)
        # Held: let sim time reach the limit, so stages waiting on sim-time deadlines move on.
        self._clock_ns = max(self._clock_ns, limit)
        return Wait(self.clock_period_s, self._clock_ns, gated=True)

    def drain(self, end_bag_ns: int, now_wall: float) -> Wait | None:
        """After the last message: keep ``/clock`` moving while rounds finish.

        Paced mode advances sim time with the wall clock (up to a lookahead past the end); fast
        mode lets it run to the gate limit. Returns None once no round is in flight.
        """
        if self._wall0 is None:
            raise RuntimeError("Scheduler.start() must be called before drain()")
        self.tracker.mark_stalled(now_wall, self.stall_s)
        if not self.tracker.in_flight():
            return None
        if self.rate is not None:
            # Sim time goes on with the wall clock, but only a lookahead past the bag's end: a
            # drafter on a sim-time timer must not open rounds on a camera that has stopped.
            paced = min(self._paced_bag_ns(now_wall), end_bag_ns + self.lookahead_ns)
            self._clock_ns = max(self._clock_ns, paced, end_bag_ns)
        else:
            limit = self.gate_limit_ns(now_wall)
            self._clock_ns = max(self._clock_ns, end_bag_ns if limit is None else limit)
        return Wait(self.clock_period_s, self._clock_ns, gated=self.rate is None)
