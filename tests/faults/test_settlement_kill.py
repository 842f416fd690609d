"""A worker SIGKILLed during close-out produces neither a missing nor a duplicate settlement,
and ClickHouse holds each settlement once."""

from __future__ import annotations

import time

import pytest

from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import SETTLEMENTS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, open_market

pytestmark = pytest.mark.integration
STATIONS = 4
CONNECTORS = 50


def sessions_for(market: Market) -> list[list[SignedEvent]]:
    """The station's day in phases, as time runs: bookings, handshakes, readings, close-outs,
    countersignatures (a later phase for one connector must not pass an earlier one for another:
    the station's clock would release the bookings not yet started as no-shows)."""
    phases: list[list[SignedEvent]] = [[], [], [], [], []]
    start = market.start_ms + 2 * SLOT_MS
    for i in range(CONNECTORS):
        cid = f"c{i}"
        vehicle = market.vehicle(f"v{i}")
        session_id = f"{market.prefix}-s{i}"
        ident = market.ident(vehicle, cid)
        close = sdk.meter_closed_out(market.station, session_id=session_id, connector_id=cid,
                                     closed_at_ms=start + 25 * MINUTE_MS,
                                     final_import_wh=18_000 + i, last_reading_seq=1)
        phases[0].append(market.posted_order(vehicle, f"o{i}", start, slots=2, connector_id=cid,
                                             energy_wh=20_000))
        phases[1].append(sdk.handshake(market.station, vehicle, session_id=session_id,
                                       reservation_id=f"res:{market.order_id(f'o{i}')}",
                                       ident=ident, started_at_ms=start))
        phases[2].append(sdk.meter_reading(market.meters[cid], session_id=session_id,
                                           station_id=market.station_id, connector_id=cid,
                                           seq=1, import_wh=9_000,
                                           at_ms=start + 12 * MINUTE_MS))
        phases[3].append(close)
        phases[4].append(sdk.close_out_countersigned(vehicle, close, start + 26 * MINUTE_MS))
    return phases


def by_settlement(records: list[Record], prefix: str, kind: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for r in records:
        if r.key is not None and r.key.decode(errors="replace").startswith(prefix):
            event = r.event()
            if event.event_type.endswith(kind):
                out.setdefault(event.event_id, []).append(r.value)
    return out


def test_sigkill_during_close_out_loses_and_doubles_no_settlement(mesh: Mesh) -> None:
    t = now_ms()
    conns = [sdk.connector(f"c{i}", 50_000) for i in range(CONNECTORS)]
    markets = [open_market(mesh, f"skill{i}", t, conns, hours=6) for i in range(STATIONS)]
    parts = [sessions_for(m) for m in markets]
    # Up to the first half of the close-outs before the kill, the rest while the worker is dead:
    # the kill lands during close-out however fast one batch runs (a batch may hold them all).
    half = CONNECTORS // 2
    before = [e for phase in range(3) for part in parts for e in part[phase]]
    before += [e for part in parts for e in part[3][:half]]
    after = [e for part in parts for e in part[3][half:]] + [e for part in parts for e in part[4]]
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    expected = STATIONS * CONNECTORS
    reader = TopicReader(mesh.settings, SETTLEMENTS.name)
    mesh.publish(*before)
    reader.wait_for(lambda rs: len(by_settlement(rs, "skill", "SettlementAdmitted")) >= 20,
                    timeout_s=60, workers=(mesh.worker,))
    mesh.worker.kill()  # SIGKILL mid-stream
    at_kill = len(by_settlement(reader.records, "skill", "SettlementAdmitted"))
    mesh.publish(*after)
    time.sleep(mesh.settings.session_timeout_ms / 1000 + 2)  # the dead member expires first
    mesh.worker.start()
    try:
        reader.wait_for(lambda rs: len(by_settlement(rs, "skill", "SettlementFinalised"))
                        >= expected, timeout_s=60, workers=(mesh.worker,))
    except TimeoutError:
        _explain(mesh, reader)
        raise
    reader.poll(1.0)
    reader.close()
    admitted = by_settlement(reader.records, "skill", "SettlementAdmitted")
    final = by_settlement(reader.records, "skill", "SettlementFinalised")
    print(f"settlements admitted before the kill {at_kill} of {expected}; copies on the topic "
          f"{sum(map(len, admitted.values()))}")
    assert at_kill < expected, "the kill landed during close-out"
    assert len(admitted) == expected and len(final) == expected
    for copies in [*admitted.values(), *final.values()]:
        assert len(set(copies)) == 1, "a redelivered settlement is byte-identical"

    rows = mesh.wait_rows(
        "SELECT count(), uniqExact(settlement_id) FROM settlements FINAL "
        "WHERE session_id LIKE 'skill%%'", count=1)
    deadline_rows = mesh.wait_rows(
        "SELECT settlement_id FROM settlements FINAL WHERE session_id LIKE 'skill%%'",
        count=expected)
    assert len(deadline_rows) == expected
    mesh.query("OPTIMIZE TABLE settlements FINAL")
    raw = mesh.query("SELECT count() FROM settlements WHERE session_id LIKE 'skill%%'")
    assert raw[0][0] == expected, "after merging, ClickHouse holds each settlement once"
    assert rows[0][0] == rows[0][1]


def _explain(mesh: Mesh, reader: TopicReader) -> None:
    import collections

    from chargemesh.processors.ledger import state as ledger
    from chargemesh.streams.topics import REJECTIONS
    print("admitted", len(by_settlement(reader.records, "skill", "SettlementAdmitted")),
          "final", len(by_settlement(reader.records, "skill", "SettlementFinalised")))
    rej = TopicReader(mesh.settings, REJECTIONS.name)
    rej.poll(2)
    rej.close()
    print(collections.Counter((r.rejection()["reason_code"], r.rejection()["event_type"])
                              for r in rej.records))
    ch = TopicReader(mesh.settings, "chargemesh.state.station-ledger.v1")
    ch.poll(2)
    ch.close()
    for r in sorted(ch.records, key=lambda r: (r.partition, r.offset)):
        if r.key and r.key.startswith(b"skill"):
            st = ledger.load_state(r.value)
            print("changelog", r.key, r.partition, r.offset, st.applied_through_offset,
                  collections.Counter(x["status"] for x in st.extra.get("sessions", {}).values()))
