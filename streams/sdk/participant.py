"""Participant SDK: hold keys and credentials and sign chargemesh events.

A vehicle, station, meter, grid operator, issuer or authority is a :class:`Participant` (a signer
plus the subject it stands for); the functions below build the records each of them signs.
:class:`~chargemesh.streams.sdk.publisher.Publisher` writes them to their topics (it and
``topic_for`` stay importable from here) and :class:`~chargemesh.streams.sdk.reader.Reader` reads
back what the processors decided.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from decimal import Decimal
from typing import Any, Iterable, Protocol

from chargemesh.streams.envelope import SignedEvent, seal
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.observer_decision import decision_digest as observer_decision_digest
# Publisher and topic_for live in publisher.py; importers of this module keep finding them here.
from chargemesh.streams.sdk.publisher import Publisher as Publisher
from chargemesh.streams.sdk.publisher import topic_for as topic_for

FOREVER_MS = 2**62
MONEY_SCALE = Decimal("0.000001")


def now_ms() -> int:
    return int(time.time() * 1000)


def money(value: str | int | Decimal) -> Decimal:
    """A Decimal at the wire scale (6 places); never built from a float."""
    if isinstance(value, float):
        raise TypeError("money is never a float")
    return Decimal(value).quantize(MONEY_SCALE)


def seed_for(name: str, secret: str = "chargemesh-demo") -> bytes:
    """A deterministic 32-byte key seed (simulations and tests that must be reproducible)."""
    return hashlib.sha256(f"{secret}/{name}".encode()).digest()


class CredentialHolder(Protocol):
    """What an issuer needs of a holder: its public parts (a Participant, or a key request)."""

    @property
    def credential_id(self) -> str: ...

    @property
    def subject_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Participant:
    signer: Signer
    subject_id: str

    @property
    def credential_id(self) -> str:
        return self.signer.credential_id

    @property
    def public_key(self) -> bytes:
        return self.signer.public_key

    @classmethod
    def generate(cls, credential_id: str, subject_id: str | None = None) -> "Participant":
        return cls(Signer.generate(credential_id), subject_id or credential_id)

    @classmethod
    def seeded(cls, credential_id: str, subject_id: str | None = None,
               secret: str = "chargemesh-demo") -> "Participant":
        return cls(Signer.from_seed(credential_id, seed_for(credential_id, secret)),
                   subject_id or credential_id)

    def sign(
        self,
        event_type: str,
        payload: dict[str, Any],
        *,
        subject_key: str,
        occurred_at_ms: int | None = None,
        chain_id: str = "",
        prev_hash: bytes = b"",
        event_id: str | None = None,
        co_signers: Iterable["Participant"] = (),
    ) -> SignedEvent:
        return seal(
            event_type,
            payload,
            author=self.signer,
            subject_key=subject_key,
            occurred_at_ms=now_ms() if occurred_at_ms is None else occurred_at_ms,
            chain_id=chain_id,
            prev_hash=prev_hash,
            event_id=event_id,
            co_signers=tuple(p.signer for p in co_signers),
        )

    # ---- governance ------------------------------------------------------------------------

    def declare_authority(self, name: str, jurisdiction: str, roles: list[str],
                          currency: str = "", at_ms: int = 0,
                          jurisdictions: list[str] | None = None) -> SignedEvent:
        """Only a trust anchor (or an authority already recognised by one) may declare itself;
        ``roles`` and ``jurisdiction`` plus ``jurisdictions`` are what it governs and delegates."""
        payload = {
            "authority_id": self.credential_id, "name": name, "jurisdiction": jurisdiction,
            "public_key": self.public_key, "roles": roles, "currency": currency,
            "declared_at_ms": at_ms, "jurisdictions": list(jurisdictions or []),
        }
        return self.sign("chargemesh.governance.v1.AuthorityDeclared", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def recognise_authority(self, other: "Participant", jurisdiction: str, roles: list[str],
                            valid_from_ms: int = 0, valid_until_ms: int = FOREVER_MS,
                            at_ms: int = 0, jurisdictions: list[str] | None = None) -> SignedEvent:
        """A recognised authority vouches for another (e.g. a foreign rate authority), within
        its own roles and jurisdictions."""
        payload = {
            "authority_id": other.credential_id, "recognised_by_authority_id": self.credential_id,
            "public_key": other.public_key, "jurisdiction": jurisdiction, "roles": roles,
            "valid_from_ms": valid_from_ms, "valid_until_ms": valid_until_ms,
            "jurisdictions": list(jurisdictions or []),
        }
        return self.sign("chargemesh.governance.v1.AuthorityRecognised", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def delegate_issuer(self, issuer: "Participant", roles: list[str], jurisdictions: list[str],
                        valid_from_ms: int = 0, valid_until_ms: int = FOREVER_MS,
                        at_ms: int = 0) -> SignedEvent:
        payload = {
            "issuer_id": issuer.credential_id, "authority_id": self.credential_id,
            "public_key": issuer.public_key, "roles": roles, "jurisdictions": jurisdictions,
            "valid_from_ms": valid_from_ms, "valid_until_ms": valid_until_ms,
        }
        return self.sign("chargemesh.governance.v1.IssuerDelegated", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def issue_credential(self, holder: CredentialHolder, roles: list[str], jurisdiction: str,
                         valid_from_ms: int = 0, valid_until_ms: int = FOREVER_MS,
                         attributes: dict[str, str] | None = None, at_ms: int = 0) -> SignedEvent:
        payload = {
            "credential_id": holder.credential_id, "subject_id": holder.subject_id,
            "issuer_id": self.credential_id, "public_key": holder.public_key, "roles": roles,
            "jurisdiction": jurisdiction, "valid_from_ms": valid_from_ms,
            "valid_until_ms": valid_until_ms,
            "attributes": [{"name": k, "value": v} for k, v in sorted((attributes or {}).items())],
        }
        return self.sign("chargemesh.governance.v1.CredentialIssued", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def revoke(self, credential_id: str, effective_at_ms: int, reason_code: str = "OTHER",
               detail: str = "", at_ms: int | None = None) -> SignedEvent:
        payload = {
            "credential_id": credential_id, "revoked_by_id": self.credential_id,
            "effective_at_ms": effective_at_ms, "reason_code": reason_code, "detail": detail,
        }
        return self.sign("chargemesh.governance.v1.CredentialRevoked", payload,
                         subject_key=self.credential_id,
                         occurred_at_ms=effective_at_ms if at_ms is None else at_ms)


# ---- market helpers: the records vehicles, stations and authorities sign --------------------


def hardware_id_for(connector_id: str) -> str:
    """The hardware id :func:`connector` registers for ``connector_id`` by default (and
    :func:`identity` names by default): the ledger binds a session to the registered one."""
    return f"hw-{connector_id}" if connector_id else ""


def identity(*, station_id: str, vehicle: Participant, rate_authority_id: str,
             jurisdiction: str, connector_id: str = "", connector_hardware_id: str = "",
             vehicle_id_kind: str = "PSEUDONYM") -> dict[str, Any]:
    """C1 Identity of a vehicle at a station's connector under a rate authority.

    Bound by the ledger: ``jurisdiction`` and ``rate_authority_id`` are the station calendar's,
    ``connector_hardware_id`` is the one the calendar registered for ``connector_id`` (default:
    :func:`hardware_id_for`, what :func:`connector` registers), and ``vehicle_id_kind`` is
    ``VIN`` for a credential with a ``vin`` attribute (its subject is the VIN), else
    ``PSEUDONYM``."""
    return {
        "station_id": station_id, "connector_id": connector_id,
        "connector_hardware_id": connector_hardware_id or hardware_id_for(connector_id),
        "vehicle_id": vehicle.subject_id, "vehicle_id_kind": vehicle_id_kind,
        "vehicle_credential_id": vehicle.credential_id,
        "rate_authority_id": rate_authority_id, "jurisdiction": jurisdiction,
    }


def claim(*, energy_wh: int, start_ms: int, stop_ms: int, ceiling_rate_per_kwh: str | Decimal,
          currency: str, curtailable: bool = False, v2g_eligible: bool = False,
          demand_response_priority: int = 0, adders: list[dict[str, Any]] | None = None,
          extension: Any = None, overrun_allowed: bool = False) -> dict[str, Any]:
    """C2 Claim: the terms a vehicle offers (``overrun_allowed``: energy metered beyond
    ``energy_wh`` may be billed; else the settlement bills at most ``energy_wh``)."""
    return {
        "energy_wh": energy_wh, "slot_start_at_ms": start_ms, "slot_stop_at_ms": stop_ms,
        "ceiling_rate_per_kwh": money(ceiling_rate_per_kwh), "currency": currency,
        "grid_flags": {"curtailable": curtailable, "v2g_eligible": v2g_eligible,
                       "demand_response_priority": demand_response_priority},
        "adders": adders or [], "extension": extension, "overrun_allowed": overrun_allowed,
    }


def reciprocity_agreed(authority_a: Participant, authority_b: Participant, *, agreement_id: str,
                       valid_from_ms: int = 0, valid_until_ms: int = FOREVER_MS,
                       at_ms: int = 0) -> SignedEvent:
    """P1: two authorities recognise each other's credentials for roaming (both sign)."""
    payload = {"agreement_id": agreement_id, "authority_a_id": authority_a.credential_id,
               "authority_b_id": authority_b.credential_id, "valid_from_ms": valid_from_ms,
               "valid_until_ms": valid_until_ms}
    return authority_a.sign("chargemesh.governance.v1.ReciprocityAgreed", payload,
                            subject_key=authority_a.credential_id, occurred_at_ms=at_ms,
                            co_signers=[authority_b])


