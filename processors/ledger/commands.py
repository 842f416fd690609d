"""The station ledger's commands: one table, built here, from each full event type to its handler.
Pure.

Every market event a station's (or a road operator's) single-writer ledger acts on is listed in
:data:`COMMANDS` under its full event type, version included: an event type that is not in the
table (another version too) is refused ``UNSUPPORTED_EVENT``. Nothing registers itself when it
is imported. Where an embodiment adds checks to an order, its wrapper is composed here, in the
order they run: the mobile charger's dispatch check (E5) first, then the identity binding
(``binding``: jurisdiction, connector hardware, vehicle id kind), then the swap bay's (E2), then
the slot ledger's own handler; calendars, handshakes and swaps are bound the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from chargemesh.processors.embodiments import mobile, swap, wireless
from chargemesh.processors.grid import observers
from chargemesh.processors.ledger import binding, disputes, power, revocation, sessions
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.state import (
    Command,
    GovernanceView,
    Handler,
    LedgerState,
    Outcome,
)

COMMANDS: Mapping[str, Handler] = MappingProxyType({
    # M4, M5: the calendar, capacity and the station's clock
    "chargemesh.capacity.v1.SlotCalendarPublished": binding.bound_calendar(
        power.bounded_calendar(ledger.publish_calendar)),
    "chargemesh.capacity.v1.CapacityChanged": ledger.change_capacity,
    "chargemesh.capacity.v1.StationHeartbeat": ledger.heartbeat,
    # orders
    "chargemesh.orders.v1.PostedPriceAccepted": mobile.dispatched(binding.bound_identity(
        swap.booking(ledger.accept_posted_price))),
    "chargemesh.orders.v1.WalkUpRequested": mobile.dispatched(binding.bound_identity(
        swap.booking(ledger.request_walk_up))),
    "chargemesh.orders.v1.BidPlaced": mobile.dispatched(binding.bound_identity(
        swap.bidding(ledger.place_bid))),
    "chargemesh.orders.v1.ReservationCancelled": ledger.cancel_reservation,
    # M6, C3, C4: sessions, re-pricing, close-out, signatures
    "chargemesh.session.v1.ConnectorHandshakeCompleted": binding.bound_identity(
        sessions.record_handshake, station_signed=True),
    "chargemesh.session.v1.MeterReadingRecorded": sessions.record_reading,
    # M5, M7: the zone operator's limits bind (ledger/power.py); price signals re-price
    "chargemesh.grid.v1.GridEventRouted": power.grid_routed(sessions.reprice_sessions),
    "chargemesh.session.v1.RepriceAccepted": sessions.accept_reprice,
    "chargemesh.session.v1.SessionStopped": sessions.stop_session,
    "chargemesh.session.v1.MeterClosedOut": sessions.close_out,
    "chargemesh.session.v1.CloseOutCountersigned": sessions.countersign,
    "chargemesh.grid.v1.SettlementCoSigned": sessions.co_sign,
    # P2: disputes
    "chargemesh.dispute.v1.DisputeOpened": disputes.open_dispute,
    "chargemesh.dispute.v1.DisputeEvidenceSubmitted": disputes.add_evidence,
    "chargemesh.dispute.v1.DisputeResolved": disputes.resolve_dispute,
    "chargemesh.dispute.v1.PaymentFailed": disputes.payment_failed,
    # P3: an observer quorum's decision; P4: a revocation
    "chargemesh.grid.v1.ObserverDecisionRouted": observers.apply_routed_decision,
    "chargemesh.ledger.v1.RevocationRouted": revocation.apply_revocation,
    # E1: wireless trips on the road operator's ledger
    "chargemesh.wireless.v1.TripAuthorised": wireless.authorise_trip,
    "chargemesh.wireless.v1.SegmentPassesRecorded": wireless.record_passes,
    "chargemesh.wireless.v1.TripClosed": wireless.close_trip,
    # E2: battery swap; E5: the mobile charger
    "chargemesh.capacity.v1.PackRegistered": swap.register_pack,
    "chargemesh.session.v1.PackSwapCompleted": binding.bound_identity(
        swap.complete_swap, station_signed=True),
    "chargemesh.capacity.v1.MobileStationRelocated": mobile.relocate,
})


def handle(state: LedgerState, cmd: Command, view: GovernanceView) -> Outcome:
    """Decide what an admitted input does to the ledger, and apply it."""
    outcome = ledger.apply(state, cmd, view, COMMANDS.get(cmd.event_type))
    sessions.expire_settlements(state, outcome.decisions)  # M6: as the ledger's clock advances
    disputes.remember_settled(state, outcome.decisions, view)  # issue 16: the dispute window
    return outcome
