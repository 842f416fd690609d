"""E2 battery swap on the station's ledger: the commodity is a charged pack. Pure.

Same single writer per station, same reservations, same settlement feed as a charging session
(M9: a schema extension, not a separate system):

* the station signs its pack inventory (``PackRegistered``: pack id, chemistry, state of
  health, capacity and charge); a pack returned by a vehicle is not issued again until the
  station registers it again (recharged, re-tested);
* a vehicle books a swap bay (connector kind ``SWAP_BAY``) with an ordinary order whose claim
  carries a ``BatterySwapExtension``: its declared chemistry, the lowest state of health it
  accepts, the pack it asks for ("" = the best compatible one) and the pack it brings back. An
  incompatible chemistry, a pack below that state of health, a pack on another booking or on a
  vehicle is refused with a reason; otherwise the pack is held for the booking;
* the swap (``PackSwapCompleted``: pack out, pack in, metered charges) is signed by the station
  and co-signed by the vehicle, so both parties have signed everything the price rests on: the
  settlement is admitted and final at once. It follows the filed tariff: the tariff's
  ``swap_fee``, the energy difference (charge out minus charge returned, never negative) at the
  booked rate, the tariff's per-kWh adders and its tax, each line rounded by the authority's
  rule, the total their exact sum (:func:`swap_settlement`); under the version of the tariff
  in force at the swap, and at its time-of-use band's rate when the swap falls in one (M3);
* each pack's identity is followed through every cycle (registered, out on a vehicle,
  returned): ClickHouse ``pack_history``, ``chargemesh pack history PACK``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.ledger import sessions
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.state import (
    LIVE,
    Command,
    GovernanceView,
    Handler,
    LedgerState,
    _emit,
)
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import (
    WH_PER_KWH,
    Tariff,
    adder_lines,
    line,
    version_at,
    with_tax,
)
from chargemesh.processors.statuses import (
    ConnectorKind,
    LineKind,
    PackStatus,
    ReservationStatus,
    SessionStatus,
    SettlementKind,
)

SWAP_BAY = ConnectorKind.SWAP_BAY
PACKS_PER_STATION_MAX = 10_000
SWAPS_KEPT_MAX = 50_000
PACK_ID_CHARS_MAX = 64
CHEMISTRY_CHARS_MAX = 16
PERMILLE_MAX = 1_000
PACK_CAPACITY_WH_MAX = 2_000_000  # a 2 MWh truck pack; more is a typo, not a pack
# A swap may be signed this long before its booked window (the vehicle arrived early).
EARLY_SWAP_MS_MAX = sessions.EARLY_START_MS_MAX
IN_STOCK = PackStatus.IN_STOCK
ON_VEHICLE = PackStatus.ON_VEHICLE
RETURNED = PackStatus.RETURNED  # back at the station, waiting to be recharged and registered again
EXTENSION_FIELDS = frozenset({"pack_id", "chemistry", "state_of_health_permille",
                              "returned_pack_id"})


def packs(state: LedgerState) -> dict[str, dict[str, Any]]:
    """pack id -> the station's record of the pack."""
    return state.extra.setdefault("packs", {})  # type: ignore[no-any-return]


def holds(state: LedgerState) -> dict[str, dict[str, Any]]:
    """reservation id -> the pack held for that swap booking and the vehicle's requirements."""
    return state.extra.setdefault("swap_holds", {})  # type: ignore[no-any-return]


def swaps(state: LedgerState) -> dict[str, dict[str, Any]]:
    """session id -> the completed swap (its settlement id, packs, parties)."""
    return state.extra.setdefault("swaps", {})  # type: ignore[no-any-return]


def swap_claim(claim: dict[str, Any]) -> dict[str, Any] | None:
    """The claim's E2 extension, or None (a decoded Avro union member carries no name: the
    swap record is the one with exactly its fields)."""
    ext = claim.get("extension")
    if isinstance(ext, tuple) and len(ext) == 2:  # (record name, record): as the SDK builds it
        ext = ext[1]
    if isinstance(ext, dict) and set(ext) == EXTENSION_FIELDS:
        return ext
    return None


