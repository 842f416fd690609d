"""What operators read about a worker: batches, events and time per phase, logged every
STATS_INTERVAL_S, and where every task waits when a batch runs for too long."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0
STUCK_BATCH_S = 10.0
STACK_FRAMES_MAX = 8


class BatchStats:
    """Batches, events and time spent, logged every STATS_INTERVAL_S (operators read these)."""

    def __init__(self) -> None:
        self.batches = self.events = 0
        self.busy_s = 0.0
        self.phases: dict[str, float] = {}
        self.offsets: dict[int, tuple[int, int]] = {}
        self.batch_started_s = 0.0  # perf_counter at the start of the running batch; 0: none

    def record(self, events: int, busy_s: float) -> None:
        self.batches += 1
        self.events += events
        self.busy_s += busy_s

    def offset(self, partition: int, offset: int) -> None:
        low, high = self.offsets.get(partition, (offset, offset))
        self.offsets[partition] = (min(low, offset), max(high, offset))

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def report(self) -> None:
        if self.batches:
            phases = " ".join(f"{k}={v:.2f}s" for k, v in sorted(self.phases.items()))
            log.info("market: %d events in %d batches (%.1f per batch), busy %.2fs %s offsets %s",
                     self.events, self.batches, self.events / self.batches, self.busy_s, phases,
                     dict(sorted(self.offsets.items())))
        self.batches = self.events = 0
        self.busy_s = 0.0
        self.phases = {}
        self.offsets = {}

    def watch_stuck_batch(self) -> None:
        """Log where every task waits when a market batch has run for too long."""
        started = self.batch_started_s
        if started and time.perf_counter() - started > STUCK_BATCH_S:
            for task in asyncio.all_tasks():
                frames = task.get_stack(limit=STACK_FRAMES_MAX)
                where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)
                log.warning("batch running %.0fs; task %s at %s",
                            time.perf_counter() - started, task.get_name(), where)
