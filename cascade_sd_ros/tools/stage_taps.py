"""This process's side of runs whose stages live in other processes: per run (a namespace) a sensor
player that feeds it, a caption collector that hears its final captions and, for a verifier with no
drafter of its own, an offset relay (the clock offset another run's rounds used), on one rclpy
context spun in the background.

A run is ready when discovery has finished both ways: the player's publishers have matched the
stages' subscriptions (seen here), and the verifier's caption publisher has matched the collector
(seen only by the verifier: its diagnostics say so). A graph that merely lists the verifier's
publisher is not enough: a volatile writer sends nothing to a reader it has not matched yet, so on a
loaded machine a run's first caption could be lost and its scene counted as missing."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from cascade_sd_ros.core.names import TOPIC_CAPTION, TOPIC_COMMIT, TOPIC_DRAFTS_DRAFTER, TOPIC_DRAFTS_REFINER
from cascade_sd_ros.tools.diagnostics import DiagnosticsListener
from cascade_sd_ros.tools.pipeline import (
    NODE_OF_STAGE,
    CaptionCollector,
    OffsetRelay,
    PipelineConfig,
    SensorPlayer,
    new_context,
)
from cascade_sd_ros.tools.stage_processes import StageProcesses


@dataclass
class Tap:
    namespace: str
    config: PipelineConfig
    player: SensorPlayer
    collector: CaptionCollector
    relay: OffsetRelay | None = None


class StageTaps:
    """Players and collectors for runs in other processes; a context manager."""

    def __init__(self) -> None:
        self.context = new_context()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.taps: dict[str, Tap] = {}
        self._diag_node = Node("stage_taps_diagnostics", context=self.context)
        self.diagnostics = DiagnosticsListener(self._diag_node)
        self.executor.add_node(self._diag_node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="stage-taps", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutdown races; nothing left to serve
                if self._stop.is_set() or not self.context.ok():
                    return
                raise

    def add(self, name: str, namespace: str, config: PipelineConfig, relay_offsets: bool = False) -> Tap:
        """A run in ``namespace``; ``relay_offsets``: its verifier is told clock offsets by :meth:`relay`."""
        tap = Tap(
            namespace,
            config,
            SensorPlayer(context=self.context, namespace=namespace),
            CaptionCollector(context=self.context, namespace=namespace),
            OffsetRelay(context=self.context, namespace=namespace) if relay_offsets else None,
        )
        self.executor.add_node(tap.collector)
        self.taps[name] = tap
        return tap

    def _ready(self, tap: Tap) -> bool:
        s = tap.config.stages
        node = tap.player
        ns = tap.namespace
        ok = (
            node.matched(tap.config.image_subscribers(), tap.config.event_subscribers())
            and node.count_publishers(f"{ns}/{TOPIC_CAPTION}") >= 1
        )
        # the stages must hear each other before a round depends on it
        if "drafter" in s:
            ok = ok and node.count_subscribers(f"{ns}/{TOPIC_DRAFTS_DRAFTER}") >= 1 + ("refiner" in s)
            ok = ok and node.count_subscribers(f"{ns}/{TOPIC_COMMIT}") >= ("drafter" in s) + ("refiner" in s)
        if "refiner" in s:
            ok = ok and node.count_publishers(f"{ns}/{TOPIC_DRAFTS_REFINER}") >= 1
        if tap.relay is not None:
            ok = ok and tap.relay.matched()
        verifier = self.diagnostics.values(f"{ns}/{NODE_OF_STAGE['verifier']}")
        return ok and int(verifier.get(f"matched_subscribers.{TOPIC_CAPTION}", "0")) >= 1

    def wait_ready(self, procs: StageProcesses, timeout_s: float) -> None:
        """Until every run's stages have loaded their models (they subscribe after warm-up) and
        found each other; RuntimeError if a stage process died or the time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            procs.check_alive()
            if all(self._ready(t) for t in self.taps.values()):
                return
            time.sleep(0.1)
        waiting = [name for name, t in self.taps.items() if not self._ready(t)]
        raise RuntimeError(f"stage processes of {waiting} not ready after {timeout_s:.0f} s (logs in {procs.workdir})")

    def relay(self, name: str, offset_ms: float, source: str, stamp_ns: int) -> bool:
        """Tell run ``name``'s verifier the clock offset a round used (:meth:`OffsetRelay.relay`)."""
        relay = self.taps[name].relay
        if relay is None:
            raise ValueError(f"run {name!r} was added without relay_offsets")
        return relay.relay(offset_ms, source, stamp_ns)

    def play(self, name: str, scene: Any, rounds: Any, rate: float | None) -> None:
        self.taps[name].player.play(scene, event_offset_ns=rounds.event_offset_ns, rate=rate)

    def wait_final(self, name: str, round_id: int, timeout_s: float, procs: StageProcesses) -> Any | None:
        """The run's final caption of ``round_id``, or None after ``timeout_s``; RuntimeError when a
        stage process died meanwhile."""
        collector = self.taps[name].collector
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if collector.wait_final(round_id=round_id, timeout_s=min(1.0, max(deadline - time.monotonic(), 0.0))):
                return collector.finals[round_id]
            procs.check_alive()
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        for tap in self.taps.values():
            self.executor.remove_node(tap.collector)
            tap.collector.destroy_node()
            tap.player.destroy_node()
            if tap.relay is not None:
                tap.relay.destroy_node()
        self.taps = {}
        self.executor.remove_node(self._diag_node)
        self._diag_node.destroy_node()
        self.executor.shutdown(timeout_sec=2.0)
        if self.context.ok():
            rclpy.shutdown(context=self.context)

    def __enter__(self) -> "StageTaps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
