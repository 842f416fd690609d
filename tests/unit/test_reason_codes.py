"""Reason codes, statuses and decision types are enums whose values are the wire strings.

The tables below are the contract: a member's value is what is persisted in ledger state and
published on the wire (``reason_code`` of rejections and decisions, statuses in state, kinds and
outcomes in payloads), so changing one is a schema change, not a refactoring. The scans check
that no module passes a bare string where a reason code or status goes, and that the ledger's
command table and the decision routes are each written once, in full event types.
"""

from __future__ import annotations

import ast
import enum
import json
import re
from pathlib import Path

from chargemesh.processors import statuses
from chargemesh.processors.decisions import ROUTES, DecisionType, decided
from chargemesh.processors.ledger import commands
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.policy import POLICIES
from chargemesh.processors.reasons import Reason, Rejection, displaced
from chargemesh.schemas.codec import catalog
from chargemesh.streams import topics

from tests.unit.test_ledger import market

ROOT = Path(__file__).resolve().parents[2]
PROCESSORS = ROOT / "processors"
# Modules whose job is to define the wire strings.
DEFINITIONS = {PROCESSORS / "reasons.py", PROCESSORS / "statuses.py", PROCESSORS / "decisions.py"}

REASON_WIRE_STRINGS = (
    # wire and schema (ingress; raised as DecodeError codes by schemas/ and streams/)
    "MALFORMED_ENVELOPE", "MALFORMED_PAYLOAD", "UNKNOWN_SCHEMA", "WRONG_SCHEMA", "OVERSIZED",
    "WRONG_TOPIC", "KEY_MISMATCH",
    # signatures and trust
    "MISSING_SIGNATURE", "BAD_SIGNATURE", "UNKNOWN_CREDENTIAL", "UNRECOGNISED_AUTHORITY",
    "CREDENTIAL_NOT_YET_VALID", "CREDENTIAL_EXPIRED", "CREDENTIAL_REVOKED", "ROLE_NOT_PERMITTED",
    "SUBJECT_MISMATCH", "JURISDICTION_NOT_DELEGATED", "ISSUANCE_EXCEEDS_DELEGATION",
    "DUPLICATE_IDENTIFIER",
    # delegation scope (issue 15, hole 1)
    "DELEGATION_EXCEEDS_AUTHORITY", "RECOGNITION_EXCEEDS_AUTHORITY",
    # log time (issue 15, hole 3)
    "CLOCK_SKEW",
    # replay, processor faults, the ledger's own limits
    "REPLAYED_EVENT_ID", "INTERNAL_ERROR", "UNSUPPORTED_EVENT", "LEDGER_FULL",
    # the sink (rows of the rejections table it writes itself)
    "SINK_UNDECODABLE", "SINK_PROJECTION_FAILED",
    # calendar and capacity (M4, M5)
    "NO_CALENDAR", "STALE_CALENDAR", "INVALID_CALENDAR", "UNRECOGNISED_RATE_AUTHORITY",
    "UNKNOWN_TARIFF", "UNKNOWN_RULES", "CURRENCY_MISMATCH", "ABOVE_FILED_CEILING",
    "UNKNOWN_CONNECTOR", "INVALID_WINDOW", "CONNECTOR_POWER_ABOVE_KIND", "INVALID_GRID_EVENT",
    # orders
    "SLOT_OUTSIDE_CALENDAR", "SLOT_MISALIGNED", "WINDOW_TOO_LONG", "SLOT_IN_PAST", "SLOT_TAKEN",
    "CONNECTOR_UNAVAILABLE", "RATE_AUTHORITY_MISMATCH", "STATION_REVOKED", "NO_RECIPROCITY",
    "INVALID_ENERGY", "DUPLICATE_ORDER", "PRICE_MISMATCH", "ABOVE_CEILING",
    "BID_ABOVE_OWN_CEILING", "INVALID_RATE", "BIDDING_CLOSED", "OUTBID", "INVALID_ARRIVAL",
    "UNKNOWN_RESERVATION", "NOT_YOUR_RESERVATION", "SESSION_IN_PROGRESS",
    # why a booking was released or moved (SlotReleased, SlotReallocated)
    "NO_SHOW", "CANCELLED_BY_VEHICLE", "CONNECTOR_WITHDRAWN", "CONNECTOR_DERATED",
    "DISPLACED_FAULT", "DISPLACED_CURTAILMENT", "DISPLACED_MAINTENANCE", "DISPLACED_RESTORED",
    "DISPLACED_UNKNOWN", "DISPLACED_GRID_CURTAILMENT", "METER_REVOKED", "STATION_RELOCATED",
    # sessions (M6, C3, C4)
    "UNKNOWN_SESSION", "NOT_YOUR_SESSION", "WRONG_CONNECTOR", "OUTSIDE_RESERVATION",
    "DUPLICATE_SESSION", "SESSION_CLOSED", "SESSION_FULL", "NOT_THE_CONNECTORS_METER",
    "READING_OUT_OF_ORDER", "METER_WENT_BACKWARDS", "READING_OUTSIDE_SESSION",
    "IMPLAUSIBLE_READING", "NO_SUCH_REPRICE", "REPRICE_UNANSWERED", "MISSING_READINGS",
    "NOT_THE_ZONES_OPERATOR",
    "UNKNOWN_SETTLEMENT", "NOT_CLOSED_OUT", "CLOSE_OUT_MISMATCH", "ALREADY_SIGNED",
    "SETTLEMENT_EXPIRED",
    # V2G (E3)
    "INVALID_METER_START", "NOT_BIDIRECTIONAL", "NO_GRID_PROGRAM", "INVALID_CLEARING_PRICE",
    # identity binding (issue 15, hole 4)
    "JURISDICTION_MISMATCH", "UNKNOWN_CONNECTOR_HARDWARE", "VEHICLE_ID_KIND_MISMATCH",
    # grid zones (issue 15, hole 2)
    "ZONE_NOT_REGISTERED", "ZONE_JURISDICTION_NOT_HELD", "ZONE_REGISTERED_ELSEWHERE",
    "INVALID_ZONE_REGISTRATION",
    # disputes (P2)
    "INVALID_DISPUTE", "DUPLICATE_DISPUTE", "UNKNOWN_DISPUTE", "NOT_A_SESSION_PARTY",
    "INVALID_TIME", "NO_SETTLEMENT", "SETTLEMENT_VOIDED",
    "DISPUTE_WINDOW_CLOSED", "DISPUTE_ALREADY_OPEN",
    "DISPUTE_ALREADY_RESOLVED", "DISPUTE_CLOSED", "TOO_MANY_DISPUTES", "TOO_MUCH_EVIDENCE",
    "STATEMENT_TOO_LONG", "UNKNOWN_EVIDENCE", "NOT_THE_ARBITER", "NOT_THE_PAYMENT_AGENT",
    "INVALID_OUTCOME",
    "INVALID_ADJUSTMENT", "ADJUSTMENT_EXCEEDS_SETTLEMENT", "ADJUSTMENT_TOO_LARGE",
    # grid observers (P3)
    "NO_OBSERVER_SET", "STALE_OBSERVER_SET", "INVALID_OBSERVER_SET", "NOT_IN_OBSERVER_SET",
    "INVALID_DECISION", "INTERVAL_CLOSED", "DIGEST_MISMATCH", "OBSERVER_EQUIVOCATED",
    "DUPLICATE_ATTESTATION", "INVALID_QUORUM", "WRONG_GRID_ZONE", "DECISION_ALREADY_APPLIED",
    "OBSERVERS_NOT_INDEPENDENT",
    # mobile charger (E5)
    "NOT_THE_STATIONS_CREDENTIAL", "STALE_LOCATION", "INVALID_LOCATION",
    "NOT_THE_JURISDICTIONS_AUTHORITY", "NO_TARIFF_IN_JURISDICTION", "JURISDICTION_NOT_PERMITTED",
    "WRONG_DISPATCH",
    # battery swap (E2)
    "NOT_A_SWAP_STATION", "NOT_A_SWAP_BOOKING", "SWAP_BAY_MISMATCH", "SWAP_AT_POSTED_PRICE",
    "CONNECTOR_REQUIRED", "INVALID_PACK", "INVALID_SWAP_CLAIM", "UNKNOWN_PACK", "WRONG_PACK",
    "PACK_ON_VEHICLE", "PACK_NOT_ON_VEHICLE", "PACK_NOT_HELD_BY_VEHICLE", "PACK_NOT_AVAILABLE",
    "PACK_CHEMISTRY_INCOMPATIBLE", "PACK_BELOW_MIN_SOH", "NO_COMPATIBLE_PACK",
    "RETURNED_PACK_MISMATCH", "IMPLAUSIBLE_CHARGE",
    # wireless dynamic charging (E1)
    "NOT_A_WIRELESS_SEGMENT", "SEGMENT_NOT_OF_OPERATOR", "UNKNOWN_ROAD_OPERATOR",
    "WRONG_EMBODIMENT", "INVALID_TRIP", "DUPLICATE_TRIP", "UNKNOWN_TRIP", "NOT_YOUR_TRIP",
    "TRIP_ALREADY_OPEN", "TRIP_CLOSED", "TRIP_FULL", "INVALID_BATCH", "INVALID_PASS",
    "DUPLICATE_PASS", "NOT_THE_TRIPS_VEHICLE", "OUTSIDE_GEOFENCE", "OUTSIDE_TRIP_WINDOW",
    "OVERLAPPING_PASS", "IMPLAUSIBLE_PASS", "IMPLAUSIBLE_METER_SECONDS", "IMPLAUSIBLE_ENERGY",
    "OTHER_RATE_AUTHORITY", "TARIFF_MISMATCH", "ENERGY_LIMIT", "METER_SECONDS_LIMIT",
    # audit findings (the regulator's replay)
    "ARCHIVE_MISMATCH", "BROKEN_HASH_LINK", "GOVERNANCE_NOT_REPLAYED", "MISSING_EVIDENCE",
    "IDENTITY_MISMATCH", "TARIFF_NOT_FILED", "TARIFF_OF_ANOTHER_AUTHORITY",
    "FINAL_WITHOUT_SIGNATURES", "EVIDENCE_NOT_VERIFIABLE", "EVIDENCE_OF_ANOTHER_SESSION",
    "EVIDENCE_INCONSISTENT", "SETTLEMENT_MISMATCH", "RATE_ABOVE_FILED_CEILING",
    "REPRICE_NOT_PROPOSED", "CHECKPOINT_INCONSISTENT", "CHECKPOINT_BEYOND_LOG",
    "CHECKPOINT_MISMATCH", "EXPIRY_NOT_DUE", "EXPIRED_SIGNER_NOT_MISSING",
    "REVERSAL_WITHOUT_REVOCATION", "REVERSAL_MISMATCH", "REPRICE_STOP_NOT_DUE",
    "BILLED_AFTER_STOP",
    # the deployment's own identity (issue 15, hole 7)
    "DUTIES_NOT_SEPARATED",
    # tariffs and claims (issue 16)
    "UNKNOWN_CURRENCY", "MINOR_UNITS_MISMATCH", "UNKNOWN_ROUNDING", "INVALID_TARIFF_VERSION",
    "TARIFF_NOT_IN_FORCE", "ADDERS_MISMATCH",
)
STATUS_WIRE_STRINGS: dict[type[enum.StrEnum], tuple[str, ...]] = {
    statuses.ReservationStatus: ("ACTIVE", "ARRIVED", "RELEASED", "COMPLETED", "DISPLACED",),
    statuses.SessionStatus: ("ACTIVE", "STOPPED", "CLOSED_OUT", "FINAL", "VOID", "INADMISSIBLE",
                              "EXPIRED",),
    statuses.RepriceStatus: ("PROPOSED", "ACCEPTED", "REFUSED",),
    statuses.AboveCeiling: ("CAP", "REFUSE",),
    statuses.StopReason: (
        "COMPLETED", "VEHICLE_REQUEST", "REPRICE_REFUSED", "FAULT", "REVOCATION", "INTERRUPTED",
        "UNKNOWN",
    ),
    statuses.CapacityCause: (
        "FAULT", "CURTAILMENT", "MAINTENANCE", "RESTORED", "UNKNOWN", "GRID_CURTAILMENT",
        "METER_REVOKED",
    ),
    statuses.GridEventKind: (
        "PRICE_SIGNAL", "CAPACITY_LIMIT", "CURTAILMENT", "RESTORED", "UNKNOWN",
    ),
    statuses.ConnectorKind: (
        "AC_L1", "AC_L2", "DC_FAST", "MCS", "WIRELESS_SEGMENT", "SWAP_BAY", "MOBILE", "UNKNOWN",
    ),
    statuses.BidResolution: ("HIGHEST_RATE_THEN_EARLIEST", "EARLIEST", "UNKNOWN",),
    statuses.Reallocation: (
        "SAME_SLOT_OTHER_CONNECTOR_THEN_NEXT_SLOT", "SAME_SLOT_OTHER_CONNECTOR", "CANCEL",
        "UNKNOWN",
    ),
    statuses.CurtailmentOrder: (
        "CURTAILABLE_FIRST_LOWEST_PRIORITY_FIRST", "LATEST_BOOKED_FIRST", "UNKNOWN",
    ),
    statuses.SettlementKind: ("CHARGE", "ADJUSTMENT", "CREDIT", "INTERNAL_ACCOUNTING",),
    statuses.LineKind: (
        "ENERGY", "ENERGY_REPRICED", "TAX", "CONGESTION_FEE", "RENEWABLE_CONTENT",
        "V2G_EXPORT_CREDIT", "SWAP_FEE", "ADJUSTMENT",
    ),
    statuses.DisputeKind: ("INTERRUPTED_CHARGE", "METER_DISPUTE", "PAYMENT_FAILURE",),
    statuses.DisputeStatus: ("OPEN", "RESOLVED",),
    statuses.DisputeOutcome: ("UPHELD", "ADJUSTED", "VOIDED", "DISMISSED",),
    statuses.DisputeChange: ("OPENED", "EVIDENCE_ADDED", "RESOLVED",),
    statuses.ReevaluationSubject: ("RESERVATION", "SESSION", "SETTLEMENT",),
    statuses.ReevaluationOutcome: (
        "CANCELLED", "REALLOCATED", "UPHELD", "STOPPED", "CLOSE_OUT_INADMISSIBLE", "INADMISSIBLE",
    ),
    statuses.TripStatus: ("OPEN", "CLOSED",),
    statuses.TripCloseReason: ("VEHICLE_CLOSED", "IDLE_TIMEOUT", "WINDOW_ENDED",),
    statuses.PackStatus: ("IN_STOCK", "ON_VEHICLE", "RETURNED",),
    statuses.SettlementShape: ("SESSION", "V2G", "SWAP", "WIRELESS_TRIP", "INTERNAL_ACCOUNTING",),
}
DECISION_TYPES = {
    "SLOT_RESERVED": "chargemesh.ledger.v1.SlotReserved",
    "SLOT_RELEASED": "chargemesh.ledger.v1.SlotReleased",
    "SLOT_REALLOCATED": "chargemesh.ledger.v1.SlotReallocated",
    "ORDER_REJECTED": "chargemesh.ledger.v1.OrderRejected",
    "CREDENTIAL_REEVALUATED": "chargemesh.ledger.v1.CredentialReevaluated",
    "REPRICE_PROPOSED": "chargemesh.session.v1.RepriceProposed",
    "SESSION_STOPPED": "chargemesh.session.v1.SessionStopped",
    "POWER_LIMIT_SET": "chargemesh.session.v1.PowerLimitSet",
    "SETTLEMENT_ADMITTED": "chargemesh.settlement.v1.SettlementAdmitted",
    "SETTLEMENT_FINALISED": "chargemesh.settlement.v1.SettlementFinalised",
    "SETTLEMENT_EXPIRED": "chargemesh.settlement.v1.SettlementExpired",
    "SETTLEMENT_REVERSED": "chargemesh.settlement.v1.SettlementReversed",
    "FLEET_ACCOUNTING_RECORDED": "chargemesh.settlement.v1.FleetAccountingRecorded",
    "DISPUTE_RECORDED": "chargemesh.dispute.v1.DisputeRecorded",
    "SEGMENT_PASSES_APPLIED": "chargemesh.wireless.v1.SegmentPassesApplied",
    "TRIP_SETTLED": "chargemesh.wireless.v1.TripSettled",
    "OBSERVER_QUORUM_REACHED": "chargemesh.grid.v1.ObserverQuorumReached",
    "OBSERVER_EQUIVOCATION": "chargemesh.grid.v1.ObserverEquivocation",
    "OBSERVER_DECISION_ROUTED": "chargemesh.grid.v1.ObserverDecisionRouted",
}


