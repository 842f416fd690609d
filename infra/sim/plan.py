"""The simulator's market, planned as a pure function of its configuration and seed.

``plan_market(config)`` builds a whole simulated market (authorities in three jurisdictions,
stations of every kind, vehicles with realistic batteries and diurnal arrivals) and returns its
signed events in publishing order, cut into phases at simulated-time boundaries. Nothing here
touches Kafka, ClickHouse or a clock: the same config gives the same events, byte for byte
(every key is derived from ``sim-<seed>``, every timestamp from ``config.day_start_ms``), so a
faulted run can be compared with a fault-free one (issue 9).

Each station's events are published in that station's own time order (bookings, then
handshakes, readings, close-outs, signatures): a station's ledger clock is its own signed time,
and an event out of order would release bookings as no-shows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.infra.sim.plan_model import (  # noqa: F401 - public names of the planner
    CURTAILMENT_LIMIT_W,
    FINALITY_WINDOW_MS,
    HOUR_MS,
    JURISDICTIONS,
    Jurisdiction,
    MINUTE_MS,
    MarketPlan,
    NO_SHOW_PERCENT,
    PASS_MS,
    Phase,
    READINGS_PER_SESSION_MAX,
    REPRICE_RESPONSE_MS,
    SLOT_MS,
    SPIKE_RATE,
    SWAP_PACK_WH,
    SimConfig,
    Station,
    Timeline,
    V2G_CLEARING,
    Vehicle,
    Visit,
    hhmm,
    road_box,
)
from chargemesh.infra.sim.plan_world import (
    WorldPlanner,
)
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.envelope import SignedEvent, deterministic_event_ids
from chargemesh.streams.sdk.participant import Participant

class Planner(WorldPlanner):
    """Builds the world (``WorldPlanner``) and the day's signed events."""

    # ---- the signed events of a visit -----------------------------------------------------------

    def ident(self, visit: Visit) -> dict[str, Any]:
        st = visit.station
        ident: dict[str, Any] = sdk.identity(
            station_id=st.sid, vehicle=visit.vehicle.participant,
            rate_authority_id=st.authority_id, jurisdiction=st.jurisdiction.code,
            connector_id=visit.connector_id)
        return ident

    def order_of(self, visit: Visit) -> SignedEvent:
        st, j = visit.station, visit.station.jurisdiction
        extension = None
        if st.kind == "SWAP":
            extension = swap_mobile.swap_extension(chemistry="NMC",
                                                   min_state_of_health_permille=850,
                                                   pack_id=self.pack_for(visit))
        terms = sdk.claim(energy_wh=visit.energy_wh if st.kind != "SWAP" else 50_000,
                          start_ms=visit.slot_start_ms, stop_ms=visit.slot_stop_ms,
                          ceiling_rate_per_kwh=j.ceiling, currency=j.currency,
                          v2g_eligible=st.kind == "V2G", extension=extension)
        vehicle = visit.vehicle.participant
        if visit.kind == "walk_up":
            # The station's own clock (its heartbeat) says the vehicle is at the connector now.
            self.day.add(sdk.heartbeat(st.participant, visit.arrived_ms))
            order = sdk.order(vehicle, "walk_up", order_id=visit.order_id,
                              ident=self.ident(visit), terms=terms,
                              arrived_at_ms=visit.arrived_ms, at_ms=visit.arrived_ms)
            self.walk_ups[order.event_id] = visit.order_id
            self.count("walk_up")
            return self.day.add(order)
        at = st.order_at_ms or self.setup_at + 30 * MINUTE_MS
        order = sdk.order(vehicle, "posted", order_id=visit.order_id, ident=self.ident(visit),
                          terms=terms, rate_per_kwh=j.posted, at_ms=at)
        self.count("posted_reservation")
        if st.order_at_ms:
            return self.day.add(order)
        self.bookings.append(order)
        self.booking_ids.append(visit.order_id)
        return order

    def pack_for(self, visit: Visit) -> str:
        return f"{self.cfg.prefix}-pack-{visit.order_id}"

    def emit_visit(self, visit: Visit) -> None:
        self.order_events[visit.order_id] = self.order_of(visit)
        if visit.station.jurisdiction is not visit.vehicle.home:
            if visit.station.jurisdiction.reciprocity:
                self.count("roaming_with_reciprocity")
            else:
                self.count("roaming_without_reciprocity")
                self.refused[self.order_events[visit.order_id].event_id] = "NO_RECIPROCITY"
                visit.fate = "REFUSED"
        if visit.fate != "SETTLE":
            self.count(visit.fate.lower())
            return
        if visit.station.kind == "SWAP":
            self.emit_swap(visit)
        else:
            self.emit_session(visit)

    def no_shows(self) -> None:
        """Some booked drivers never come (at least one): the ledger releases their slots."""
        eligible = [v for v in self.visits if not v.pinned and v.fate == "SETTLE"
                    and v.kind == "posted" and v.station.kind in ("AC_L2", "DC_FAST")]
        chosen = [v for v in eligible if self.rng.randrange(100) < NO_SHOW_PERCENT]
        for v in chosen or eligible[:1]:
            v.fate = "NO_SHOW"

    def emit_swap(self, visit: Visit) -> None:
        st, pack = visit.station, self.pack_for(visit)
        self.setup.append(swap_mobile.pack_registered(
            st.participant, pack_id=pack, chemistry="NMC",
            state_of_health_permille=self.rng.randint(880, 990), capacity_wh=SWAP_PACK_WH,
            charge_wh=57_000, at_ms=self.setup_at + 20 * MINUTE_MS))
        swap = self.day.add(swap_mobile.pack_swapped(
            st.participant, visit.vehicle.participant, session_id=visit.session_id,
            reservation_id=f"res:{visit.order_id}", ident=self.ident(visit), pack_out_id=pack,
            pack_out_charge_wh=57_000, pack_in_id=f"{pack}-returned",
            pack_in_charge_wh=self.rng.randint(3_000, 15_000), swapped_at_ms=visit.start_ms,
            pack_in_chemistry="NMC", pack_in_state_of_health_permille=880))
        self.settled(visit, swap)
        self.count("battery_swap")

    def settled(self, visit: Visit, last_signature: SignedEvent) -> None:
        settlement_id = f"stl:{visit.session_id}"
        self.final_signatures[last_signature.event_id] = settlement_id
        self.settlements.add(settlement_id)

    def emit_session(self, visit: Visit) -> None:
        st, vehicle = visit.station, visit.vehicle.participant
        v2g = st.kind == "V2G"
        start_wh = self.rng.randrange(10_000, 5_000_000)
        export_start_wh = self.rng.randrange(10_000, 900_000) if v2g else 0
        export_wh = visit.energy_wh // 3 if v2g else 0
        if v2g:
            visit.energy_wh -= export_wh  # the connector moves at most its power, both ways
        visit.evidence.append(self.day.add(sdk.handshake(
            st.participant, vehicle, session_id=visit.session_id,
            reservation_id=f"res:{visit.order_id}", ident=self.ident(visit),
            started_at_ms=visit.start_ms, meter_start_wh=start_wh,
            meter_start_export_wh=export_start_wh)))
        span = visit.close_ms - visit.start_ms
        n = max(1, min(READINGS_PER_SESSION_MAX, span // (10 * MINUTE_MS)))
        for k in range(1, n + 1):
            at = visit.start_ms + k * span // (n + 1)
            wh = start_wh + visit.energy_wh * k // (n + 1)
            visit.readings.append((at, wh))
            visit.evidence.append(self.day.add(sdk.meter_reading(
                st.meters[visit.connector_id], session_id=visit.session_id, station_id=st.sid,
                connector_id=visit.connector_id, seq=k, import_wh=wh, at_ms=at,
                export_wh=export_start_wh + export_wh * k // (n + 1))))
        close = sdk.meter_closed_out(
            st.participant, session_id=visit.session_id, connector_id=visit.connector_id,
            closed_at_ms=visit.close_ms, final_import_wh=start_wh + visit.energy_wh,
            last_reading_seq=n, final_export_wh=export_start_wh + export_wh)
        # IGNORE_REPRICE closes at the re-price's deadline: the station's clock reaching it, the
        # ledger stops the session there first (REPRICE_UNANSWERED), then takes its close-out.
        sign_ms = visit.close_ms + MINUTE_MS
        visit.evidence.append(self.day.add(close))
        last = close
        if visit.market_rule == "EXPIRE":  # the vehicle never countersigns: it expires
            self.settlements.add(f"stl:{visit.session_id}")
            self.expiring.add(f"stl:{visit.session_id}")
            self.count("settlement_expiry")
        else:
            last = self.day.add(sdk.close_out_countersigned(vehicle, close, sign_ms))
        if st.grid_coupled:
            last = self.day.add(sdk.settlement_co_signed(
                self.operator, close, grid_zone_id=st.grid_zone,
                clearing_price_per_kwh=V2G_CLEARING if v2g else "0.183",
                at_ms=sign_ms + MINUTE_MS))
            self.count("grid_co_signed")
        if visit.market_rule != "EXPIRE":
            self.settled(visit, last)
        self.count({"V2G": "v2g_session", "DEPOT": "fleet_internal_session",
                    "MOBILE": "mobile_session", "MCS": "megawatt_session",
                    "DESTINATION": "overnight_session"}.get(st.kind, "public_session"))

    # ---- disruption: a station fault, a revocation, a grid price spike, a dispute ---------------

    def mobile_legs_and_moves(self) -> None:
        """E5: the truck delivers in US-CA until mid-day, then relocates to DE-BY."""
        us = self.of_kind("MOBILE")[0]
        de_j = self.jurisdiction("DE-BY")
        self.relocate_ms = self.day0 + self.cfg.hours // 2 * HOUR_MS
        us.window = (self.day0, self.relocate_ms - 30 * MINUTE_MS)
        de = dataclasses.replace(us, jurisdiction=de_j, window=(
            self.relocate_ms + 30 * MINUTE_MS, 2**62), order_at_ms=self.relocate_ms + MINUTE_MS,
            authority_id=self.authorities["DE-BY"].credential_id,
            tariff_id=f"tariff:{self.cfg.prefix}:DE-BY")
        self.mobile_legs = (us, de)
        for leg, at in ((us, self.setup_at + 15 * MINUTE_MS), (de, self.relocate_ms)):
            event = swap_mobile.mobile_relocated(
                leg.participant, jurisdiction=leg.jurisdiction.code,
                rate_authority_id=leg.authority_id, tariff_id=leg.tariff_id,
                posted_rate_per_kwh=leg.jurisdiction.posted, latitude_microdeg=37_774_000,
                longitude_microdeg=-122_419_000, at_ms=at, dispatch_id=f"dispatch-{at}")
            (self.setup.append(event) if leg is us else self.day.add(event))
            self.count("mobile_relocation")

    def fault(self) -> None:
        """A connector fails for two hours; the booking on it is displaced by the rules."""
        st = (self.of_kind("DC_FAST") or self.of_kind("AC_L2"))[0]
        at = self.day0 + max(1, self.cfg.hours // 3) * HOUR_MS
        for cid, _, _, _ in st.connectors:
            st.book(cid, at, at + SLOT_MS)
        st.book("c1", at, at + 2 * HOUR_MS)
        victim = next(v for v in self.vehicles if v.kind == "CAR" and v.home.code != "GB-LDN")
        visit = Visit(victim, st, "c1", f"{self.cfg.prefix}-fault-victim", "posted", at,
                      at + SLOT_MS, at + MINUTE_MS, at + 10 * MINUTE_MS, 5_000,
                      st.connectors[0][1], fate="DISPLACED")
        self.visits.append(visit)
        self.day.add(sdk.capacity_changed(st.participant, connector_id="c1", available=False,
                                          from_ms=at, until_ms=at + 2 * HOUR_MS, cause="FAULT",
                                          at_ms=at - 30 * MINUTE_MS))
        self.count("station_fault")

    def revocation(self) -> None:
        """A vehicle's key is compromised mid-day: its later booking is cancelled by every
        ledger, and its next walk-up is refused."""
        self.revoke_ms = self.day0 + self.cfg.hours // 2 * HOUR_MS + 30 * MINUTE_MS
        car = self.build_vehicle(len(self.vehicles), "CAR", self.jurisdiction("US-CA"))
        us = [s for s in self.of_kind("DC_FAST") + self.of_kind("AC_L2")
              if s.jurisdiction.code == "US-CA"]
        self.revoked_order = ""
        for st in us:
            visit = self.place(car, st, self.revoke_ms + HOUR_MS, False)
            if visit is not None:
                visit.fate, visit.order_id = "REVOKED", f"{self.cfg.prefix}-revoked"
                self.visits.append(visit)
                self.revoked_order = visit.order_id
                break
        self.revoke_event = self.issuer.revoke(car.participant.credential_id,
                                               effective_at_ms=self.revoke_ms,
                                               reason_code="KEY_COMPROMISE",
                                               detail="simulated key compromise")
        at = self.revoke_ms + 20 * MINUTE_MS
        st = us[0]
        ident = sdk.identity(station_id=st.sid, vehicle=car.participant,
                             rate_authority_id=st.authority_id, jurisdiction="US-CA",
                             connector_id="c1")
        attempt = self.day.add(sdk.order(
            car.participant, "walk_up", order_id=f"{self.cfg.prefix}-revoked-walkup",
            ident=ident, terms=sdk.claim(energy_wh=5_000, start_ms=at, stop_ms=at + SLOT_MS,
                                         ceiling_rate_per_kwh="0.80", currency="USD"),
            arrived_at_ms=at, at_ms=at))
        self.refused[attempt.event_id] = "CREDENTIAL_REVOKED"
        self.count("revocation")

    def spike_session(self) -> None:
        """One session certain to be charging when the grid operator's price spike arrives."""
        self.spike_ms = self.day0 + 3 * self.cfg.hours // 4 * HOUR_MS
        car = next(v for v in self.vehicles if v.kind == "CAR" and v.home.code == "US-CA")
        for st in [s for s in self.stations if s.grid_zone == self.zone("caiso-sfbay")
                   and s.kind in ("DC_FAST", "AC_L2")]:
            visit = self.place(car, st, self.spike_ms - 30 * MINUTE_MS, False, slots_min=4)
            if visit is not None:
                visit.close_ms = max(visit.close_ms, min(visit.slot_stop_ms - 2 * MINUTE_MS,
                                                         self.spike_ms + 20 * MINUTE_MS))
                visit.pinned = True
                self.visits.append(visit)
                return

    def grid_spike(self) -> None:
        zone = self.zone("caiso-sfbay")
        event = sdk.grid_event(self.operator, grid_event_id=f"ge:{self.cfg.prefix}:spike",
                               grid_zone_id=zone, kind="PRICE_SIGNAL", from_ms=self.spike_ms,
                               until_ms=self.spike_ms + 2 * HOUR_MS, rate_per_kwh=SPIKE_RATE)
        self.spike_event = event
        active = [v for v in self.visits if v.fate == "SETTLE" and v.station.grid_zone == zone
                  and v.start_ms < self.spike_ms <= v.close_ms]
        # Each station with a session to re-price signs a heartbeat a minute before the signal:
        # the ledger's clock is then at the signal's start when it proposes, so the deadline is
        # the start + the rules' response time (a station quiet for longer would have an earlier
        # deadline, passed by its next event before the vehicle's answer a minute in).
        for st in sorted({v.station.sid: v.station for v in active}.items()):
            self.day.add(sdk.heartbeat(st[1].participant, self.spike_ms - MINUTE_MS))
        for v in [x for x in active if x.market_rule != "IGNORE_REPRICE"]:
            self.day.add(sdk.reprice_accepted(
                v.vehicle.participant, session_id=v.session_id, station_id=v.station.sid,
                grid_event_id=f"ge:{self.cfg.prefix}:spike",
                rate_per_kwh=SPIKE_RATE, at_ms=self.spike_ms + MINUTE_MS))
        # A session starting inside the signal is proposed it at its handshake (issue 16); its
        # vehicle answers a minute later, within the rules' response deadline (else the ledger
        # would stop it REPRICE_UNANSWERED and refuse its later readings and close-out).
        inside = [v for v in self.visits if v.fate == "SETTLE" and v.station.grid_zone == zone
                  and self.spike_ms <= v.start_ms < self.spike_ms + 2 * HOUR_MS
                  and v.start_ms + MINUTE_MS < v.close_ms]
        for v in inside:
            self.day.add(sdk.reprice_accepted(
                v.vehicle.participant, session_id=v.session_id, station_id=v.station.sid,
                grid_event_id=f"ge:{self.cfg.prefix}:spike",
                rate_per_kwh=SPIKE_RATE, at_ms=v.start_ms + MINUTE_MS))
        self.grid_events[event.event_id] = tuple(sorted(v.session_id for v in active))
        self.count("grid_event")
        self.count("price_window")
        self.count("reprice", len(active) + len(inside) - self.caps.get("reprice_unanswered", 0))

    # ---- issue 16's market rules in the day -----------------------------------------------------

    def market_rule_visits(self) -> None:
        """A session that ignores the spike's re-price, one left unsigned (it expires) and one
        whose vehicle is revoked after it settled, from before its close-out (it is reversed)."""
        self.expiring: set[str] = set()
        self.reversing: list[tuple[Visit, SignedEvent]] = []
        zone = self.zone("caiso-sfbay")
        public = [s for s in self.stations if s.jurisdiction.code == "US-CA"
                  and s.kind in ("DC_FAST", "AC_L2", "MCS")]
        public.sort(key=lambda s: s.kind == "MCS")  # a car at a public charger first
        us = self.jurisdiction("US-CA")
        deadline = self.spike_ms + REPRICE_RESPONSE_MS
        ignoring = self.build_vehicle(len(self.vehicles) + 1, "CAR", us)
        for st in [s for s in public if s.grid_zone == zone]:
            visit = self.place(ignoring, st, self.spike_ms - 40 * MINUTE_MS, False, slots_min=4)
            if (visit is not None and visit.start_ms + 10 * MINUTE_MS < self.spike_ms
                    and deadline < visit.slot_stop_ms):
                if visit.close_ms > deadline:  # charged until the stop
                    full = visit.close_ms - visit.start_ms
                    visit.energy_wh = visit.energy_wh * (deadline - visit.start_ms) // full
                visit.close_ms, visit.pinned, visit.market_rule = deadline, True, "IGNORE_REPRICE"
                self.visits.append(visit)
                self.count("reprice_unanswered")
                break
        unsigned_car = self.build_vehicle(len(self.vehicles) + 3, "CAR", us)
        for st in public:
            visit = self.place(unsigned_car, st, self.day0 + HOUR_MS, False)
            if visit is not None and visit.close_ms + FINALITY_WINDOW_MS < self.end - HOUR_MS:
                visit.pinned, visit.market_rule = True, "EXPIRE"
                self.visits.append(visit)
                break
        reversed_car = self.build_vehicle(len(self.vehicles) + 2, "CAR", us)
        for st in public:
            visit = self.place(reversed_car, st, self.day0 + HOUR_MS, False)
            if visit is not None:
                visit.pinned, visit.market_rule = True, "REVERSE"
                self.visits.append(visit)
                revoke = self.issuer.revoke(
                    reversed_car.participant.credential_id,
                    effective_at_ms=visit.close_ms - MINUTE_MS, reason_code="KEY_COMPROMISE",
                    detail="simulated key compromise found after a settlement")
                self.day.add(revoke, at_ms=visit.close_ms + 2 * HOUR_MS)
                self.reversing.append((visit, revoke))
                self.settlements.add(f"rev:{visit.session_id}")
                self.count("settlement_reversal")
                break

    def curtailment_and_tariff_version(self) -> None:
        """The zone operator curtails the (unobserved) spike zone for half an hour at night; the
        DE-BY authority files its tariff's next version, in force from the next midnight."""
        zone, at = self.zone("caiso-sfbay"), self.day0 + 3 * HOUR_MS
        self.day.add(sdk.grid_event(
            self.operator, grid_event_id=f"ge:{self.cfg.prefix}:curtail", grid_zone_id=zone,
            kind="CURTAILMENT", from_ms=at, until_ms=at + 30 * MINUTE_MS,
            capacity_limit_w=CURTAILMENT_LIMIT_W, at_ms=at - 5 * MINUTE_MS))
        self.count("curtailment_unobserved")
        j = self.jurisdiction("DE-BY")
        self.governance.append(sdk.tariff_filed(
            self.authorities[j.code], tariff_id=f"tariff:{self.cfg.prefix}:{j.code}",
            jurisdiction=j.code, currency=j.currency, ceiling_per_kwh="0.95",
            rounding=j.rounding, tax_percent=j.tax_percent, congestion_fee_per_kwh=j.congestion,
            renewable_adder_per_kwh=j.renewable, at_ms=self.setup_at,
            effective_from_ms=self.day0 + 24 * HOUR_MS))
        self.count("tariff_version")

    def dispute(self) -> None:
        """A meter dispute on a settled session, adjusted by the rate authority (the root)."""
        done = [v for v in self.visits if v.fate == "SETTLE" and v.evidence and not v.market_rule
                and v.station.jurisdiction.code == "US-CA"
                and v.station.kind in ("AC_L2", "DC_FAST", "MCS")
                and v.close_ms + 30 * MINUTE_MS < self.end]
        if not done:
            return
        v = min(done, key=lambda x: x.close_ms)
        at, dispute_id = v.close_ms + 20 * MINUTE_MS, f"{self.cfg.prefix}-dispute-1"
        where = {"session_id": v.session_id, "station_id": v.station.sid}
        self.day.add(sdk.dispute_opened(
            v.vehicle.participant, dispute_id=dispute_id, kind="METER_DISPUTE",
            claim="the meter over-read", settlement_id=f"stl:{v.session_id}",
            evidence_event_ids=[e.event_id for e in v.evidence[1:]], at_ms=at, **where))
        self.day.add(sdk.dispute_evidence(
            v.station.participant, dispute_id=dispute_id, evidence_event_ids=[
                v.evidence[0].event_id], statement="calibration certificate",
            at_ms=at + MINUTE_MS, **where))
        self.day.add(sdk.dispute_resolved(
            self.root, dispute_id=dispute_id, outcome="ADJUSTED", adjustment_amount="-1.00",
            currency="USD", reasoning="meter drift", at_ms=at + 5 * MINUTE_MS, **where))
        self.settlements.add(f"adj:{v.session_id}:{dispute_id}")
        self.count("dispute")

    # ---- the hostile fraction -------------------------------------------------------------------

    HOSTILE_KINDS = ("FORGED_SIGNATURE", "REPLAYED_EVENT_ID", "DOUBLE_BOOKING",
                     "METER_WENT_BACKWARDS")

    def hostile_events(self) -> None:
        sessions = [v for v in self.visits if v.fate == "SETTLE" and v.readings]
        booked = [v for v in self.visits if v.kind == "posted" and v.fate != "REFUSED"
                  and not v.station.order_at_ms and v.station.kind in ("AC_L2", "DC_FAST")]
        total = max(len(self.HOSTILE_KINDS),
                    round(self.cfg.hostile_fraction * (len(sessions) + len(self.walk_ups))))
        pools = {"FORGED_SIGNATURE": list(sessions), "METER_WENT_BACKWARDS": list(sessions),
                 "REPLAYED_EVENT_ID": list(booked), "DOUBLE_BOOKING": list(booked)}
        for pool in pools.values():
            self.rng.shuffle(pool)
        for k in range(total):
            kind = self.HOSTILE_KINDS[k % len(self.HOSTILE_KINDS)]
            if not pools[kind]:
                continue
            event = getattr(self, "_" + kind.lower())(pools[kind].pop(), k)
            if event is not None:
                self.hostile[event.event_id] = kind
                self.count(f"hostile_{kind.lower()}")

    def _forged_signature(self, v: Visit, k: int) -> SignedEvent:
        meter = v.station.meters[v.connector_id]
        impostor = Participant.seeded(meter.credential_id, meter.subject_id,
                                      secret=f"forger-{self.cfg.seed}")
        at, wh = v.readings[0]
        return self.day.add(sdk.meter_reading(
            impostor, session_id=v.session_id, station_id=v.station.sid,
            connector_id=v.connector_id, seq=len(v.readings) + 1, import_wh=wh + 50_000,
            at_ms=at + 20_000))

    def _meter_went_backwards(self, v: Visit, k: int) -> SignedEvent:
        at, wh = v.readings[0]
        return self.day.add(sdk.meter_reading(
            v.station.meters[v.connector_id], session_id=v.session_id, station_id=v.station.sid,
            connector_id=v.connector_id, seq=2, import_wh=wh - 250, at_ms=at + 30_000))

    def _replayed_event_id(self, v: Visit, k: int) -> SignedEvent:
        original = self.order_events[v.order_id]
        return self.day.add(original, at_ms=max(self.day0, v.slot_start_ms - 5 * MINUTE_MS))

    def _double_booking(self, v: Visit, k: int) -> SignedEvent | None:
        st = v.station
        rivals = [x for x in self.vehicles if x is not v.vehicle and x.kind == "CAR"
                  and (x.home.code == "GB-LDN") == (st.jurisdiction.code == "GB-LDN")]
        if not rivals:
            return None
        rival = self.rng.choice(rivals)
        ident = sdk.identity(station_id=st.sid, vehicle=rival.participant,
                             rate_authority_id=st.authority_id, jurisdiction=st.jurisdiction.code,
                             connector_id=v.connector_id)
        event = sdk.order(rival.participant, "posted", order_id=f"{self.cfg.prefix}-dbl-{k}",
                          ident=ident, terms=sdk.claim(
                              energy_wh=5_000, start_ms=v.slot_start_ms, stop_ms=v.slot_stop_ms,
                              ceiling_rate_per_kwh=st.jurisdiction.ceiling,
                              currency=st.jurisdiction.currency),
                          rate_per_kwh=st.jurisdiction.posted,
                          at_ms=self.setup_at + 40 * MINUTE_MS)
        self.late_bookings.append(event)
        self.booking_ids.append(f"{self.cfg.prefix}-dbl-{k}")
        return event

    # ---- phases ---------------------------------------------------------------------------------

    def heartbeats(self) -> None:
        for st in self.stations:
            for h in range(1, self.cfg.hours + 1):
                self.day.add(sdk.heartbeat(st.participant, self.day0 + h * HOUR_MS))

    def phases(self) -> tuple[Phase, ...]:
        out = [Phase("credentials and tariffs", self.setup_at, tuple(self.governance)),
               Phase("slot calendars and packs", self.setup_at + 20 * MINUTE_MS,
                     tuple(self.setup)),
               Phase("reservations", self.setup_at + 40 * MINUTE_MS,
                     tuple(self.bookings + self.late_bookings),
                     tuple(("decided", oid) for oid in self.booking_ids))]
        cuts = sorted({self.day0 + h * HOUR_MS for h in range(1, self.cfg.hours)}
                      | {self.spike_ms, self.revoke_ms})
        start = 0
        for stop in cuts + [2**62]:
            events = self.day.between(start, stop)
            barrier: tuple[tuple[str, str], ...] = ()
            if stop == self.spike_ms:
                events.append(self.spike_event)
                barrier = tuple(("reprice", sid)
                                for sid in self.grid_events[self.spike_event.event_id])
            # a settlement to be reversed is FINAL before its backdated revocation is published
            # (else the revocation could overtake its countersignature, refused then)
            barrier += tuple(("final", f"stl:{v.session_id}") for v, _ in self.reversing
                             if start <= v.close_ms + 2 * MINUTE_MS < stop)
            if stop == self.revoke_ms:
                events.append(self.revoke_event)
                if self.revoked_order:
                    barrier += (("reevaluated", f"res:{self.revoked_order}"),)
            until = min(stop, self.end + HOUR_MS)
            out.append(Phase(f"day {hhmm(until - self.day0)}", until, tuple(events), barrier))
            start = stop
        return tuple(out)

    def plan(self) -> MarketPlan:
        self.credential_world()
        self.build_stations()
        self.mobile_legs_and_moves()
        self.build_vehicles()
        self.fault()
        self.revocation()
        self.plan_visits()
        self.spike_session()
        self.market_rule_visits()
        self.no_shows()
        for visit in self.visits:
            self.emit_visit(visit)
        self.grid_spike()
        self.curtailment_and_tariff_version()
        self.dispute()
        self.hostile_events()
        self.heartbeats()
        return MarketPlan(self.cfg, self.root, self.phases(), dict(self.walk_ups),
                          dict(self.final_signatures), dict(self.grid_events),
                          dict(self.hostile), dict(self.refused),
                          frozenset(self.settlements), dict(sorted(self.caps.items())))


def plan_market(config: SimConfig) -> MarketPlan:
    """The whole simulated market as signed events in phases; pure in ``config``."""
    with deterministic_event_ids(config.secret):
        return Planner(config).plan()
