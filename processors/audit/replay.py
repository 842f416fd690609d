"""The regulator's lineage audit (P5). Pure: records in, a report of findings out.

A rate authority replays every settlement filed under it with nothing but the public schemas,
the deployment's trust anchors and the records of the topics
(or of the ClickHouse archive):

1. the governance log is replayed in order into a fresh :class:`TrustStore` (the same functions
   the processors use), so every credential chain is known as of each event's time;
2. every record in scope is decoded and re-verified: participants' events through
   :func:`ingress.admit` (signatures, chain, role, subject, co-signers as of ``occurred_at_ms``),
   the processors' decisions and settlements by a PROCESSOR credential in force at the record's
   time (so a rotated key counts until its revocation), and their ``prev_hash`` must name an
   admitted event (the hash link to the input that caused them);
3. each settlement's session is re-linked (evidence ids, close-out hash, countersignatures,
   finality signers) and recomputed from the filed tariff, the meter evidence and the accepted
   re-prices with the pure settlement functions; the result must equal the admitted lines and
   total to the last minor unit;
4. every signed checkpoint's tree head is recomputed from the log records it covers, and its
   consistency proof from the previous checkpoint is verified.

Every discrepancy is a :class:`Finding` that names the record (event id, topic, partition,
offset) it was found on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from chargemesh.processors.audit import billing
from chargemesh.processors.audit import checkpoints as checkpointer
from chargemesh.processors.audit.checkpoints import Checkpoint, LogRecord
from chargemesh.processors.embodiments import fleet, swap, v2g
from chargemesh.processors.governance import (
    GOVERNANCE_EVENT_TYPES,
    PROCESSOR_ROLE,
    TrustAnchor,
    TrustStore,
)
from chargemesh.processors.ingress import Refused, admit, admit_governance
from chargemesh.processors.policy import POLICIES
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import (
    Reading,
    Reprice,
    Tariff,
    schedule_between,
    segments,
    settle,
    within_claim,
)
from chargemesh.processors.statuses import SettlementShape
from chargemesh.schemas.codec import DecodeError
from chargemesh.streams import merkle, topics
from chargemesh.streams.envelope import SignedEvent, open_envelope, open_payload

GOVERNANCE_PASSES_MAX = 32
FINDINGS_MAX = 100_000
DETAIL_CHARS_MAX = 500
ALL_TIME_MS = (0, 2**62)
SESSION = "chargemesh.session.v1."
CALENDAR = "chargemesh.capacity.v1.SlotCalendarPublished"
SETTLEMENT_ADMITTED = "chargemesh.settlement.v1.SettlementAdmitted"
SETTLEMENT_FINALISED = "chargemesh.settlement.v1.SettlementFinalised"
SETTLEMENT_EXPIRED = "chargemesh.settlement.v1.SettlementExpired"
SETTLEMENT_REVERSED = "chargemesh.settlement.v1.SettlementReversed"
CLOSED_OUT = "chargemesh.session.v1.MeterClosedOut"
SESSION_STOPPED = SESSION + "SessionStopped"
REPRICE_ACCEPTED = SESSION + "RepriceAccepted"
POWER_LIMIT_SET = SESSION + "PowerLimitSet"
SLOT_RESERVED = "chargemesh.ledger.v1.SlotReserved"
REPRICE_PROPOSED = SESSION + "RepriceProposed"
GRID_ROUTED = "chargemesh.grid.v1.GridEventRouted"
CO_SIGNED = "chargemesh.grid.v1.SettlementCoSigned"
SIGNING_TYPES = (SESSION + "CloseOutCountersigned", CO_SIGNED)
SWAPPED = SESSION + "PackSwapCompleted"
WIRELESS = "chargemesh.wireless.v1."
TRIP_AUTHORISED = WIRELESS + "TripAuthorised"
TRIP_CLOSED = WIRELESS + "TripClosed"
PASSES_RECORDED = WIRELESS + "SegmentPassesRecorded"
# Settlements the audit verifies (signatures, chains, hash links, finality) but does not
# recompute, by what they are: reported, never a finding.
NOT_RECOMPUTED_WIRELESS = SettlementShape.WIRELESS_TRIP
PROGRESS_EVERY = 500


@dataclasses.dataclass(frozen=True)
class Finding:
    code: Reason
    event_id: str
    event_type: str
    where: str  # "<topic>/<partition>@<offset>"
    session_id: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


UNATTRIBUTED_LISTED_MAX = 100


@dataclasses.dataclass
class AuditReport:
    authority_id: str
    from_ms: int
    to_ms: int
    source: str
    findings: list[Finding] = dataclasses.field(default_factory=list)
    events_replayed: int = 0
    governance_events: int = 0
    events_verified: int = 0
    settlements_checked: int = 0
    settlements_recomputed: int = 0
    settlements_final: int = 0
    # settlement kind -> count checked but not recomputed (verified only); see the module doc
    settlements_not_recomputed: dict[str, int] = dataclasses.field(default_factory=dict)
    # embodiment (E1..E5 shape: V2G, INTERNAL_ACCOUNTING, SWAP, WIRELESS_TRIP, SESSION) -> count
    settlements_by_shape: dict[str, int] = dataclasses.field(default_factory=dict)
    totals_by_currency: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    # issue 16: SettlementExpired / SettlementReversed records checked, ledger stops over the
    # price checked, sessions under a PowerLimitSet whose readings were judged
    market_rules_checked: dict[str, int] = dataclasses.field(default_factory=dict)
    checkpoints_verified: int = 0
    checkpoints_skipped: int = 0
    # Records on the logs that do not decode at all: they name no authority, so they are not
    # findings of this authority's audit (a tampered record still fails its signed checkpoint,
    # and a settlement citing a record that is missing still fails its hash links). Listed so
    # the regulator sees them: the first UNATTRIBUTED_LISTED_MAX, and the count.
    unattributed_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unattributed_count: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def events_per_s(self) -> float:
        return self.events_replayed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "findings"}
        out["totals_by_currency"] = {k: str(v) for k, v in self.totals_by_currency.items()}
        out["events_per_s"] = round(self.events_per_s, 1)
        out["ok"] = self.ok
        out["findings"] = [f.as_json() for f in self.findings]
        return out


@dataclasses.dataclass(frozen=True)
class AuditSource:
    """What the auditor read. ``governance`` in the order to replay it (``governance_ordered``:
    it is the governance topic itself, else archive rows replayed to a fixpoint); ``logs``: the
    admitted, decisions and settlements records; ``archived``: for archive rows, the event id
    and event hash the archive filed each record under, by (topic, partition, offset)."""

    name: str
    governance: Sequence[LogRecord]
    governance_ordered: bool
    logs: Sequence[LogRecord]
    checkpoints: Sequence[LogRecord]
    archived: dict[tuple[str, int, int], tuple[str, str]] = dataclasses.field(
        default_factory=dict)


@dataclasses.dataclass
class Entry:
    record: LogRecord
    event: SignedEvent
    payload: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.record.topic}/{self.record.partition}@{self.record.offset}"


Progress = Callable[[int], None]


def where_of(record: LogRecord) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"


def names_session(payload: dict[str, Any], sid: str) -> bool:
    """The evidence is of session (or wireless trip) ``sid``; a pass batch, when any of its
    passes is."""
    if "passes" in payload:
        return any(ps.get("trip_id") == sid for ps in payload["passes"])
    return bool(payload.get("session_id", payload.get("trip_id")) == sid)


def comparable(lines: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Lines as numbers (Decimal equality is numeric), not descriptions."""
    return [(str(ln["kind"]), int(ln["quantity_wh"]), Decimal(ln["unit_rate_per_kwh"]),
             Decimal(ln["amount"]), int(ln["from_at_ms"]), int(ln["until_at_ms"]))
            for ln in lines]