# ---- the tables ---------------------------------------------------------------------------------


def test_every_reason_code_is_pinned_to_its_wire_string() -> None:
    assert len(set(REASON_WIRE_STRINGS)) == len(REASON_WIRE_STRINGS)
    assert {m.name: m.value for m in Reason} == {w: w for w in REASON_WIRE_STRINGS}
    assert all(type(m.value) is str for m in Reason)


def test_every_status_is_pinned_to_its_wire_string() -> None:
    defined = {o for o in vars(statuses).values() if isinstance(o, type)
               and issubclass(o, enum.StrEnum) and o.__module__ == statuses.__name__}
    assert defined == set(STATUS_WIRE_STRINGS)
    for kind, wire in STATUS_WIRE_STRINGS.items():
        assert {m.name: m.value for m in kind} == {w: w for w in wire}, kind.__name__


def test_every_decision_type_is_pinned_routed_and_has_its_schema() -> None:
    assert {m.name: m.value for m in DecisionType} == DECISION_TYPES
    assert set(ROUTES) == set(DecisionType)
    known = {spec.name for spec in vars(topics).values() if isinstance(spec, topics.TopicSpec)}
    for event_type, route in ROUTES.items():
        assert route.topic in known, event_type
        assert event_type in catalog().names(), event_type  # a .avsc each