def tariff_filed(authority: Participant, *, tariff_id: str, jurisdiction: str, currency: str,
                 ceiling_per_kwh: str, minor_units: int = 2, rounding: str = "HALF_UP",
                 time_of_use: list[tuple[int, int, str]] | None = None, tax_percent: str = "0",
                 congestion_fee_per_kwh: str = "0", renewable_adder_per_kwh: str = "0",
                 swap_fee: str = "0", station_ids: list[str] | None = None,
                 above_ceiling: str = "CAP", at_ms: int = 0, effective_from_ms: int = 0,
                 effective_until_ms: int = FOREVER_MS,
                 clearing_price_cap_per_kwh: str = "0") -> SignedEvent:
    """M3: a rate authority files a tariff (or, under a tariff id it filed, a new version in
    force from ``effective_from_ms``)."""
    payload = {
        "tariff_id": tariff_id, "rate_authority_id": authority.credential_id,
        "jurisdiction": jurisdiction, "station_ids": station_ids or [], "currency": currency,
        "currency_minor_units": minor_units, "rounding": rounding,
        "energy_rate_ceiling_per_kwh": money(ceiling_per_kwh),
        "time_of_use": [{"start_minute_of_day": a, "end_minute_of_day": b,
                         "rate_per_kwh": money(r)} for a, b, r in (time_of_use or [])],
        "tax_percent": money(tax_percent), "congestion_fee_per_kwh": money(congestion_fee_per_kwh),
        "renewable_adder_per_kwh": money(renewable_adder_per_kwh), "swap_fee": money(swap_fee),
        "effective_from_ms": effective_from_ms, "effective_until_ms": effective_until_ms,
        "above_ceiling": above_ceiling,
        "clearing_price_cap_per_kwh": money(clearing_price_cap_per_kwh),
    }
    return authority.sign("chargemesh.governance.v1.TariffFiled", payload,
                          subject_key=authority.credential_id, occurred_at_ms=at_ms)


