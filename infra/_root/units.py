"""Time in chargemesh is UTC epoch milliseconds: the one definition of each duration constant.

Imports nothing, so every layer (schemas, streams, processors, sinks, infra) may import it.
"""

from __future__ import annotations

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