def norm_chemistry(chemistry: str) -> str:
    return chemistry.strip().upper()


def tariff_in_force(filings: list[dict[str, Any]], at_ms: int) -> Tariff:
    """M3: the version of a tariff (``filings``: its schedule, by ``effective_from_ms``) in
    force at ``at_ms``, as sessions bill each interval (the first one before any is)."""
    return Tariff.from_filing(filings[version_at([Tariff.from_filing(f) for f in filings],
                                                 at_ms)])


def swap_settlement(tariff: Tariff, rate_per_kwh: Decimal, delivered_wh: int,
                    at_ms: int) -> tuple[list[dict[str, Any]], Decimal]:
    """Line items of a swap under ``tariff`` (the version in force at the swap): swap fee,
    energy difference at ``rate_per_kwh`` (or, at a time of the tariff's time-of-use bands, the
    band's rate, as for sessions), per-kWh adders on it, tax on the sum; every line rounded once,
    total = sum of lines."""
    if delivered_wh < 0:
        raise ValueError("delivered energy is never negative")
    band = tariff.band_at(at_ms)
    if band >= 0:
        rate_per_kwh = Decimal(tariff.time_of_use[band][2])
    lines = []
    if tariff.swap_fee:
        lines.append(line(LineKind.SWAP_FEE, "pack swap fee", 0, Decimal(0),
                          tariff.round(tariff.swap_fee), at_ms, at_ms))
    if delivered_wh:
        amount = tariff.round(Decimal(delivered_wh) * rate_per_kwh / WH_PER_KWH)
        lines.append(line(LineKind.ENERGY, f"{delivered_wh} Wh energy difference at "
                          f"{rate_per_kwh}/kWh", delivered_wh, rate_per_kwh, amount, at_ms, at_ms))
        lines += adder_lines(tariff, delivered_wh)
    taxed: tuple[list[dict[str, Any]], Decimal] = with_tax(tariff, lines)
    return taxed


# ---- inventory ------------------------------------------------------------------------------


def _bays(state: LedgerState) -> list[str]:
    cal = state.calendar or {"connectors": {}}
    return sorted(cid for cid, c in cal["connectors"].items() if c.get("kind") == SWAP_BAY)


