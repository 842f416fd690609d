"""The topic catalogue: every topic chargemesh reads or writes, declared once.

Other teams build on these names; ``docs`` below is what ``chargemesh topics`` prints and what the
README's topic table documents. Every value is an Avro single-object-encoded
``chargemesh.envelope.v1.SignedEvent`` (see ``chargemesh.streams.envelope``), except the rejections
topic whose value is a ``chargemesh.envelope.v1.EventRejected`` record.
"""

from __future__ import annotations

import dataclasses

# Lineage is kept for the regulatory retention period (3-7 years, longer cross-border):
# lineage topics never delete. -1 = keep forever.
RETENTION_FOREVER_MS = -1
MESSAGE_BYTES_MAX = 1_048_576


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    doc: str
    # None = the deployment's partition count (Settings.partitions).
    partitions: int | None = None
    retention_ms: int = RETENTION_FOREVER_MS
    lineage: bool = True

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "delete",
            "max.message.bytes": str(MESSAGE_BYTES_MAX),
        }


GOVERNANCE = TopicSpec(
    name="chargemesh.governance.v1",
    key="authority_id",
    partitions=1,  # one total order for the trust state; every worker reads all of it
    doc="Authorities, issuer delegations, credentials, revocations, reciprocity, rate filings, "
    "allocation rules, grid zone registrations and grid programs.",
)
MARKET = TopicSpec(
    name="chargemesh.market.v1",
    key="station_id",
    doc="Everything a station's single-writer ledger orders: slot calendars, capacity changes, "
    "bids, posted-price acceptances, walk-ups, session evidence (handshake, meter readings, "
    "re-price accept, stop, close-out, countersignature).",
)
GRID = TopicSpec(
    name="chargemesh.grid.v1",
    key="grid_zone_id",
    doc="Grid operators' signed events: price signals, capacity limits, curtailment, "
    "observer co-signatures, settlement co-signatures.",
)
ADMITTED = TopicSpec(
    name="chargemesh.admitted.v1",
    key="same key as the source topic",
    doc="The lineage log: every admitted input event, its original signed bytes unchanged, in "
    "admission order, with headers naming the source topic, partition and offset. Regulators "
    "replay this (with decisions and settlements) to audit.",
)
DECISIONS = TopicSpec(
    name="chargemesh.decisions.v1",
    key="station_id",
    doc="Ledger decisions: slot reserved / released / re-allocated, order rejected, walk-up "
    "authorised, re-price proposed, session stopped by order, re-evaluations.",
)
SETTLEMENTS = TopicSpec(
    name="chargemesh.settlements.v1",
    key="session_id",
    doc="SettlementAdmitted (with line items) and SettlementFinalised: the billing feed.",
)
DISPUTES = TopicSpec(
    name="chargemesh.disputes.v1",
    key="session_id",
    doc="DisputeRecorded: each accepted dispute change (opened, evidence added, resolved "
    "with its outcome), decided by the station ledger; corrections go to the settlements topic.",
)
REJECTIONS = TopicSpec(
    name="chargemesh.rejections.v1",
    key="source_topic",
    doc="Every input that was not admitted, with a reason code and the original bytes.",
)
CHECKPOINTS = TopicSpec(
    name="chargemesh.checkpoints.v1", key="<log topic>/<partition>", partitions=1,
    doc="Signed Merkle tree heads (RFC 9162) over each partition of the admitted, decisions and "
    "settlements logs, each with a consistency proof from the previous one (P5 audit).",
)

# Processor state, partitioned like the input it belongs to (log of every state version; a
# worker restores an input partition's state by reading the same partition here).
STATION_LEDGER_STATE = TopicSpec(
    name="chargemesh.state.station-ledger.v1", key="station_id", lineage=False,
    doc="Processor state: each station's slot ledger (JSON), one record per batch that touched it.",
)
EVENT_POSITION_STATE = TopicSpec(
    name="chargemesh.state.event-position.v1", key="event_id", lineage=False,
    doc="Processor state: where each market event id was first seen (replay detection).",
)
ZONE_STATIONS_STATE = TopicSpec(
    name="chargemesh.state.zone-stations.v1", key="grid_zone_id", lineage=False,
    doc="Processor state: the stations of each grid zone (routing of grid events).",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    GOVERNANCE,
    MARKET,
    GRID,
    ADMITTED,
    DECISIONS,
    SETTLEMENTS,
    DISPUTES,
    REJECTIONS,
    CHECKPOINTS,
    STATION_LEDGER_STATE,
    EVENT_POSITION_STATE,
    ZONE_STATIONS_STATE,
)


def partitions_for(spec: TopicSpec, default_partitions: int) -> int:
    return spec.partitions if spec.partitions is not None else default_partitions