def rules_published(authority: Participant, *, rules_version: str, jurisdiction: str,
                    no_show_grace_ms: int = 10 * 60_000, bid_gate_closure_ms: int = 15 * 60_000,
                    walk_up_horizon_ms: int = 4 * 3_600_000,
                    bid_resolution: str = "HIGHEST_RATE_THEN_EARLIEST",
                    demand_response_priority_wins: bool = True,
                    reallocation: str = "SAME_SLOT_OTHER_CONNECTOR_THEN_NEXT_SLOT",
                    curtailment_order: str = "CURTAILABLE_FIRST_LOWEST_PRIORITY_FIRST",
                    reprice_response_ms: int = 5 * 60_000,
                    finality_window_ms: int = 48 * 3_600_000,
                    dispute_window_ms: int = 90 * 24 * 3_600_000,
                    at_ms: int = 0) -> SignedEvent:
    payload = {
        "rules_version": rules_version, "authority_id": authority.credential_id,
        "jurisdiction": jurisdiction, "bid_resolution": bid_resolution,
        "demand_response_priority_wins": demand_response_priority_wins,
        "no_show_grace_ms": no_show_grace_ms, "reallocation": reallocation,
        "curtailment_order": curtailment_order, "bid_gate_closure_ms": bid_gate_closure_ms,
        "walk_up_horizon_ms": walk_up_horizon_ms, "effective_from_ms": 0,
        "reprice_response_ms": reprice_response_ms,
        "finality_window_ms": finality_window_ms, "dispute_window_ms": dispute_window_ms,
    }
    return authority.sign("chargemesh.governance.v1.AllocationRulesPublished", payload,
                          subject_key=authority.credential_id, occurred_at_ms=at_ms)


