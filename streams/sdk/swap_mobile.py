"""Participant SDK for two embodiments (M9): battery swap (E2) and the mobile charger (E5).

The records a swap station, a vehicle at its bay and a dispatched charging truck sign. They go
on the market topic keyed by the station, like every other input of the station's ledger
(``capacity`` and ``session`` domains: :func:`chargemesh.streams.sdk.participant.topic_for`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant, money

PACK_REGISTERED = "chargemesh.capacity.v1.PackRegistered"
PACK_SWAP_COMPLETED = "chargemesh.session.v1.PackSwapCompleted"
MOBILE_STATION_RELOCATED = "chargemesh.capacity.v1.MobileStationRelocated"


def swap_extension(*, chemistry: str, min_state_of_health_permille: int, pack_id: str = "",
                   returned_pack_id: str = "") -> tuple[str, dict[str, Any]]:
    """The claim's E2 extension: the vehicle's declared chemistry, the lowest state of health it
    accepts, the pack it asks for ("" = any compatible pack) and the pack it brings back."""
    return ("chargemesh.embodiment.v1.BatterySwapExtension", {
        "pack_id": pack_id, "chemistry": chemistry,
        "state_of_health_permille": min_state_of_health_permille,
        "returned_pack_id": returned_pack_id})


def mobile_extension(*, dispatch_id: str, latitude_microdeg: int,
                     longitude_microdeg: int) -> tuple[str, dict[str, Any]]:
    """The claim's E5 extension: the truck's dispatch and where the vehicle waits for it."""
    return ("chargemesh.embodiment.v1.MobileChargerExtension", {
        "dispatch_id": dispatch_id, "latitude_microdeg": latitude_microdeg,
        "longitude_microdeg": longitude_microdeg})


def pack_registered(station: Participant, *, pack_id: str, chemistry: str,
                    state_of_health_permille: int, capacity_wh: int, charge_wh: int,
                    at_ms: int) -> SignedEvent:
    """E2: the station declares a charged pack it holds (again after recharging it)."""
    payload = {"station_id": station.subject_id, "pack_id": pack_id, "chemistry": chemistry,
               "state_of_health_permille": state_of_health_permille,
               "capacity_wh": capacity_wh, "charge_wh": charge_wh, "registered_at_ms": at_ms}
    return station.sign(PACK_REGISTERED, payload, subject_key=station.subject_id,
                        occurred_at_ms=at_ms, chain_id=f"pack:{pack_id}")


def pack_swapped(station: Participant, vehicle: Participant, *, session_id: str,
                 reservation_id: str, ident: dict[str, Any], pack_out_id: str,
                 pack_out_charge_wh: int, pack_in_id: str, pack_in_charge_wh: int,
                 swapped_at_ms: int, pack_in_chemistry: str = "",
                 pack_in_state_of_health_permille: int = 0) -> SignedEvent:
    """E2 evidence: the swap at the bay, signed by the station and co-signed by the vehicle."""
    payload = {"session_id": session_id, "reservation_id": reservation_id, "identity": ident,
               "pack_out_id": pack_out_id, "pack_out_charge_wh": pack_out_charge_wh,
               "pack_in_id": pack_in_id, "pack_in_chemistry": pack_in_chemistry,
               "pack_in_state_of_health_permille": pack_in_state_of_health_permille,
               "pack_in_charge_wh": pack_in_charge_wh, "swapped_at_ms": swapped_at_ms}
    return station.sign(PACK_SWAP_COMPLETED, payload, subject_key=ident["station_id"],
                        occurred_at_ms=swapped_at_ms, chain_id=session_id,
                        co_signers=[vehicle])


def mobile_relocated(truck: Participant, *, jurisdiction: str, rate_authority_id: str,
                     tariff_id: str, posted_rate_per_kwh: str | Decimal,
                     latitude_microdeg: int, longitude_microdeg: int, at_ms: int,
                     dispatch_id: str = "") -> SignedEvent:
    """E5: the truck signs where it now delivers and under which filed tariff."""
    payload = {"station_id": truck.subject_id, "dispatch_id": dispatch_id,
               "latitude_microdeg": latitude_microdeg, "longitude_microdeg": longitude_microdeg,
               "jurisdiction": jurisdiction, "rate_authority_id": rate_authority_id,
               "tariff_id": tariff_id, "posted_rate_per_kwh": money(posted_rate_per_kwh),
               "relocated_at_ms": at_ms}
    return truck.sign(MOBILE_STATION_RELOCATED, payload, subject_key=truck.subject_id,
                      occurred_at_ms=at_ms, chain_id=f"dispatch:{dispatch_id}")
