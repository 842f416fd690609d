"""Every worker's own copy of the trust state, read from the governance topic from the start.

The governance topic has one partition, so one total order. A follower applies it in order to a
:class:`TrustStore` and remembers each offset's verdict. When a market event names a credential
the follower has not seen, the verifier asks it to catch up to the topic's end first, so an event
published after its credential is never refused for a lagging view.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.ingress import DETAIL_CHARS_MAX, Admitted, Refused, admit_governance
from chargemesh.processors.reasons import Rejection
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.topics import GOVERNANCE

log = logging.getLogger(__name__)

FETCH_RECORDS_MAX = 2_000
FETCH_TIMEOUT_MS = 200
CATCH_UP_TIMEOUT_S = 10.0
# Verdicts the governance agent has not taken yet (how far the follower reads ahead of it); a
# refusal is kept compact (ids, reason, detail: about 1.5 kB at most).
VERDICTS_KEPT_MAX = 1_000_000


class GovernanceFollower:
    def __init__(self, kafka_config: dict[str, Any], anchors: list[TrustAnchor],
                 processors: list[TrustAnchor] | None = None) -> None:
        self.store = TrustStore(anchors, processors)
        self._partition = TopicPartition(GOVERNANCE.name, 0)
        self._bootstrap = kafka_config["bootstrap.servers"]
        self._consumer_or_none: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._next_offset = 0
        self.verdicts: collections.OrderedDict[int, Admitted | Refused] = (
            collections.OrderedDict()
        )

    @property
    def next_offset(self) -> int:
        return self._next_offset

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._consumer_or_none is None:
            raise RuntimeError("GovernanceFollower.start() was not awaited")
        return self._consumer_or_none

    async def start(self) -> None:
        # aiokafka binds to the running loop, so the consumer is made here, not in __init__.
        self._consumer_or_none = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            fetch_max_wait_ms=FETCH_TIMEOUT_MS,
        )
        await self._consumer.start()
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_beginning(self._partition)

    async def stop(self) -> None:
        await self._consumer.stop()

    def _apply(self, offset: int, key: bytes | None, value: bytes) -> None:
        verdict = admit_governance(value, key, self.store)
        self.verdicts[offset] = compact(verdict)
        while len(self.verdicts) > VERDICTS_KEPT_MAX:
            self.verdicts.popitem(last=False)
        self._next_offset = offset + 1

    async def poll_once(self) -> int:
        async with self._lock:
            batches = await self._consumer.getmany(
                self._partition, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS_MAX
            )
            count = 0
            for record in batches.get(self._partition, []):
                if record.offset >= self._next_offset:
                    self._apply(record.offset, record.key, record.value)
                    count += 1
            return count

    async def catch_up(self, until_offset: int | None = None) -> None:
        """Apply everything up to ``until_offset`` (exclusive), or to the topic's current end."""
        if until_offset is None:
            ends = await self._consumer.end_offsets([self._partition])
            until_offset = ends[self._partition]
        deadline = asyncio.get_running_loop().time() + CATCH_UP_TIMEOUT_S
        while self._next_offset < until_offset:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("governance catch-up to %s stopped at %s", until_offset,
                            self._next_offset)
                return
            await self.poll_once()

    def verdict_at(self, offset: int) -> Admitted | Refused | None:
        """The verdict of ``offset``, taken: the governance agent asks once per offset and has
        published its outputs before it asks for a later one (a redelivery after that finds
        none and publishes nothing again, which its first pass already did)."""
        return self.verdicts.pop(offset, None)


def compact(verdict: Admitted | Refused) -> Admitted | Refused:
    """A refusal keeps what its rejection record needs (ids, reason, detail), not the refused
    bytes: a hostile governance record of ~1 MB would otherwise stay ~1 MB in every worker."""
    if isinstance(verdict, Admitted) or verdict.event is None:
        return verdict
    body = dataclasses.replace(verdict.event.body, payload=b"", prev_hash=b"")
    rejection = Rejection(verdict.rejection.reason, verdict.rejection.detail[:DETAIL_CHARS_MAX])
    return Refused(rejection, SignedEvent(body, b"", ()))