def register_pack(state: LedgerState, cmd: Command, view: GovernanceView,
                out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    if not _bays(state):
        return Rejection(Reason.NOT_A_SWAP_STATION, f"{state.station_id}'s calendar has no "
                         f"{SWAP_BAY} connector")
    problem = _pack_problem(p)
    if problem is not None:
        return problem
    inventory = packs(state)
    known = inventory.get(p["pack_id"])
    if known is not None and known["status"] == ON_VEHICLE:
        return Rejection(Reason.PACK_ON_VEHICLE, f"{p['pack_id']} is on vehicle "
                         f"{known['vehicle_credential_id']}: it must be returned first")
    if known is None and len(inventory) >= PACKS_PER_STATION_MAX:
        return Rejection(Reason.LEDGER_FULL, f"{PACKS_PER_STATION_MAX} packs at this station")
    inventory[p["pack_id"]] = {
        "pack_id": p["pack_id"], "chemistry": norm_chemistry(p["chemistry"]),
        "state_of_health_permille": p["state_of_health_permille"],
        "capacity_wh": p["capacity_wh"], "charge_wh": p["charge_wh"], "status": IN_STOCK,
        "vehicle_credential_id": "", "registered_event_id": cmd.event_id,
        "cycles": known["cycles"] if known else 0,
    }
    return None


def _pack_problem(p: dict[str, Any]) -> Rejection | None:
    if not 0 < len(p["pack_id"]) <= PACK_ID_CHARS_MAX:
        return Rejection(Reason.INVALID_PACK, f"pack_id must be 1..{PACK_ID_CHARS_MAX} characters")
    if not 0 < len(p["chemistry"].strip()) <= CHEMISTRY_CHARS_MAX:
        return Rejection(Reason.INVALID_PACK,
                         f"chemistry must be 1..{CHEMISTRY_CHARS_MAX} characters")
    if not 0 <= p["state_of_health_permille"] <= PERMILLE_MAX:
        return Rejection(Reason.INVALID_PACK, f"state of health must be 0..{PERMILLE_MAX} permille")
    if not 0 < p["capacity_wh"] <= PACK_CAPACITY_WH_MAX:
        return Rejection(Reason.INVALID_PACK, f"capacity must be 1..{PACK_CAPACITY_WH_MAX} Wh")
    if not 0 <= p["charge_wh"] <= p["capacity_wh"]:
        return Rejection(Reason.INVALID_PACK, "charge must be between 0 and the pack's capacity")
    return None


# ---- booking a swap --------------------------------------------------------------------------


def _held_pack_ids(state: LedgerState) -> dict[str, str]:
    """pack id -> reservation id, for holds whose booking is still live (a released or pruned
    booking frees its pack without any hook in the ledger)."""
    out = {}
    for rid in list(holds(state)):
        res = state.reservations.get(rid)
        if res is None or res.status not in LIVE:
            del holds(state)[rid]
            continue
        out[holds(state)[rid]["pack_id"]] = rid
    return out


def compatibility_problem(pack: dict[str, Any], chemistry: str,
                          min_soh_permille: int) -> Rejection | None:
    """Why ``pack`` cannot go to a vehicle of ``chemistry`` needing ``min_soh_permille``."""
    if pack["chemistry"] != norm_chemistry(chemistry):
        return Rejection(Reason.PACK_CHEMISTRY_INCOMPATIBLE, f"{pack['pack_id']} is "
                         f"{pack['chemistry']}, the vehicle takes {norm_chemistry(chemistry)}")
    if pack["state_of_health_permille"] < min_soh_permille:
        return Rejection(Reason.PACK_BELOW_MIN_SOH, f"{pack['pack_id']} has state of health "
                         f"{pack['state_of_health_permille']} permille, the vehicle needs at least "
                         f"{min_soh_permille} permille")
    return None


def _choose_pack(state: LedgerState, ext: dict[str, Any], vehicle_id: str) -> str | Rejection:
    inventory, held = packs(state), _held_pack_ids(state)
    chemistry, min_soh = ext["chemistry"], ext["state_of_health_permille"]
    if not chemistry.strip() or not 0 <= min_soh <= PERMILLE_MAX:
        return Rejection(Reason.INVALID_SWAP_CLAIM, "a swap claim declares the vehicle's chemistry "
                         f"and a minimum state of health of 0..{PERMILLE_MAX} permille")
    returned = inventory.get(ext["returned_pack_id"])
    if returned is not None and returned["status"] == ON_VEHICLE and (
            returned["vehicle_credential_id"] != vehicle_id):
        return Rejection(Reason.PACK_NOT_HELD_BY_VEHICLE, f"{ext['returned_pack_id']} went out on "
                         f"vehicle {returned['vehicle_credential_id']}")
    if ext["pack_id"]:
        pack = inventory.get(ext["pack_id"])
        if pack is None:
            return Rejection(Reason.UNKNOWN_PACK, f"{ext['pack_id']} is not registered here")
        if pack["status"] != IN_STOCK or ext["pack_id"] in held:
            where = "held for another booking" if pack["pack_id"] in held else pack["status"]
            return Rejection(Reason.PACK_NOT_AVAILABLE, f"{ext['pack_id']} is {where}")
        return compatibility_problem(pack, chemistry, min_soh) or pack["pack_id"]
    stock = [pk for pid, pk in sorted(inventory.items())
             if pk["status"] == IN_STOCK and pid not in held]
    fitting = [pk for pk in stock if compatibility_problem(pk, chemistry, min_soh) is None]
    if not fitting:
        return Rejection(Reason.NO_COMPATIBLE_PACK, f"none of {len(stock)} packs in stock is "
                         f"{norm_chemistry(chemistry)} with state of health >= {min_soh} permille")
    best = max(fitting, key=lambda pk: (pk["state_of_health_permille"], pk["charge_wh"]))
    return str(best["pack_id"])


def _bay_problem(state: LedgerState, connector_id: str, swap: bool) -> Rejection | None:
    """A swap books a swap bay; a charging order never does."""
    bays = _bays(state)
    if not bays:
        return Rejection(Reason.NOT_A_SWAP_STATION,
                         "this station has no swap bay") if swap else None
    if not connector_id and len(bays) != len(state.connector_ids()):
        return Rejection(Reason.CONNECTOR_REQUIRED, "this station has swap bays and chargers: name "
                         "the connector")
    if connector_id and state.connector(connector_id) is not None and (
            connector_id in bays) != swap:
        return Rejection(Reason.SWAP_BAY_MISMATCH, f"{connector_id} is "
                         f"{'not ' if swap else ''}a swap bay")
    if not connector_id and not swap:
        return Rejection(Reason.SWAP_BAY_MISMATCH, "this station only swaps packs")
    return None


def booking(previous: Handler) -> Handler:
    """Wraps an order handler (posted-price acceptance, walk-up): swap claims pick and hold a
    compatible pack first; other claims pass through, kept off the swap bays."""

    def handle(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
        p = cmd.payload
        ext = swap_claim(p["claim"])
        problem = _bay_problem(state, p["identity"]["connector_id"], ext is not None)
        if problem is not None:
            return problem
        if ext is None:
            return previous(state, cmd, view, out)
        pack_id = _choose_pack(state, ext, cmd.author_id)
        if isinstance(pack_id, Rejection):
            return pack_id
        before = len(out)
        rejection = previous(state, cmd, view, out)
        for decision in out[before:]:
            d = decision.payload
            if decision.event_type == DecisionType.SLOT_RESERVED and (
                    d["order_id"] == p["order_id"]):
                holds(state)[d["reservation_id"]] = {
                    "pack_id": pack_id, "chemistry": norm_chemistry(ext["chemistry"]),
                    "min_soh_permille": ext["state_of_health_permille"],
                    "returned_pack_id": ext["returned_pack_id"]}
        return rejection

    return handle


# ---- the swap --------------------------------------------------------------------------------


def complete_swap(state: LedgerState, cmd: Command, view: GovernanceView,
             out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    found = _swap_booking(state, p)
    if isinstance(found, Rejection):
        return found
    res, hold = found
    problem = _packs_problem(state, p, hold, res.vehicle_credential_id)
    if problem is not None:
        return problem
    cal = state.calendar or {}
    if p["identity"]["rate_authority_id"] != cal.get("rate_authority_id"):
        return Rejection(Reason.RATE_AUTHORITY_MISMATCH, f"station files under "
                         f"{cal.get('rate_authority_id')}")
    filed = view.tariffs.get(cal.get("tariff_id", ""))
    if filed is None:
        return Rejection(Reason.UNKNOWN_TARIFF, f"{cal.get('tariff_id')} is not filed")
    tariff = tariff_in_force(view.tariff_schedule(filed["tariff_id"]) or [filed],
                             p["swapped_at_ms"])  # M3: the version in force at the swap
    delivered_wh = max(0, p["pack_out_charge_wh"] - p["pack_in_charge_wh"])
    lines, total = swap_settlement(tariff, res.rate_per_kwh, delivered_wh, p["swapped_at_ms"])
    _move_packs(state, p, hold, res.vehicle_credential_id)
    res.status, res.session_id = ReservationStatus.COMPLETED, p["session_id"]
    del holds(state)[res.reservation_id]
    signers = [cmd.author_id, res.vehicle_credential_id]
    settlement_id = f"stl:{p['session_id']}"
    _remember(state, p, res.stop_ms, settlement_id, signers)
    _emit(state, out, decided(DecisionType.SETTLEMENT_ADMITTED, {
        "settlement_id": settlement_id, "session_id": p["session_id"],
        "identity": p["identity"], "tariff_id": tariff.tariff_id, "currency": tariff.currency,
        "rounding": tariff.rounding, "lines": lines, "total_amount": total,
        "energy_import_wh": delivered_wh, "energy_export_wh": 0,
        "evidence_event_ids": [cmd.event_id], "required_signer_ids": signers,
        "kind": SettlementKind.CHARGE, "adjusts_settlement_id": "",
        "admitted_at_ms": cmd.occurred_at_ms}))
    _emit(state, out, decided(DecisionType.SETTLEMENT_FINALISED, {
        "settlement_id": settlement_id, "session_id": p["session_id"], "signer_ids": signers,
        "finalised_at_ms": cmd.occurred_at_ms}))
    return None


def _swap_booking(state: LedgerState,
                  p: dict[str, Any]) -> tuple[ledger.Reservation, dict[str, Any]] | Rejection:
    ident = p["identity"]
    res = state.reservations.get(p["reservation_id"])
    if res is None or res.status != ReservationStatus.ACTIVE:
        return Rejection(Reason.UNKNOWN_RESERVATION,
                         f"{p['reservation_id']} is not an active booking")
    hold = holds(state).get(res.reservation_id)
    if hold is None:
        return Rejection(Reason.NOT_A_SWAP_BOOKING, f"{res.reservation_id} holds no pack")
    if res.vehicle_credential_id != ident["vehicle_credential_id"]:
        return Rejection(Reason.NOT_YOUR_RESERVATION, "the booking belongs to another vehicle")
    if res.connector_id != ident["connector_id"]:
        return Rejection(Reason.WRONG_CONNECTOR, f"booked on {res.connector_id}")
    if not res.start_ms - EARLY_SWAP_MS_MAX <= p["swapped_at_ms"] < res.stop_ms:
        return Rejection(Reason.OUTSIDE_RESERVATION, "the swap is outside the booked window")
    if p["session_id"] in swaps(state) or p["session_id"] in sessions.sessions(state):
        return Rejection(Reason.DUPLICATE_SESSION, f"{p['session_id']} already exists")
    if len(swaps(state)) >= SWAPS_KEPT_MAX:
        return Rejection(Reason.LEDGER_FULL, f"{SWAPS_KEPT_MAX} swaps kept")
    return res, hold


def _packs_problem(state: LedgerState, p: dict[str, Any], hold: dict[str, Any],
                   vehicle_id: str) -> Rejection | None:
    inventory = packs(state)
    out_id, in_id = p["pack_out_id"], p["pack_in_id"]
    if out_id != hold["pack_id"]:
        return Rejection(Reason.WRONG_PACK, f"the booking holds {hold['pack_id']}, not {out_id}")
    pack = inventory.get(out_id)
    if pack is None or pack["status"] != IN_STOCK:
        return Rejection(Reason.PACK_NOT_AVAILABLE, f"{out_id} is not in stock")
    # The station may have re-registered the pack since the booking: check it as it is now.
    problem = compatibility_problem(pack, hold["chemistry"], hold["min_soh_permille"])
    if problem is not None:
        return problem
    if not 0 <= p["pack_out_charge_wh"] <= pack["capacity_wh"]:
        return Rejection(Reason.IMPLAUSIBLE_CHARGE, f"{p['pack_out_charge_wh']} Wh in a "
                         f"{pack['capacity_wh']} Wh pack")
    if in_id == out_id or (hold["returned_pack_id"] and in_id != hold["returned_pack_id"]):
        return Rejection(Reason.RETURNED_PACK_MISMATCH, f"the vehicle declared it returns "
                         f"{hold['returned_pack_id'] or 'no pack'}, the swap names {in_id!r}")
    returned = inventory.get(in_id)
    if returned is not None and returned["status"] == ON_VEHICLE and (
            returned["vehicle_credential_id"] != vehicle_id):
        return Rejection(Reason.PACK_NOT_HELD_BY_VEHICLE, f"{in_id} went out on vehicle "
                         f"{returned['vehicle_credential_id']}")
    if returned is not None and returned["status"] != ON_VEHICLE:
        return Rejection(Reason.PACK_NOT_ON_VEHICLE, f"{in_id} is {returned['status']} here")
    capacity = returned["capacity_wh"] if returned else PACK_CAPACITY_WH_MAX
    if not 0 <= p["pack_in_charge_wh"] <= capacity or len(in_id) > PACK_ID_CHARS_MAX:
        return Rejection(Reason.IMPLAUSIBLE_CHARGE,
                         f"returned pack holds {p['pack_in_charge_wh']} Wh")
    if not 0 <= p["pack_in_state_of_health_permille"] <= PERMILLE_MAX:
        return Rejection(Reason.INVALID_PACK, f"state of health must be 0..{PERMILLE_MAX} permille")
    return None


def _move_packs(state: LedgerState, p: dict[str, Any], hold: dict[str, Any],
                vehicle_id: str) -> None:
    inventory = packs(state)
    out = inventory[p["pack_out_id"]]
    out.update(status=ON_VEHICLE, vehicle_credential_id=vehicle_id,
               charge_wh=p["pack_out_charge_wh"], cycles=out["cycles"] + 1)
    if not p["pack_in_id"]:
        return
    known = inventory.get(p["pack_in_id"])
    if known is None and len(inventory) >= PACKS_PER_STATION_MAX:
        return  # the swap stands; the station must register the pack to issue it again
    chemistry = p["pack_in_chemistry"] or (known["chemistry"] if known else hold["chemistry"])
    inventory[p["pack_in_id"]] = {
        "pack_id": p["pack_in_id"], "chemistry": norm_chemistry(chemistry),
        "state_of_health_permille": (p["pack_in_state_of_health_permille"]
                                     or (known["state_of_health_permille"] if known else 0)),
        "capacity_wh": known["capacity_wh"] if known else 0, "charge_wh": p["pack_in_charge_wh"],
        "status": RETURNED, "vehicle_credential_id": "",
        "registered_event_id": known["registered_event_id"] if known else "",
        "cycles": known["cycles"] if known else 0,
    }


def _remember(state: LedgerState, p: dict[str, Any], booked_stop_ms: int, settlement_id: str,
              signers: list[str]) -> None:
    done = swaps(state)
    horizon = state.clock_ms - ledger.FINISHED_KEPT_MS
    for sid in [sid for sid, s in done.items() if s["booked_stop_ms"] < horizon]:
        del done[sid]
    done[p["session_id"]] = {
        "session_id": p["session_id"], "settlement_id": settlement_id,
        "pack_out_id": p["pack_out_id"], "pack_in_id": p["pack_in_id"],
        "signer_ids": signers, "booked_stop_ms": booked_stop_ms,
        "status": SessionStatus.FINAL}


def bidding(previous: Handler) -> Handler:
    """Packs are booked at the posted price only: a sealed bid cannot hold a pack."""

    def handle(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
        ext = swap_claim(cmd.payload["claim"])
        if ext is not None:
            return Rejection(Reason.SWAP_AT_POSTED_PRICE, "a swap is booked at the posted price "
                             "(accept it or walk up), not by bidding")
        problem = _bay_problem(state, cmd.payload["identity"]["connector_id"], False)
        return problem if problem is not None else previous(state, cmd, view, out)

    return handle