def test_a_member_is_its_string_in_state_and_on_the_wire() -> None:
    """What keeps persisted state and payloads byte-identical to the literals they replace."""
    assert Reason.NO_SHOW == "NO_SHOW" and hash(Reason.NO_SHOW) == hash("NO_SHOW")
    assert f"{Reason.NO_SHOW}" == str(Reason.NO_SHOW) == "NO_SHOW"
    assert json.dumps({statuses.SessionStatus.FINAL: [statuses.SessionStatus.FINAL]}) == (
        '{"FINAL": ["FINAL"]}')
    assert Rejection("SLOT_TAKEN", "x").reason is Reason.SLOT_TAKEN  # a lower layer's code
    assert displaced(statuses.CapacityCause.GRID_CURTAILMENT) is Reason.DISPLACED_GRID_CURTAILMENT


def test_every_capacity_cause_displaces_with_a_reason_code() -> None:
    for cause in statuses.CapacityCause:
        if cause is not statuses.CapacityCause.METER_REVOKED:  # displaces as METER_REVOKED
            assert displaced(cause).value == f"DISPLACED_{cause}"


# ---- the ledger's command table -----------------------------------------------------------------


def test_the_command_table_is_the_market_topics_event_types_in_full() -> None:
    on_market = {t for t, policy in POLICIES.items() if policy.topic == topics.MARKET.name}
    assert set(commands.COMMANDS) == on_market


