"""Publishes a bag's records on their (remapped) topics with a ``/clock``, as the scheduler says.

The play loop runs in the calling thread; the pipeline's executor spins elsewhere. Records go out as
the raw CDR bytes of the bag. Outputs reported back through :meth:`Player.observe` (the recorder's
callback) tell the scheduler which rounds are in flight; an output wakes a waiting player at once.
Fast mode paces on what the pipeline's own subscriptions have taken (:class:`TakeCounter`).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.names import split_ns
from cascade_sd_ros.tools.replay.msgtypes import rclpy_type
from cascade_sd_ros.tools.replay.progress import ProgressBar, ProgressState
from cascade_sd_ros.tools.replay.schedule import Publish, Scheduler
from cascade_sd_ros.tools.replay.source import Record

VERIFIED_CAPTION_TYPE = "cascade_sd_ros/msg/VerifiedCaption"
ROUND_TYPES = frozenset({"cascade_sd_ros/msg/DraftTokens", "cascade_sd_ros/msg/Commit", VERIFIED_CAPTION_TYPE})
PUBLISH_DEPTH = 100  # [messages] reliable publishers keep this many for a slow subscriber
CLOCK_STEP_NS = 10_000_000  # [ns] /clock resolution (100 Hz of bag time, as ros2 bag play's default)
# [s] fast mode: a pipeline that took nothing for this long is passed (counted); long, because a
# loaded 2-core machine has held an executor thread off the CPU for over a second
TAKE_TIMEOUT_S = 5.0


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)  # topic -> records published
    wall_s: float = 0.0
    held_s: float = 0.0  # [s] fast mode: time the pipeline held the player
    drain_s: float = 0.0  # [s] after the last record, waiting for rounds to finish
    stalled_rounds: list[int] = field(default_factory=list)
    drain_timed_out: bool = False
    unfinished_rounds: list[int] = field(default_factory=list)  # open when the drain stopped
    take_timeouts: int = 0  # fast mode: records the pipeline had not taken in time (moved on anyway)
    # topic -> records DDS refused (a reliable reader so far behind that the writer's history stayed
    # full past its blocking time): a sensor would have dropped them too; counted, never fatal
    publish_failures: dict[str, int] = field(default_factory=dict)


class TakeCounter:
    """How many records of each played topic the pipeline's own subscriptions have taken.

    Each subscription's callback is wrapped to count its calls: a call means the record left that
    subscription's KEEP_LAST queue. Fast mode keeps at most a window of records per topic un-taken
    by the slowest subscription (half its queue's depth), so no queue overflows. (An echo
    subscription of the player's own, once used instead, measured the executor, not the nodes: a
    node whose callbacks are slower than the executor's round, or blocked by its mutually
    exclusive group, fell behind the echo and lost records: 13 of 120 at 20 ms a packet.)
    """

    def __init__(self, nodes: Iterable[Node], topics: Iterable[str]) -> None:
        played = set(topics)
        self._cond = threading.Condition()
        self._taken: dict[str, list[int]] = {}  # topic -> per subscription, records taken
        for sub in (sub for node in nodes for sub in node.subscriptions):
            if sub.topic_name in played:
                counts = self._taken.setdefault(sub.topic_name, [])
                counts.append(0)
                sub.callback = self._counted(sub.callback, sub.topic_name, len(counts) - 1)

    def _counted(self, callback: Callable[..., Any], topic: str, index: int) -> Callable[..., Any]:
        # wraps: rclpy reads the callback's signature (message, or message and info) through __wrapped__
        @functools.wraps(callback)
        def counted(*args: Any) -> Any:
            with self._cond:
                self._taken[topic][index] += 1
                self._cond.notify_all()
            return callback(*args)

        return counted

    def readers(self, topic: str) -> int:
        """Subscriptions of the pipeline that take ``topic``."""
        return len(self._taken.get(topic, ()))

    def taken(self, topic: str) -> int:
        """Records of ``topic`` every subscription has taken (the slowest one's count)."""
        with self._cond:
            return min(self._taken.get(topic) or [0])

    def wait(self, topic: str, count: int, timeout_s: float) -> bool:
        """Wait until every subscription of ``topic`` has taken ``count`` records (no subscription:
        nothing to wait for)."""
        if topic not in self._taken:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: min(self._taken[topic]) >= count, timeout=timeout_s)