def connector(connector_id: str, power_w: int, kind: str = "DC_FAST",
              meter_credential_id: str = "", bidirectional: bool = False,
              hardware_id: str = "") -> dict[str, Any]:
    """A calendar's connector, registering its hardware id (default :func:`hardware_id_for`)."""
    return {"connector_id": connector_id,
            "hardware_id": hardware_id or hardware_id_for(connector_id), "power_w": power_w,
            "kind": kind, "meter_credential_id": meter_credential_id,
            "bidirectional": bidirectional}


def calendar_published(station: Participant, *, rate_authority_id: str, jurisdiction: str,
                       tariff_id: str, rules_version: str, connectors: list[dict[str, Any]],
                       slot_duration_ms: int, horizon_start_ms: int, horizon_end_ms: int,
                       posted_rate_per_kwh: str, currency: str, grid_zone_id: str = "zone-1",
                       calendar_version: int = 1, latitude_microdeg: int = 0,
                       longitude_microdeg: int = 0, at_ms: int | None = None) -> SignedEvent:
    payload = {
        "station_id": station.subject_id, "calendar_version": calendar_version,
        "rate_authority_id": rate_authority_id, "jurisdiction": jurisdiction,
        "tariff_id": tariff_id, "grid_zone_id": grid_zone_id,
        "latitude_microdeg": latitude_microdeg, "longitude_microdeg": longitude_microdeg,
        "connectors": connectors, "slot_duration_ms": slot_duration_ms,
        "horizon_start_at_ms": horizon_start_ms, "horizon_end_at_ms": horizon_end_ms,
        "posted_rate_per_kwh": money(posted_rate_per_kwh), "currency": currency,
        "rules_version": rules_version, "extension": None,
    }
    return station.sign("chargemesh.capacity.v1.SlotCalendarPublished", payload,
                        subject_key=station.subject_id,
                        occurred_at_ms=horizon_start_ms if at_ms is None else at_ms)


def capacity_changed(station: Participant, *, connector_id: str, available: bool,
                     from_ms: int, until_ms: int, cause: str, power_w: int = 0,
                     grid_event_id: str = "", at_ms: int | None = None) -> SignedEvent:
    payload = {"station_id": station.subject_id, "connector_id": connector_id,
               "available": available, "power_w": power_w, "from_at_ms": from_ms,
               "until_at_ms": until_ms, "cause": cause, "grid_event_id": grid_event_id}
    return station.sign("chargemesh.capacity.v1.CapacityChanged", payload,
                        subject_key=station.subject_id,
                        occurred_at_ms=from_ms if at_ms is None else at_ms)


def heartbeat(station: Participant, at_ms: int) -> SignedEvent:
    return station.sign("chargemesh.capacity.v1.StationHeartbeat",
                        {"station_id": station.subject_id, "at_ms": at_ms},
                        subject_key=station.subject_id, occurred_at_ms=at_ms)


def order(vehicle: Participant, kind: str, *, order_id: str, ident: dict[str, Any],
          terms: dict[str, Any], rate_per_kwh: str | Decimal = "0",
          arrived_at_ms: int = 0, at_ms: int) -> SignedEvent:
    """kind: "bid" (BidPlaced), "posted" (PostedPriceAccepted) or "walk_up" (WalkUpRequested)."""
    payload: dict[str, Any] = {"order_id": order_id, "identity": ident, "claim": terms}
    if kind == "bid":
        event_type, payload["bid_rate_per_kwh"] = "BidPlaced", money(rate_per_kwh)
    elif kind == "posted":
        event_type, payload["accepted_rate_per_kwh"] = "PostedPriceAccepted", money(rate_per_kwh)
    elif kind == "walk_up":
        event_type, payload["arrived_at_ms"] = "WalkUpRequested", arrived_at_ms
    else:
        raise ValueError(f"unknown order kind {kind!r}")
    return vehicle.sign(f"chargemesh.orders.v1.{event_type}", payload,
                        subject_key=ident["station_id"], occurred_at_ms=at_ms)