def test_another_version_of_a_command_is_not_dispatched_to_its_handler() -> None:
    m = market()
    for event_type in ("chargemesh.capacity.v2.StationHeartbeat",
                       "chargemesh.other.v1.StationHeartbeat"):
        cmd = ledger.Command(event_type, {}, m.now(), m.station.credential_id, "e-v2")
        outcome = commands.handle(m.state, cmd, m.store)
        assert outcome.rejection is not None
        assert outcome.rejection.reason is Reason.UNSUPPORTED_EVENT


def test_a_decision_carries_its_event_type_topic_and_key() -> None:
    d = decided(DecisionType.SETTLEMENT_FINALISED, {"session_id": "s-1", "settlement_id": "x"})
    assert (d.event_type, d.topic, d.key, d.name) == (
        "chargemesh.settlement.v1.SettlementFinalised", topics.SETTLEMENTS.name, "s-1",
        "SettlementFinalised")


# ---- no bare strings where a code goes ----------------------------------------------------------


def _modules(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if p not in DEFINITIONS)


CODE = re.compile(r"[A-Z][A-Z0-9_]*")


def _strings_in(node: ast.AST) -> list[str]:
    """Upper-case string literals (and f-strings) an expression evaluates to: not the keys it
    subscripts with, nor the arguments of calls inside it (a call is checked on its own)."""
    found, stack = [], [node]
    while stack:
        sub = stack.pop()
        if isinstance(sub, ast.JoinedStr):
            found.append(ast.unparse(sub))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            found += [sub.value] if CODE.fullmatch(sub.value) else []
        elif isinstance(sub, ast.Subscript):
            stack.append(sub.value)
        elif not isinstance(sub, (ast.Call, ast.Lambda, ast.comprehension)):
            stack.extend(ast.iter_child_nodes(sub))
    return found