class PlayerNode(Node):
    """Publishers for the bag's topics and ``/clock``."""

    def __init__(self, topics: dict[str, str], **node_kwargs: Any) -> None:
        super().__init__("replay_player", **node_kwargs)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=PUBLISH_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        # Reliable publishers reach reliable and best-effort subscribers alike.
        self._pubs = {
            topic: self.create_publisher(rclpy_type(msgtype), topic, qos) for topic, msgtype in topics.items()
        }
        self._clock_pub = self.create_publisher(
            Clock, "/clock", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        )
        self._last_clock: int | None = None

    def publish_clock(self, t_ns: int, force: bool = False) -> None:
        """``/clock`` at ``t_ns``, at most once per ``CLOCK_STEP_NS`` of bag time unless ``force``:
        every node on sim time handles each tick, and per-record ticks of a 1 ms event stream
        would swamp them."""
        if self._last_clock is not None and (
            t_ns <= self._last_clock or (not force and t_ns - self._last_clock < CLOCK_STEP_NS)
        ):
            return
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = split_ns(t_ns)
        self._clock_pub.publish(msg)
        self._last_clock = t_ns

    def publish_raw(self, topic: str, raw: bytes) -> None:
        self._pubs[topic].publish(raw)


class Player:
    """Drives :class:`PlayerNode` through a bag's records under a :class:`Scheduler`.

    Args:
        node: the publishers.
        scheduler: pacing/holding policy.
        end_bag_ns: bag time of the last record (drain and progress).
        takes: fast mode: what the pipeline's subscriptions have taken (:class:`TakeCounter`); a
            burst into a KEEP_LAST sensor queue would overwrite unread records.
        take_timeout_s: fast mode: longest wait for the pipeline to take a record before the next
            one (counted in ``take_timeouts``; a pipeline that stopped taking must not hang the replay).
        take_window: fast mode: topic -> records that may be in flight un-taken (default 1).
        settle_s: after the last round is final, how long to wait for another one to open.
        drain_quiet_s: after the last record, stop waiting for open rounds once no output came
            for this long (a verifier under overload drops its oldest rounds, which never end).
        drain_timeout_s: give up waiting for rounds after the last record after this long.
        on_record: called for every record published (e.g. the recorder keeps /ground_truth).
    """

    def __init__(
        self,
        node: PlayerNode,
        scheduler: Scheduler,
        end_bag_ns: int,
        *,
        takes: TakeCounter | None = None,
        take_timeout_s: float = TAKE_TIMEOUT_S,
        take_window: dict[str, int] | None = None,
        settle_s: float = 1.0,
        drain_quiet_s: float = 15.0,
        drain_timeout_s: float = 120.0,
        progress: ProgressBar | None = None,
        on_record: Callable[[Record, int], None] | None = None,
    ) -> None:
        self.node = node
        self.scheduler = scheduler
        self.end_bag_ns = end_bag_ns
        self.takes = takes
        self.take_timeout_s = take_timeout_s
        self.take_window = dict(take_window or {})
        self.settle_s = settle_s
        self.drain_quiet_s = drain_quiet_s
        self.drain_timeout_s = drain_timeout_s
        self.progress = progress or ProgressBar(enabled=False)
        self.on_record = on_record
        self._store = bagio.typestore()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._t0 = time.monotonic()
        self._last_output_wall = self._t0
        self.stats = PlayStats()

    def clock_ns(self) -> int:
        """Bag time ``/clock`` stands at (the recorder stamps outputs with it)."""
        return self.scheduler.clock_ns

    def observe(self, topic: str, msgtype: str, raw: bytes) -> None:
        """An output arrived (recorder thread): update rounds in flight and wake the player."""
        if msgtype not in ROUND_TYPES:
            return
        msg = self._store.deserialize_cdr(raw, msgtype)
        final = bool(msg.final) if msgtype == VERIFIED_CAPTION_TYPE else False
        with self._lock:
            self.scheduler.tracker.observe(int(msg.round_id), final, self.scheduler.clock_ns, time.monotonic())
            self._last_output_wall = time.monotonic()
        self._wake.set()

    def _state(self, held: bool = False) -> ProgressState:
        tr = self.scheduler.tracker
        total_s = max(0.0, (self.end_bag_ns - self.scheduler.start_bag_ns) / 1e9)
        return ProgressState(
            # the drain runs /clock past the last record: the bar shows the bag, not the drain
            bag_s=min(total_s, max(0.0, (self.scheduler.clock_ns - self.scheduler.start_bag_ns) / 1e9)),
            total_s=total_s,
            rounds_opened=tr.opened,
            rounds_final=len(tr.finished),
            wall_s=time.monotonic() - self._t0,
            held=held,
        )

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()

    def play(self, records: Iterable[Record]) -> PlayStats:
        self._t0 = time.monotonic()
        with self._lock:
            self.scheduler.start(self._t0)
        paced_by_takes = self.scheduler.rate is None and self.takes is not None
        for rec in records:
            while True:
                with self._lock:
                    action = self.scheduler.plan(rec.t_ns, time.monotonic())
                self.node.publish_clock(action.clock_ns)
                if isinstance(action, Publish):
                    break
                t = time.monotonic()
                self._sleep(action.seconds)
                if action.gated:
                    self.stats.held_s += time.monotonic() - t
                self.progress.update(self._state(held=action.gated))
            try:
                self.node.publish_raw(rec.topic, rec.raw)
            except _rclpy.RCLError:
                self.stats.publish_failures[rec.topic] = self.stats.publish_failures.get(rec.topic, 0) + 1
                continue
            self.stats.published[rec.topic] = self.stats.published.get(rec.topic, 0) + 1
            if self.on_record is not None:
                self.on_record(rec, action.clock_ns)
            self.progress.update(self._state())
            if paced_by_takes:
                assert self.takes is not None
                behind = self.stats.published[rec.topic] - max(1, self.take_window.get(rec.topic, 1)) + 1
                if not self.takes.wait(rec.topic, behind, self.take_timeout_s):
                    self.stats.take_timeouts += 1
        self._drain()
        self.stats.wall_s = time.monotonic() - self._t0
        self.stats.stalled_rounds = sorted(self.scheduler.tracker.stalled)
        self.progress.close(self._state())
        return self.stats

    def _drain(self) -> None:
        """Keep /clock going until no round is in flight and none opened for ``settle_s``."""
        t_start = time.monotonic()
        while True:
            now = time.monotonic()
            if now - t_start > self.drain_timeout_s:
                self.stats.drain_timed_out = True
                self.stats.unfinished_rounds = list(self.scheduler.tracker.in_flight())
                break
            with self._lock:
                action = self.scheduler.drain(self.end_bag_ns, now)
                quiet = now - self._last_output_wall
            if action is not None and quiet >= self.drain_quiet_s:
                # Rounds still open but the cascade has said nothing for long: a stage dropped them
                # (overload) or is gone. Stop waiting; the report lists what never became final.
                self.stats.unfinished_rounds = list(self.scheduler.tracker.in_flight())
                break
            if action is None:
                # Nothing in flight: wait a little in case a round is about to open.
                self.node.publish_clock(self.scheduler.clock_ns, force=True)
                if quiet >= self.settle_s and now - t_start >= self.settle_s:
                    break
                self._sleep(min(0.05, self.settle_s))
            else:
                self.node.publish_clock(action.clock_ns)
                self._sleep(action.seconds)
            self.progress.update(self._state(held=action is not None and action.gated))
        self.stats.drain_s = time.monotonic() - t_start
