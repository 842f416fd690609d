"""Every worker's own copy of the trust state, read from the governance topic from the start.

The governance topic has one partition, so one total order. A follower applies it in order to a
:class:`TrustStore` and remembers each offset's verdict. When a market event names a credential
the follower has not seen, the verifier asks it to catch up to the topic's end first, so an event
published after its credential is never refused for a lagging view.

Trust anchors are configuration (``chargemesh anchors add|remove`` rewrite the anchors file).
Before each poll the follower checks the file; when it changed, it rebuilds its store by
replaying the governance topic up to where it was with the new anchors, so a running worker holds
exactly the store a worker started with the new file would, and every later event is judged by
it. Records already admitted stay in the lineage log; the trust they rested on ends there.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from pathlib import Path
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
# Longest a rebuild after an anchors change may replay for (the worker stops past it, and its
# restart loads the new anchors).
ANCHORS_REBUILD_TIMEOUT_S = 120.0


class GovernanceFollower:
    def __init__(self, kafka_config: dict[str, Any], anchors: list[TrustAnchor],
                 anchors_path: Path | None = None) -> None:
        """``anchors_path``: the file ``anchors`` came from, watched for changes (None: not)."""
        self.store = TrustStore(anchors)
        self._anchors_path = anchors_path
        self._anchors_seen = file_signature(anchors_path)
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
            await self._reload_anchors_if_changed()
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

    async def _reload_anchors_if_changed(self) -> None:
        """(Under the lock.) A changed anchors file: rebuild the store with its anchors."""
        seen = file_signature(self._anchors_path)
        if self._anchors_path is None or seen == self._anchors_seen:
            return
        try:
            anchors = TrustAnchor.load_file(self._anchors_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # half-written or hand-broken: keep the anchors in force, look again next poll
            log.error("trust anchors file %s unreadable, anchors unchanged: %r",
                      self._anchors_path, exc)
            self._anchors_seen = seen  # said once; a rewrite of the file is a new change
            return
        await self._rebuild(anchors)
        self._anchors_seen = seen
        log.warning("trust anchors changed (%s): trust store rebuilt from %d governance records "
                    "with anchors %s", self._anchors_path, self._next_offset,
                    sorted(a.authority_id for a in anchors))

    async def _rebuild(self, anchors: list[TrustAnchor]) -> None:
        """Replay offsets [0, next_offset) into a new store with ``anchors``; verdicts the
        governance agent has not taken yet are replaced by the replay's. On failure the old
        store stays and the error propagates (the worker stops; its restart reads the file)."""
        target, loop = self._next_offset, asyncio.get_running_loop()
        old = self.store, self.verdicts
        self.store, self.verdicts, self._next_offset = TrustStore(anchors), (
            collections.OrderedDict()), 0
        try:
            await self._consumer.seek_to_beginning(self._partition)
            deadline = loop.time() + ANCHORS_REBUILD_TIMEOUT_S
            while (self._next_offset < target
                   and await self._consumer.position(self._partition) < target):
                if loop.time() > deadline:
                    raise TimeoutError(f"anchors rebuild stopped at offset {self._next_offset} "
                                       f"of {target}")
                batches = await self._consumer.getmany(
                    self._partition, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS_MAX)
                for record in batches.get(self._partition, []):
                    if self._next_offset <= record.offset < target:
                        self._apply(record.offset, record.key, record.value)
        except BaseException:
            self.store, self.verdicts = old
            raise
        finally:
            self._next_offset = target
            self._consumer.seek(self._partition, target)
        replayed = self.verdicts
        self.verdicts = collections.OrderedDict(
            (offset, replayed[offset]) for offset in old[1] if offset in replayed)

    def verdict_at(self, offset: int) -> Admitted | Refused | None:
        """The verdict of ``offset``, taken: the governance agent asks once per offset and has
        published its outputs before it asks for a later one (a redelivery after that finds
        none and publishes nothing again, which its first pass already did)."""
        return self.verdicts.pop(offset, None)


def file_signature(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a rewritten file (``anchors add`` replaces it) from the one read before."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def compact(verdict: Admitted | Refused) -> Admitted | Refused:
    """A refusal keeps what its rejection record needs (ids, reason, detail), not the refused
    bytes: a hostile governance record of ~1 MB would otherwise stay ~1 MB in every worker."""
    if isinstance(verdict, Admitted) or verdict.event is None:
        return verdict
    body = dataclasses.replace(verdict.event.body, payload=b"", prev_hash=b"")
    rejection = Rejection(verdict.rejection.reason, verdict.rejection.detail[:DETAIL_CHARS_MAX])
    return Refused(rejection, SignedEvent(body, b"", ()))