# call name -> index of the argument that is a reason code or status
CODE_ARGUMENT = {"Rejection": 0, "of": 0, "Reason": 0, "find": 0, "released": 2, "_displace": 2}
# payload and state fields that hold a reason code, status or kind
CODE_FIELDS = {"reason_code", "reason", "status", "kind", "outcome", "change", "close_reason",
               "subject_kind", "stop_reason", "cause"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            index = CODE_ARGUMENT.get(name)
            if index is not None and len(node.args) > index:
                out += [f"{path}:{node.lineno} {name}({s!r})"
                        for s in _strings_in(node.args[index])]
            out += [f"{path}:{node.lineno} {k.arg}={s!r}" for k in node.keywords
                    if k.arg in CODE_FIELDS for s in _strings_in(k.value)]
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value in CODE_FIELDS:
                    out += [f"{path}:{node.lineno} {key.value!r}: {s!r}"
                            for s in _strings_in(value)]
    return out


def test_no_module_passes_a_bare_string_where_a_reason_code_or_status_goes() -> None:
    violations = [v for p in _modules(PROCESSORS, ROOT / "sinks") for v in _violations(p)]
    assert violations == []


def test_no_processor_module_spells_a_code_or_status_as_a_literal() -> None:
    """Any string literal equal to a reason code or a status is one the enums should name."""
    codes = {m.value for m in Reason} | {
        m.value for kind in STATUS_WIRE_STRINGS for m in kind}
    literals = []
    for path in _modules(PROCESSORS):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in codes:
                literals.append(f"{path}:{node.lineno} {node.value!r}")
    assert literals == []


def test_every_decode_error_below_processors_raises_a_reason_code() -> None:
    """schemas/ and streams/ sit below processors/ and raise plain strings: each must be one."""
    raised = []
    for path in _modules(ROOT / "schemas", ROOT / "streams", ROOT / "sinks"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DecodeError":
                raised += [(path, node.args[0])]
    assert raised
    for path, code in raised:
        if isinstance(code, ast.Constant):
            Reason(code.value)
        else:
            assert ast.unparse(code).startswith("Reason."), f"{path}: {ast.unparse(code)}"


def test_no_processor_module_registers_anything_when_imported() -> None:
    """Registries are tables built in one place: no module-level call statements (such as a
    ``register_commands({...})``) that fill one as a side effect of importing a module."""
    calls = []
    for path in _modules(PROCESSORS):
        for stmt in ast.parse(path.read_text(), str(path)).body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                calls.append(f"{path}:{stmt.lineno} {ast.unparse(stmt)[:60]}")
    assert calls == []