class Audit:
    """One audit run over one source (build, then :meth:`run`)."""

    def __init__(self, source: AuditSource, anchors: list[TrustAnchor], authority_id: str,
                 window_ms: tuple[int, int] = ALL_TIME_MS,
                 progress: Progress | None = None) -> None:
        self.source = source
        # The processors' PROCESSOR credentials come from the governance replay like any other:
        # a record counts if its signer held one, unrevoked, at the record's time (rotation).
        self.store = TrustStore(anchors)
        self.authority_id = authority_id
        self.from_ms, self.to_ms = window_ms
        self.progress = progress or (lambda n: None)
        self.clock: Callable[[], float] = no_clock
        self.report = AuditReport(authority_id, self.from_ms, self.to_ms, source.name)
        self.entries: list[Entry] = []
        self.by_id: dict[str, Entry] = {}
        self.by_hash: dict[bytes, Entry] = {}
        self.verified: dict[tuple[str, int, int], bool] = {}
        self._done = 0

    # ---- findings ---------------------------------------------------------------------------

    def find(self, code: Reason, record: LogRecord | None, event: SignedEvent | None,
             detail: str, session_id: str = "") -> None:
        if len(self.report.findings) >= FINDINGS_MAX:
            return
        archived = self.source.archived.get((record.topic, record.partition, record.offset)) \
            if record else None
        event_id = archived[0] if archived else (event.event_id if event else "")
        self.report.findings.append(Finding(
            code, event_id, event.event_type if event else "",
            where_of(record) if record else "", session_id, detail[:DETAIL_CHARS_MAX]))

    def _tick(self) -> None:
        self._done += 1
        if self._done % PROGRESS_EVERY == 0:
            self.progress(self._done)

    # ---- 1. governance ----------------------------------------------------------------------

    def replay_governance(self) -> None:
        pending = list(self.source.governance)
        passes = 1 if self.source.governance_ordered else GOVERNANCE_PASSES_MAX
        refused: list[tuple[LogRecord, Refused]] = []
        for _ in range(passes):
            refused = []
            for record in pending:
                verdict = admit_governance(record.value, record.key, self.store)
                if isinstance(verdict, Refused):
                    refused.append((record, verdict))
                elif self._done < len(self.source.governance):
                    self._tick()
            if not refused or len(refused) == len(pending):
                break
            pending = [record for record, _ in refused]
        self.report.governance_events = len(self.source.governance)
        if not self.source.governance_ordered:
            # Archive rows are admitted events: each one must be admissible again.
            for record, verdict in refused:
                self.find(verdict.rejection.reason, record, verdict.event,
                          "archived governance event does not replay: "
                          + verdict.rejection.detail)

    # ---- 2. decode and index ------------------------------------------------------------------

    def decode_logs(self) -> None:
        for record in self.source.logs:
            self._tick()
            try:
                event = open_envelope(record.value)
                payload = open_payload(event)
            except DecodeError as exc:
                self.report.unattributed_count += 1
                if len(self.report.unattributed_records) < UNATTRIBUTED_LISTED_MAX:
                    self.report.unattributed_records.append({
                        "topic": record.topic, "partition": record.partition,
                        "offset": record.offset, "reason_code": exc.reason_code,
                        "detail": exc.detail[:200]})
                continue
            entry = Entry(record, event, payload)
            self._check_archived(entry)
            self.entries.append(entry)
            self.by_id.setdefault(event.event_id, entry)
            self.by_hash.setdefault(event.event_hash, entry)

    def _check_archived(self, entry: Entry) -> None:
        r = entry.record
        archived = self.source.archived.get((r.topic, r.partition, r.offset))
        if archived is None:
            return
        event_id, event_hash = archived
        if event_id != entry.event.event_id or event_hash != entry.event.event_hash.hex():
            self.find(Reason.ARCHIVE_MISMATCH, r, entry.event,
                      f"archived as {event_id} / hash {event_hash[:16]}..., the bytes decode to "
                      f"{entry.event.event_id} / hash {entry.event.event_hash.hex()[:16]}...")

    # ---- 3. re-verify every record in scope ------------------------------------------------------

    def verify(self, entry: Entry) -> bool:
        """Signatures, chains and roles as of the event's time; hash link of processor records.
        True when the record raised no finding (memoised per record)."""
        key = (entry.record.topic, entry.record.partition, entry.record.offset)
        if key in self.verified:
            return self.verified[key]
        before = len(self.report.findings)
        self._verify(entry)
        self.verified[key] = len(self.report.findings) == before
        self.report.events_verified += 1
        return self.verified[key]

    def _verify(self, entry: Entry) -> None:
        event = entry.event
        if entry.record.topic == topics.ADMITTED.name:
            self._verify_admitted(entry)
            return
        verdict = self.store.verify_signer(event, event.body.author_credential_id,
                                           event.body.occurred_at_ms)
        if isinstance(verdict, Rejection):
            self.find(verdict.reason, entry.record, event, verdict.detail)
        elif PROCESSOR_ROLE not in verdict.principal.roles:
            self.find(Reason.ROLE_NOT_PERMITTED, entry.record, event,
                      f"{event.body.author_credential_id} is not a processor key")
        cause = self.by_hash.get(event.body.prev_hash)
        if cause is None or cause.record.topic != topics.ADMITTED.name:
            self.find(Reason.BROKEN_HASH_LINK, entry.record, event,
                      f"prev_hash {event.body.prev_hash.hex()[:16]}... names no admitted event")

    def _verify_admitted(self, entry: Entry) -> None:
        event, record = entry.event, entry.record
        if event.event_type in GOVERNANCE_EVENT_TYPES:
            if event.event_id not in self.store.applied_event_ids:
                self.find(Reason.GOVERNANCE_NOT_REPLAYED, record, event,
                          "admitted, but the governance replay did not admit it")
            return
        policy = POLICIES.get(event.event_type)
        verdict = admit(record.value, record.key, policy.topic if policy else "", self.store)
        if isinstance(verdict, Refused) and verdict.rejection.reason == Reason.CREDENTIAL_REVOKED \
                and entry.payload.get("session_id") in self.reversed_sessions:
            # P4: admitted before a backdated revocation was known; the ledger's re-evaluation
            # reversed the session's settlement on the billing feed (the reversal is checked).
            return
        if isinstance(verdict, Refused):
            self.find(verdict.rejection.reason, record, event, verdict.rejection.detail)
            return
        if event.event_type == GRID_ROUTED:
            self._verify_routed(entry)

    def _verify_routed(self, entry: Entry) -> None:
        """A routed grid event carries the operator's original bytes: they must verify and be
        the admitted grid event its hash link names."""
        raw = entry.payload["grid_event"]
        verdict = admit(raw, None, topics.GRID.name, self.store)
        if isinstance(verdict, Refused):
            self.find(verdict.rejection.reason, entry.record, entry.event,
                      "routed grid event: " + verdict.rejection.detail)
        elif entry.event.body.prev_hash != verdict.event.event_hash or (
                verdict.event.event_hash not in self.by_hash):
            self.find(Reason.BROKEN_HASH_LINK, entry.record, entry.event,
                      "the routed grid event is not the admitted one its prev_hash names")

    def in_window(self, at_ms: int) -> bool:
        return self.from_ms <= at_ms < self.to_ms

    def scope(self) -> tuple[list[Entry], list[Entry]]:
        """The authority's stations' events in the window, and its settlements in the window."""
        stations = {e.payload["station_id"] for e in self.entries
                    if e.event.event_type == CALENDAR
                    and e.payload["rate_authority_id"] == self.authority_id}
        settlements = [e for e in self.entries if e.event.event_type == SETTLEMENT_ADMITTED
                       and e.payload["identity"]["rate_authority_id"] == self.authority_id
                       and self.in_window(int(e.payload["admitted_at_ms"]))]
        sessions = {e.payload["session_id"] for e in settlements}
        in_scope = [e for e in self.entries if self.in_window(e.event.body.occurred_at_ms) and (
            (e.record.topic != topics.SETTLEMENTS.name and e.event.body.subject_key in stations)
            or (e.record.topic == topics.SETTLEMENTS.name
                and e.payload.get("session_id") in sessions))]
        return in_scope, settlements

    # ---- 4. sessions: hash links, recomputation, finality ---------------------------------------

    def index_decisions(self) -> None:
        self.reserved: dict[str, Entry] = {}
        self.proposed: dict[tuple[str, str], Entry] = {}
        self.finalised: dict[str, list[Entry]] = {}
        self.signatures: dict[str, dict[str, Entry]] = {}
        self.admitted: dict[str, list[Entry]] = {}  # settlement id -> it, then its corrections
        self.closed_out: dict[str, Entry] = {}
        self.calendars: dict[str, list[Entry]] = {}
        self.reversed_sessions = {e.payload["session_id"] for e in self.entries
                                  if e.event.event_type == SETTLEMENT_REVERSED}
        self.price_stops: dict[str, Entry] = {}  # the ledger's stops over the price (M6)
        self.answered: dict[str, list[Entry]] = {}
        self.limits_set: dict[str, list[Entry]] = {}  # session -> its PowerLimitSet, in order
        for e in self.entries:
            kind, p = e.event.event_type, e.payload
            if kind == POWER_LIMIT_SET and all(
                    x.event.event_id != e.event.event_id
                    for x in self.limits_set.get(p["session_id"], [])):
                self.limits_set.setdefault(p["session_id"], []).append(e)
            if kind == SESSION_STOPPED and p.get("reason_code"):
                self.price_stops.setdefault(p["session_id"], e)
            elif kind == REPRICE_ACCEPTED and e.record.topic == topics.ADMITTED.name:
                self.answered.setdefault(p["session_id"], []).append(e)
            if kind == SETTLEMENT_ADMITTED:
                issued = self.admitted.setdefault(
                    p.get("adjusts_settlement_id") or p["settlement_id"], [])
                if all(x.event.event_id != e.event.event_id for x in issued):
                    issued.append(e)
            elif kind == CLOSED_OUT and e.record.topic == topics.ADMITTED.name:
                self.closed_out.setdefault(p["session_id"], e)
            elif kind == CALENDAR and e.record.topic == topics.ADMITTED.name:
                self.calendars.setdefault(p["station_id"], []).append(e)
            if kind == SLOT_RESERVED:
                self.reserved.setdefault(p["reservation_id"], e)
            elif kind == REPRICE_PROPOSED:
                self.proposed.setdefault((p["session_id"], p["grid_event_id"]), e)
            elif kind == SETTLEMENT_FINALISED:
                self.finalised.setdefault(p["session_id"], []).append(e)
            elif kind in SIGNING_TYPES and e.record.topic == topics.ADMITTED.name:
                # Countersignatures follow the admitted settlement: not in its evidence list.
                self.signatures.setdefault(p["session_id"], {}).setdefault(e.event.event_id, e)

    def check_settlement(self, entry: Entry) -> None:
        p = entry.payload
        sid = p["session_id"]
        self.report.settlements_checked += 1
        self.verify(entry)
        evidence = self._evidence(entry, sid)
        types = {e.event.event_type for e in evidence}
        if any(t.startswith(WIRELESS) for t in types):
            self._shape(NOT_RECOMPUTED_WIRELESS)
            self._check_trip(entry, evidence)
            return
        if SWAPPED in types:
            self._shape(SettlementShape.SWAP)
            self._check_swap(entry, evidence)
            return
        closes = [e for e in evidence if e.event.event_type == SESSION + "MeterClosedOut"]
        if not closes:
            self.find(Reason.MISSING_EVIDENCE, entry.record, entry.event,
                      "no close-out in evidence", sid)
            return
        close = closes[-1]
        signing = [e for e in self.signatures.get(sid, {}).values() if self.verify(e)]
        for e in signing:
            if not (
                    e.event.body.prev_hash == close.event.event_hash
                    == bytes(e.payload["close_out_event_hash"])):
                self.find(Reason.BROKEN_HASH_LINK, e.record, e.event,
                          "signature event is not linked to the session's close-out", sid)
        priced_by = None
        if int(p.get("energy_export_wh", 0)) > 0:
            # E3: an exporting session settles on the grid operator's co-signature (it carries
            # the clearing price), which itself links to the close-out.
            priced = [e for e in signing if e.event.event_type == CO_SIGNED
                      and e.event.event_hash == entry.event.body.prev_hash]
            if priced:
                priced_by = priced[0]
            else:
                self.find(Reason.BROKEN_HASH_LINK, entry.record, entry.event,
                          "a V2G settlement's prev_hash is not the grid operator's co-signature "
                          "of its session's close-out", sid)
        elif entry.event.body.prev_hash != close.event.event_hash:
            self.find(Reason.BROKEN_HASH_LINK, entry.record, entry.event,
                      "the settlement's prev_hash is not its session's close-out", sid)
        stop = self.price_stops.get(sid)
        if stop is not None:
            self.verify(stop)
            self._checked(f"SessionStopped {stop.payload['reason_code']}")
            billed = [int(e.payload["read_at_ms"]) for e in evidence
                      if e.event.event_type == SESSION + "MeterReadingRecorded"]
            # Answered before the stop: admitted ahead of the event that stopped the session (a
            # late acceptance advancing the ledger's clock past the deadline is refused).
            cause = self.by_hash.get(stop.event.body.prev_hash)
            answered = {e.payload["grid_event_id"] for e in self.answered.get(sid, [])
                        if cause is None or (e.record.partition, e.record.offset)
                        < (cause.record.partition, cause.record.offset)}
            for problem in billing.stop_problems(
                    stop.payload, [*billed, int(close.payload["closed_at_ms"])],
                    [e.payload for (s, _), e in self.proposed.items() if s == sid], answered):
                on = entry if problem.reason == Reason.BILLED_AFTER_STOP else stop
                self.find(problem.reason, on.record, on.event, problem.detail, sid)
        if sid in self.limits_set:
            self._check_power(entry, evidence)
        if p["kind"] in (fleet.CHARGE, fleet.INTERNAL):
            self._recompute(entry, evidence, close, priced_by)
        else:
            self._not_recomputed(str(p["kind"]))
        self._check_finality(entry, signing, close)

    def _check_power(self, entry: Entry, evidence: list[Entry]) -> None:
        """M5: every settled reading within the connector's power capped by the session's
        PowerLimitSet decisions (the ledger refuses the rest IMPLAUSIBLE_READING)."""
        sid = entry.payload["session_id"]
        limits = sorted(self.limits_set[sid], key=lambda e: (e.record.partition,
                                                              e.record.offset))
        handshake = next((e for e in evidence if e.event.event_type
                          == SESSION + "ConnectorHandshakeCompleted"), None)
        if handshake is None:
            return  # found already: no handshake in evidence
        for lim in limits:
            self.verify(lim)
        self._checked("PowerLimitSet")
        calendars = self._before(self.calendars.get(entry.payload["identity"]["station_id"], []),
                                 handshake)
        connector_id = limits[0].payload["connector_id"]
        power_w = max((int(c["power_w"]) for cal in calendars[-1:]
                       for c in cal.payload["connectors"] if c["connector_id"] == connector_id),
                      default=0)
        readings = sorted((e for e in evidence
                           if e.event.event_type == SESSION + "MeterReadingRecorded"),
                          key=lambda e: int(e.payload["reading_seq"]))
        hs = handshake.payload
        for i, problem in billing.readings_over_limits(
                power_w, [e.payload for e in limits],
                (int(hs["started_at_ms"]), int(hs["meter_start_wh"])),
                [(int(e.payload["read_at_ms"]), int(e.payload["cumulative_import_wh"]))
                 for e in readings]):
            self.find(problem.reason, readings[i].record, readings[i].event, problem.detail, sid)

    def _shape(self, shape: SettlementShape) -> None:
        self.report.settlements_by_shape[shape] = self.report.settlements_by_shape.get(
            shape, 0) + 1

    def _not_recomputed(self, kind: str) -> None:
        self.report.settlements_not_recomputed[kind] = (
            self.report.settlements_not_recomputed.get(kind, 0) + 1)

    def _counted(self, entry: Entry, currency: str, total: Decimal) -> None:
        self.report.settlements_recomputed += 1
        self.report.totals_by_currency[currency] = (
            self.report.totals_by_currency.get(currency, Decimal(0)) + total)

    # ---- E1: a wireless trip (verified, not recomputed) -------------------------------------

    def _check_trip(self, entry: Entry, evidence: list[Entry]) -> None:
        """A trip's settlement aggregates segment passes the road's ledger accepted one by one
        (duplicates, geofence, plausibility): the audit re-verifies every cited batch, the
        trip's authorisation and the hash links, and reports the trip as not recomputed."""
        sid = entry.payload["session_id"]
        self._not_recomputed(NOT_RECOMPUTED_WIRELESS)
        authorised = [e for e in evidence if e.event.event_type == TRIP_AUTHORISED]
        if not authorised:
            self.find(Reason.MISSING_EVIDENCE, entry.record, entry.event,
                      "no TripAuthorised in the trip's evidence", sid)
            return
        vehicle = authorised[0].event.body.author_credential_id
        if entry.payload["identity"]["vehicle_credential_id"] != vehicle:
            self.find(Reason.IDENTITY_MISMATCH, entry.record, entry.event,
                      "the settlement names another vehicle than the trip's authorisation", sid)
        for fin in self.finalised.get(sid, []):
            self.verify(fin)
            if fin.event.body.prev_hash != entry.event.body.prev_hash:
                self.find(Reason.BROKEN_HASH_LINK, fin.record, fin.event,
                          "finality does not rest on the event that settled the trip", sid)
            if list(fin.payload["signer_ids"]) != [vehicle]:
                self.find(Reason.FINAL_WITHOUT_SIGNATURES, fin.record, fin.event,
                          f"a trip is final on its vehicle's signature: {vehicle}", sid)
        if self.finalised.get(sid):
            self.report.settlements_final += 1

    # ---- E2: a pack swap (recomputed under the filed swap tariff) ---------------------------

    def _check_swap(self, entry: Entry, evidence: list[Entry]) -> None:
        p, sid = entry.payload, entry.payload["session_id"]
        swapped = next(e for e in evidence if e.event.event_type == SWAPPED)
        if entry.event.body.prev_hash != swapped.event.event_hash:
            self.find(Reason.BROKEN_HASH_LINK, entry.record, entry.event,
                      "the settlement's prev_hash is not its co-signed swap", sid)
        sp = swapped.payload
        filed = self.store.tariff(p["tariff_id"])
        reservation = self.reserved.get(sp["reservation_id"])
        problem: Rejection | None = None
        if sp["identity"] != p["identity"]:
            problem = Rejection(Reason.IDENTITY_MISMATCH,
                                "settlement identity differs from the swap's")
        elif filed is None:
            problem = Rejection(Reason.TARIFF_NOT_FILED, f"{p['tariff_id']} was never filed")
        elif filed["rate_authority_id"] != p["identity"]["rate_authority_id"]:
            problem = Rejection(Reason.TARIFF_OF_ANOTHER_AUTHORITY,
                                f"filed by {filed['rate_authority_id']}")
        elif reservation is None:
            problem = Rejection(Reason.MISSING_EVIDENCE,
                                "no SlotReserved for the swap's booking")
        if problem is not None or filed is None or reservation is None:
            if problem is not None:
                self.find(problem.reason, entry.record, entry.event, problem.detail, sid)
        else:
            self.verify(reservation)
            tariff = swap.tariff_in_force(self.store.tariff_schedule(p["tariff_id"]) or [filed],
                                          int(sp["swapped_at_ms"]))  # M3: in force then
            delivered = max(0, int(sp["pack_out_charge_wh"]) - int(sp["pack_in_charge_wh"]))
            lines, total = swap.swap_settlement(tariff, Decimal(reservation.payload[
                "rate_per_kwh"]), delivered, int(sp["swapped_at_ms"]))
            self._counted(entry, tariff.currency, total)
            self._compare(entry, lines, total, delivered, tariff.currency)
        signers = set(swapped.event.signer_ids())
        for fin in self.finalised.get(sid, []):
            self.verify(fin)
            missing = [x for x in p["required_signer_ids"]
                       if x not in fin.payload["signer_ids"] or x not in signers]
            if missing:
                self.find(Reason.FINAL_WITHOUT_SIGNATURES, fin.record, fin.event,
                          f"required signers without a signature on the swap: {missing}", sid)
            if fin.event.body.prev_hash != swapped.event.event_hash:
                self.find(Reason.BROKEN_HASH_LINK, fin.record, fin.event,
                          "finality does not link to the co-signed swap", sid)
        if self.finalised.get(sid):
            self.report.settlements_final += 1

    def _evidence(self, entry: Entry, sid: str) -> list[Entry]:
        out = []
        for event_id in entry.payload["evidence_event_ids"]:
            ev = self.by_id.get(event_id)
            if ev is None or ev.record.topic != topics.ADMITTED.name:
                self.find(Reason.MISSING_EVIDENCE, entry.record, entry.event,
                          f"evidence {event_id} is not in the admitted log", sid)
                continue
            if not self.verify(ev):
                self.find(Reason.EVIDENCE_NOT_VERIFIABLE, entry.record, entry.event,
                          f"evidence {event_id} fails verification: left out of the recompute",
                          sid)
                continue
            if not names_session(ev.payload, sid):
                self.find(Reason.EVIDENCE_OF_ANOTHER_SESSION, ev.record, ev.event,
                          f"cited by {sid}'s settlement", sid)
                continue
            out.append(ev)
        return out

    def _recompute(self, entry: Entry, evidence: list[Entry], close: Entry,
                   priced_by: Entry | None) -> None:
        """The processors' own pure functions over the signed evidence: the filed tariff's
        import lines, the V2G export credit at the co-signed clearing price (E3) and the fleet's
        internal entry when one fleet holds both credentials (E4)."""
        p, sid = entry.payload, entry.payload["session_id"]
        inputs = self._settlement_inputs(entry, evidence)
        if inputs is None:
            return
        tariff, base_rate, start, reprices, handshake = inputs
        readings = [Reading(int(e.payload["read_at_ms"]), int(e.payload["cumulative_import_wh"]))
                    for e in evidence if e.event.event_type == SESSION + "MeterReadingRecorded"]
        final = Reading(int(close.payload["closed_at_ms"]), int(close.payload["final_import_wh"]))
        s: dict[str, Any] = {
            "session_id": sid, "started_at_ms": start.at_ms,
            "meter_start_export_wh": int(handshake.payload.get("meter_start_export_wh", 0)),
            "close_out": {"closed_at_ms": final.at_ms,
                          "final_export_wh": int(close.payload.get("final_export_wh", 0))},
            "vehicle_credential_id": p["identity"]["vehicle_credential_id"],
            "station_credential_id": handshake.event.body.author_credential_id}
        try:
            schedule = schedule_between(
                [Tariff.from_filing(v) for v in self.store.tariff_schedule(p["tariff_id"])],
                start.at_ms, final.at_ms) or None  # M3: the versions in force in the session
            claimed = self.reserved[handshake.payload["reservation_id"]].payload  # C2: the cap
            energy = within_claim(segments(start, readings, final, base_rate, reprices, schedule),
                                  int(claimed["energy_wh"]),
                                  bool(claimed.get("overrun_allowed", False)))
            lines, total = settle(tariff, energy, schedule)
            if v2g.exported_wh(s) > 0:
                if priced_by is None:
                    return  # found already: no co-signature carries the clearing price
                s["clearing_price_per_kwh"] = Decimal(priced_by.payload["clearing_price_per_kwh"])
                self._shape(SettlementShape.V2G)
            lines, total = v2g.with_export_credit(tariff, s, lines, total)
            fleet.start(s, p["identity"]["station_id"], self.store)
            kind, lines, total = fleet.internal_entry(s, lines, total)
        except ValueError as exc:
            self.find(Reason.EVIDENCE_INCONSISTENT, entry.record, entry.event, str(exc), sid)
            return
        self._shape(SettlementShape.INTERNAL_ACCOUNTING if kind == fleet.INTERNAL
                    else SettlementShape.SESSION)
        self._counted(entry, tariff.currency, total)
        if kind != p["kind"] or v2g.exported_wh(s) != int(p.get("energy_export_wh", 0)):
            self.find(Reason.SETTLEMENT_MISMATCH, entry.record, entry.event,
                      f"recomputed a {kind} settlement exporting {v2g.exported_wh(s)} Wh; "
                      f"admitted {p['kind']} exporting {p.get('energy_export_wh', 0)} Wh", sid)
        self._compare(entry, lines, total, final.import_wh - start.import_wh, tariff.currency)

    def _compare(self, entry: Entry, lines: list[dict[str, Any]], total: Decimal,
                 energy_wh: int, currency: str) -> None:
        p = entry.payload
        if (comparable(lines) != comparable(p["lines"]) or total != p["total_amount"]
                or energy_wh != p["energy_import_wh"] or currency != p["currency"]):
            self.find(Reason.SETTLEMENT_MISMATCH, entry.record, entry.event,
                      f"recomputed {total} {currency} for {energy_wh} Wh in {len(lines)} "
                      f"lines; admitted {p['total_amount']} {p['currency']} for "
                      f"{p['energy_import_wh']} Wh in {len(p['lines'])} lines", p["session_id"])

    def _settlement_inputs(self, entry: Entry, evidence: list[Entry]
                           ) -> tuple[Tariff, Decimal, Reading, list[Reprice], Entry] | None:
        p, sid = entry.payload, entry.payload["session_id"]
        handshakes = [e for e in evidence
                      if e.event.event_type == SESSION + "ConnectorHandshakeCompleted"]
        filed = self.store.tariff(p["tariff_id"])
        problem: Rejection | None = None
        if not handshakes:
            problem = Rejection(Reason.MISSING_EVIDENCE, "no handshake in evidence")
        elif handshakes[0].payload["identity"] != p["identity"]:
            problem = Rejection(Reason.IDENTITY_MISMATCH,
                                "settlement identity differs from the handshake's")
        elif filed is None:
            problem = Rejection(Reason.TARIFF_NOT_FILED, f"{p['tariff_id']} was never filed")
        elif filed["rate_authority_id"] != p["identity"]["rate_authority_id"]:
            problem = Rejection(Reason.TARIFF_OF_ANOTHER_AUTHORITY,
                                f"filed by {filed['rate_authority_id']}")
        reservation = self.reserved.get(handshakes[0].payload["reservation_id"]) \
            if handshakes else None
        if problem is None and reservation is None:
            problem = Rejection(Reason.MISSING_EVIDENCE,
                                "no SlotReserved for the session's reservation")
        if problem is not None or filed is None or reservation is None:
            if problem is not None:
                self.find(problem.reason, entry.record, entry.event, problem.detail, sid)
            return None
        self.verify(reservation)
        base_rate = Decimal(reservation.payload["rate_per_kwh"])
        if base_rate > Decimal(filed["energy_rate_ceiling_per_kwh"]):
            self.find(Reason.RATE_ABOVE_FILED_CEILING, reservation.record, reservation.event,
                      f"{base_rate} > filed {filed['energy_rate_ceiling_per_kwh']}", sid)
        hs = handshakes[0].payload
        start = Reading(int(hs["started_at_ms"]), int(hs["meter_start_wh"]))
        reprices = self._reprices(entry, evidence)
        for rp in reprices:  # M6: no re-price is settled above the filed ceiling (issue 16)
            if rp.rate_per_kwh > Decimal(filed["energy_rate_ceiling_per_kwh"]):
                self.find(Reason.RATE_ABOVE_FILED_CEILING, entry.record, entry.event,
                          f"re-priced {rp.rate_per_kwh} > filed "
                          f"{filed['energy_rate_ceiling_per_kwh']}", sid)
        for problem in billing.lines_above_ceiling(  # M6, M3: nor any line it settled
                p["lines"], max(Decimal(v["energy_rate_ceiling_per_kwh"])
                                for v in self.store.tariff_schedule(p["tariff_id"]) or [filed])):
            self.find(problem.reason, entry.record, entry.event, problem.detail, sid)
        return Tariff.from_filing(filed), base_rate, start, reprices, handshakes[0]

    def _reprices(self, entry: Entry, evidence: list[Entry]) -> list[Reprice]:
        sid, out = entry.payload["session_id"], []
        for e in evidence:
            if e.event.event_type != SESSION + "RepriceAccepted":
                continue
            proposal = self.proposed.get((sid, e.payload["grid_event_id"]))
            if proposal is None or Decimal(proposal.payload["new_rate_per_kwh"]) != Decimal(
                    e.payload["accepted_rate_per_kwh"]):
                self.find(Reason.REPRICE_NOT_PROPOSED, e.record, e.event,
                          "accepted re-price matches no proposal of the ledger", sid)
                continue
            self.verify(proposal)
            out.append(Reprice(int(proposal.payload["effective_from_ms"]),
                               Decimal(proposal.payload["new_rate_per_kwh"]),
                               e.payload["grid_event_id"],
                               int(proposal.payload.get("effective_until_ms", 0))))
        return out

    def _check_finality(self, entry: Entry, signing: list[Entry], close: Entry) -> None:
        """Finality needs, from every required signer, a verified signature event over this
        session's close-out (the station's is the close-out itself)."""
        sid = entry.payload["session_id"]
        required = list(entry.payload["required_signer_ids"])
        linked = [e for e in signing if e.event.body.prev_hash == close.event.event_hash]
        signed = {close.event.body.author_credential_id} | {
            e.event.body.author_credential_id for e in linked}
        signing_hashes = {e.event.event_hash for e in linked}
        finals = self.finalised.get(sid, [])
        for fin in finals:
            self.verify(fin)
            missing = [s for s in required if s not in fin.payload["signer_ids"] or s not in signed]
            if missing:
                self.find(Reason.FINAL_WITHOUT_SIGNATURES, fin.record, fin.event,
                          f"required signers without a signature in the lineage: {missing}", sid)
            if fin.event.body.prev_hash not in signing_hashes:
                self.find(Reason.BROKEN_HASH_LINK, fin.record, fin.event,
                          "finality does not link to a signature of this session", sid)
        if finals:
            self.report.settlements_final += 1

    # ---- issue 16: expiries and reversals on the billing feed --------------------------------

    def billing_records(self, in_scope: list[Entry]) -> list[Entry]:
        """The authority's SettlementExpired (its stations') and SettlementReversed records."""
        stations = {e.event.body.subject_key for e in in_scope}
        return [e for e in self.entries if self.in_window(e.event.body.occurred_at_ms) and (
            (e.event.event_type == SETTLEMENT_EXPIRED and e.payload["station_id"] in stations)
            or (e.event.event_type == SETTLEMENT_REVERSED
                and e.payload["identity"]["rate_authority_id"] == self.authority_id))]

    def _before(self, entries: list[Entry], cause: Entry | None) -> list[Entry]:
        """``entries`` admitted before ``cause`` on its (the station's) partition."""
        if cause is None:
            return entries
        return [e for e in entries if e.record.topic != cause.record.topic
                or e.record.partition != cause.record.partition
                or e.record.offset <= cause.record.offset]

    def _checked(self, what: str) -> None:
        self.report.market_rules_checked[what] = self.report.market_rules_checked.get(what, 0) + 1

    def check_billing_record(self, entry: Entry) -> None:
        self.verify(entry)
        self._checked(entry.event.event_type.rsplit(".", 1)[-1])
        if entry.event.event_type == SETTLEMENT_EXPIRED:
            problems = self._expiry_problems(entry)
        else:
            problems = self._reversal_problems(entry)
        for problem in problems:
            self.find(problem.reason, entry.record, entry.event, problem.detail,
                      entry.payload["session_id"])

    def _expiry_problems(self, entry: Entry) -> list[Rejection]:
        p, sid = entry.payload, entry.payload["session_id"]
        cause = self.by_hash.get(entry.event.body.prev_hash)
        close = self.closed_out.get(sid)
        calendars = self._before(self.calendars.get(p["station_id"], []), cause)
        rules = self.store.rules.get(calendars[-1].payload["rules_version"]) \
            if calendars else None
        signed: set[str] = set()
        if close is not None:
            signed.add(close.event.body.author_credential_id)
            linked = [e for e in self.signatures.get(sid, {}).values()
                      if e.event.body.prev_hash == close.event.event_hash]
            signed |= {e.event.body.author_credential_id for e in self._before(linked, cause)}
        admitted = self.admitted.get(p["settlement_id"])
        problems: list[Rejection] = billing.expiry_problems(
            p, int(close.payload["closed_at_ms"]) if close else None,
            billing.finality_window_ms(rules),
            cause.event.body.occurred_at_ms if cause else 0, signed,
            list(admitted[0].payload["required_signer_ids"]) if admitted else None,
            bool(self.finalised.get(sid)))
        return problems

    def _reversal_problems(self, entry: Entry) -> list[Rejection]:
        p = entry.payload
        voided = [e for e in self.admitted.get(p["reverses_settlement_id"], [])
                  if e.record.offset < entry.record.offset]
        rested_on: set[str] = set()
        if voided:
            original = voided[0].payload
            parties = {original["identity"]["vehicle_credential_id"],
                       *original["required_signer_ids"]}
            rested_on = parties & set(self.store.descendants(p["revoked_credential_id"]))
        problems: list[Rejection] = billing.reversal_problems(
            p, [v.payload for v in voided],
            self.store.revocations.get(p["revoked_credential_id"]), rested_on)
        return problems

    # ---- 5. checkpoints ---------------------------------------------------------------------------

    def check_checkpoints(self) -> None:
        logs = checkpointer.partition_logs(self.source.logs)
        hashes: dict[str, list[bytes]] = {}
        roots_seen: dict[tuple[str, int], bytes] = {}
        decoded = []
        for record in self.source.checkpoints:
            self._tick()
            try:
                event = open_envelope(record.value)
                payload = open_payload(event)
            except DecodeError as exc:
                self.find(Reason(exc.reason_code), record, None,
                          f"checkpoint does not decode: {exc}")
                continue
            signer = self.store.principals.get(event.body.author_credential_id)
            if signer is not None and event.verify_by(signer.principal_id, signer.public_key) \
                    and self.store.key_holds_role(signer.public_key, PROCESSOR_ROLE):
                self.find(Reason.DUTIES_NOT_SEPARATED, record, event,
                          f"checkpoint signed by {signer.principal_id}, whose key signs as the "
                          "processors: it would cover its own decisions")
                continue
            verdict = self.store.check_event(event, payload)
            if isinstance(verdict, Rejection):
                self.find(verdict.reason, record, event, "checkpoint: " + verdict.detail)
                continue
            cp = Checkpoint.of(event, payload)
            decoded.append((record, cp))
            roots_seen[(cp.log_id, cp.tree_size)] = cp.root_hash
        for record, cp in decoded:
            log = logs.get(cp.log_id, [])
            if cp.log_id not in hashes:
                hashes[cp.log_id] = checkpointer.leaf_hashes(log)
            self._check_checkpoint(record, cp, log, hashes[cp.log_id], roots_seen)

    def _check_checkpoint(self, record: LogRecord, cp: Checkpoint, log: list[LogRecord],
                          hashes: list[bytes], roots_seen: dict[tuple[str, int], bytes]) -> None:
        if cp.previous_tree_size:
            seen = roots_seen.get((cp.log_id, cp.previous_tree_size), cp.previous_root_hash)
            if seen != cp.previous_root_hash or not merkle.verify_consistency(
                    cp.previous_tree_size, cp.tree_size, cp.previous_root_hash, cp.root_hash,
                    cp.consistency_proof):
                self.find(Reason.CHECKPOINT_INCONSISTENT, record, cp.event,
                          f"{cp.log_id}: tree {cp.tree_size} does not extend tree "
                          f"{cp.previous_tree_size}")
        covered = log[:cp.tree_size]
        archive = bool(self.source.archived)
        complete = len(covered) == cp.tree_size and covered and covered[0].offset == \
            cp.first_offset and covered[-1].offset == cp.last_offset
        if not complete:
            if archive:  # the archive keeps one row per event id: copies' offsets are gone
                self.report.checkpoints_skipped += 1
                return
            self.find(Reason.CHECKPOINT_BEYOND_LOG, record, cp.event,
                      f"{cp.log_id}: signed {cp.tree_size} records up to offset "
                      f"{cp.last_offset}; the log holds {len(log)}")
            return
        root = merkle.subtree_root(hashes, 0, cp.tree_size)
        if root != cp.root_hash:
            self.find(Reason.CHECKPOINT_MISMATCH, record, cp.event,
                      f"{cp.log_id}: the tree head over offsets {cp.first_offset}.."
                      f"{cp.last_offset} is {root.hex()[:16]}..., signed "
                      f"{cp.root_hash.hex()[:16]}...: a covered record was changed")
        self.report.checkpoints_verified += 1

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> AuditReport:
        started = self.clock()
        self.replay_governance()
        self.decode_logs()
        self.index_decisions()
        in_scope, settlements = self.scope()
        for entry in in_scope:
            self.verify(entry)
        seen: set[str] = set()
        for entry in settlements:
            if entry.event.event_id not in seen:
                seen.add(entry.event.event_id)
                self.check_settlement(entry)
        for entry in self.billing_records(in_scope):
            if entry.event.event_id not in seen:
                seen.add(entry.event.event_id)
                self.check_billing_record(entry)
        self.check_checkpoints()
        self.report.events_replayed = (len(self.source.governance) + len(self.source.logs)
                                       + len(self.source.checkpoints))
        self.report.elapsed_s = self.clock() - started
        self.progress(self.report.events_replayed)
        return self.report