# ---- sessions, grid and settlement evidence -------------------------------------------------


def handshake(station: Participant, vehicle: Participant, *, session_id: str,
              reservation_id: str, ident: dict[str, Any], started_at_ms: int,
              meter_start_wh: int = 0, meter_start_export_wh: int = 0) -> SignedEvent:
    """C3: the connector handshake, signed by the station and co-signed by the vehicle."""
    payload = {"session_id": session_id, "reservation_id": reservation_id, "identity": ident,
               "started_at_ms": started_at_ms, "meter_start_wh": meter_start_wh,
               "meter_start_export_wh": meter_start_export_wh}
    return station.sign("chargemesh.session.v1.ConnectorHandshakeCompleted", payload,
                        subject_key=ident["station_id"], occurred_at_ms=started_at_ms,
                        chain_id=session_id, co_signers=[vehicle])


def meter_reading(meter: Participant, *, session_id: str, station_id: str, connector_id: str,
                  seq: int, import_wh: int, at_ms: int, export_wh: int = 0) -> SignedEvent:
    payload = {"session_id": session_id, "station_id": station_id, "connector_id": connector_id,
               "reading_seq": seq, "cumulative_import_wh": import_wh,
               "cumulative_export_wh": export_wh, "read_at_ms": at_ms}
    return meter.sign("chargemesh.session.v1.MeterReadingRecorded", payload,
                      subject_key=station_id, occurred_at_ms=at_ms, chain_id=session_id)


def reprice_accepted(vehicle: Participant, *, session_id: str, station_id: str,
                     grid_event_id: str, rate_per_kwh: str | Decimal, at_ms: int) -> SignedEvent:
    payload = {"session_id": session_id, "station_id": station_id,
               "grid_event_id": grid_event_id, "accepted_rate_per_kwh": money(rate_per_kwh)}
    return vehicle.sign("chargemesh.session.v1.RepriceAccepted", payload, subject_key=station_id,
                        occurred_at_ms=at_ms, chain_id=session_id)


def session_stopped(party: Participant, *, session_id: str, station_id: str, at_ms: int,
                    reason: str = "COMPLETED") -> SignedEvent:
    payload = {"session_id": session_id, "station_id": station_id, "stopped_at_ms": at_ms,
               "reason": reason}
    return party.sign("chargemesh.session.v1.SessionStopped", payload, subject_key=station_id,
                      occurred_at_ms=at_ms, chain_id=session_id)


def meter_closed_out(station: Participant, *, session_id: str, connector_id: str,
                     closed_at_ms: int, final_import_wh: int, last_reading_seq: int,
                     final_export_wh: int = 0) -> SignedEvent:
    payload = {"session_id": session_id, "station_id": station.subject_id,
               "connector_id": connector_id, "closed_at_ms": closed_at_ms,
               "final_import_wh": final_import_wh, "final_export_wh": final_export_wh,
               "last_reading_seq": last_reading_seq}
    return station.sign("chargemesh.session.v1.MeterClosedOut", payload,
                        subject_key=station.subject_id, occurred_at_ms=closed_at_ms,
                        chain_id=session_id)


def close_out_countersigned(vehicle: Participant, close_out: SignedEvent,
                            at_ms: int) -> SignedEvent:
    """The vehicle's countersignature binds the exact close-out event (by its hash)."""
    station_id = close_out.body.subject_key
    payload = {"session_id": close_out.body.chain_id, "station_id": station_id,
               "close_out_event_hash": close_out.event_hash, "countersigned_at_ms": at_ms}
    return vehicle.sign("chargemesh.session.v1.CloseOutCountersigned", payload,
                        subject_key=station_id, occurred_at_ms=at_ms,
                        chain_id=close_out.body.chain_id, prev_hash=close_out.event_hash)