def no_clock() -> float:
    """The clock of a replay that does not time itself (the audit is pure; callers that report
    a rate pass ``time.perf_counter``)."""
    return 0.0


def audit(source: AuditSource, anchors: list[TrustAnchor],
          authority_id: str, window_ms: tuple[int, int] = ALL_TIME_MS,
          progress: Progress | None = None,
          clock: Callable[[], float] = no_clock) -> AuditReport:
    """Replay ``source`` for ``authority_id``'s settlements admitted within ``window_ms``;
    ``clock`` (seconds, monotonic) times the run for ``elapsed_s`` and ``events_per_s``."""
    replay = Audit(source, anchors, authority_id, window_ms, progress)
    replay.clock = clock
    return replay.run()


def measure_replay_rate(source: AuditSource, anchors: list[TrustAnchor], authority_id: str,
                        clock: Callable[[], float], rounds: int = 3) -> dict[str, float]:
    """Benchmark: audit replay rate (records replayed per second) over ``rounds`` runs."""
    report = audit(source, anchors, authority_id, clock=clock)
    rates = [report.events_per_s]
    for _ in range(rounds - 1):
        rates.append(audit(source, anchors, authority_id, clock=clock).events_per_s)
    return {"events": float(report.events_replayed),
            "events_verified": float(report.events_verified),
            "settlements": float(report.settlements_checked),
            "events_per_s_best": max(rates), "events_per_s_worst": min(rates)}