def grid_zone_registered(authority: Participant, *, grid_zone_id: str, jurisdiction: str,
                         operator_ids: list[str], at_ms: int = 0,
                         effective_from_ms: int | None = None) -> SignedEvent:
    """A jurisdiction's authority registers a grid zone and names its operator credentials
    (again, to replace them); only they (or the authority) declare the zone's program."""
    payload = {"grid_zone_id": grid_zone_id, "jurisdiction": jurisdiction,
               "operator_credential_ids": operator_ids,
               "registered_by_authority_id": authority.credential_id,
               "effective_from_ms": at_ms if effective_from_ms is None else effective_from_ms}
    return authority.sign("chargemesh.governance.v1.GridZoneRegistered", payload,
                          subject_key=authority.credential_id, occurred_at_ms=at_ms)


def grid_program(operator: Participant, *, grid_zone_id: str, program: str,
                 operator_ids: list[str], at_ms: int = 0) -> SignedEvent:
    payload = {"grid_zone_id": grid_zone_id, "program": program,
               "grid_operator_credential_ids": operator_ids, "effective_from_ms": at_ms}
    return operator.sign("chargemesh.grid.v1.GridProgramDeclared", payload,
                         subject_key=operator.credential_id, occurred_at_ms=at_ms)


def grid_event(operator: Participant, *, grid_event_id: str, grid_zone_id: str, kind: str,
               from_ms: int, until_ms: int, rate_per_kwh: str | Decimal = "0",
               capacity_limit_w: int = 0, at_ms: int | None = None) -> SignedEvent:
    payload = {"grid_event_id": grid_event_id, "grid_zone_id": grid_zone_id, "kind": kind,
               "from_at_ms": from_ms, "until_at_ms": until_ms,
               "rate_per_kwh": money(rate_per_kwh), "capacity_limit_w": capacity_limit_w}
    return operator.sign("chargemesh.grid.v1.GridEventDeclared", payload,
                         subject_key=grid_zone_id,
                         occurred_at_ms=from_ms if at_ms is None else at_ms)


def settlement_co_signed(operator: Participant, close_out: SignedEvent, *, grid_zone_id: str,
                         clearing_price_per_kwh: str | Decimal = "0",
                         at_ms: int) -> SignedEvent:
    session_id = close_out.body.chain_id
    payload = {"settlement_id": f"stl:{session_id}", "session_id": session_id,
               "station_id": close_out.body.subject_key, "grid_zone_id": grid_zone_id,
               "close_out_event_hash": close_out.event_hash,
               "clearing_price_per_kwh": money(clearing_price_per_kwh), "co_signed_at_ms": at_ms}
    return operator.sign("chargemesh.grid.v1.SettlementCoSigned", payload,
                         subject_key=close_out.body.subject_key, occurred_at_ms=at_ms,
                         chain_id=session_id, prev_hash=close_out.event_hash)


# ---- disputes (P2) ----------------------------------------------------------------------------


def dispute_opened(party: Participant, *, dispute_id: str, session_id: str, station_id: str,
                   kind: str, claim: str, evidence_event_ids: list[str],
                   settlement_id: str = "", at_ms: int) -> SignedEvent:
    """A session's vehicle or station opens a dispute (kind: INTERRUPTED_CHARGE, METER_DISPUTE,
    PAYMENT_FAILURE) citing event ids of the session's lineage."""
    payload = {"dispute_id": dispute_id, "session_id": session_id,
               "settlement_id": settlement_id, "kind": kind, "claim": claim,
               "opened_at_ms": at_ms, "station_id": station_id,
               "evidence_event_ids": list(evidence_event_ids)}
    return party.sign("chargemesh.dispute.v1.DisputeOpened", payload, subject_key=station_id,
                      occurred_at_ms=at_ms, chain_id=session_id)


def dispute_evidence(party: Participant, *, dispute_id: str, session_id: str, station_id: str,
                     evidence_event_ids: list[str], statement: str, at_ms: int) -> SignedEvent:
    payload = {"dispute_id": dispute_id, "session_id": session_id,
               "evidence_event_ids": list(evidence_event_ids), "statement": statement,
               "station_id": station_id}
    return party.sign("chargemesh.dispute.v1.DisputeEvidenceSubmitted", payload,
                      subject_key=station_id, occurred_at_ms=at_ms, chain_id=session_id)


def dispute_resolved(arbiter: Participant, *, dispute_id: str, session_id: str, station_id: str,
                     outcome: str, reasoning: str, at_ms: int,
                     adjustment_amount: str | Decimal = "0", currency: str = "") -> SignedEvent:
    """An arbiter's outcome: UPHELD, DISMISSED, ADJUSTED (adjustment_amount before tax, negative
    credits the vehicle) or VOIDED (a full credit note)."""
    payload = {"dispute_id": dispute_id, "session_id": session_id, "outcome": outcome,
               "adjustment_amount": money(adjustment_amount), "currency": currency,
               "reasoning": reasoning, "resolved_at_ms": at_ms, "station_id": station_id}
    return arbiter.sign("chargemesh.dispute.v1.DisputeResolved", payload, subject_key=station_id,
                        occurred_at_ms=at_ms, chain_id=session_id)


def payment_failed(agent: Participant, *, settlement_id: str, session_id: str, station_id: str,
                   vehicle_credential_id: str, reason: str, at_ms: int) -> SignedEvent:
    """The vehicle's payment agent (the PAYMENT_AGENT credential its vehicle credential names in
    its ``payment_agent`` attribute) reports a failed payment: it opens a PAYMENT_FAILURE
    dispute on the settlement (issue 16)."""
    payload = {"settlement_id": settlement_id, "session_id": session_id,
               "station_id": station_id, "vehicle_credential_id": vehicle_credential_id,
               "reason": reason, "failed_at_ms": at_ms}
    return agent.sign("chargemesh.dispute.v1.PaymentFailed", payload, subject_key=station_id,
                      occurred_at_ms=at_ms, chain_id=session_id)


# ---- P3: grid observers -------------------------------------------------------------------------


def observer_set_declared(authority: Participant, operator: Participant, *, grid_zone_id: str,
                          version: int, observer_ids: list[str], threshold_k: int,
                          faults_tolerated_f: int, interval_ms: int, effective_from_ms: int,
                          at_ms: int) -> SignedEvent:
    """A zone's observer set: signed by an authority above the zone's operator, co-signed by it."""
    payload = {"grid_zone_id": grid_zone_id, "observer_set_version": version,
               "observer_credential_ids": observer_ids, "threshold_k": threshold_k,
               "faults_tolerated_f": faults_tolerated_f, "interval_ms": interval_ms,
               "effective_from_ms": effective_from_ms,
               "declared_by_authority_id": authority.credential_id,
               "grid_operator_credential_id": operator.credential_id}
    return authority.sign("chargemesh.grid.v1.ObserverSetDeclared", payload,
                          subject_key=grid_zone_id, occurred_at_ms=at_ms, co_signers=[operator])


def observer_decision(*, grid_zone_id: str, observer_set_version: int, interval_start_ms: int,
                      interval_end_ms: int,
                      curtailments: Iterable[tuple[str, str, int]] = (),
                      rate_per_kwh: str | Decimal = "0", zone_capacity_limit_w: int = 0,
                      grid_event_id: str = "") -> dict[str, Any]:
    """An ``ObserverDecision``; ``curtailments``: (station_id, connector_id, power_limit_w) in
    curtailment order (first curtailed first)."""
    return {"grid_zone_id": grid_zone_id, "observer_set_version": observer_set_version,
            "interval_start_at_ms": interval_start_ms, "interval_end_at_ms": interval_end_ms,
            "grid_event_id": grid_event_id, "zone_capacity_limit_w": zone_capacity_limit_w,
            "rate_per_kwh": money(rate_per_kwh),
            "curtailments": [{"station_id": s, "connector_id": c, "power_limit_w": w}
                             for s, c, w in curtailments]}


def observer_attestation(observer: Participant, decision: dict[str, Any], *, at_ms: int,
                         digest: bytes | None = None) -> SignedEvent:
    """An observer's signature over ``decision`` (``digest`` overrides it: tests of forgery)."""
    payload = {"decision": decision,
               "decision_digest": observer_decision_digest(decision) if digest is None else digest}
    return observer.sign("chargemesh.grid.v1.ObserverAttestation", payload,
                         subject_key=decision["grid_zone_id"], occurred_at_ms=at_ms,
                         chain_id=f"{decision['grid_zone_id']}/{decision['interval_start_at_ms']}")
