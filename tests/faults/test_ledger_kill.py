"""A worker SIGKILLed in the middle of a burst of orders ends with exactly the ledger a run
without the kill produces: nothing lost, nothing applied twice."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.pipeline import seal_decision
from chargemesh.processors.runtime.app import load_processor_signer
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted, admit, admit_governance
from chargemesh.processors.ledger.step import market_step
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import DECISIONS, GOVERNANCE, MARKET

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, open_market
from chargemesh.infra.stack.worker import Record, TopicReader

pytestmark = pytest.mark.integration

ORDERS_PER_STATION = 300
CHANGELOG = "chargemesh.state.station-ledger.v1"


def burst(market: Market, rng: random.Random) -> list[Any]:
    vehicles = [market.vehicle(f"v{i}") for i in range(12)]
    market.mesh.publish(*market.mesh.world.governance)
    market.mesh.world.governance.clear()
    orders = []
    for i in range(ORDERS_PER_STATION):
        vehicle = rng.choice(vehicles)
        start = market.start_ms + rng.randrange(40) * SLOT_MS
        connector = rng.choice(["", "c1", "c2", "c3"])
        orders.append(market.posted_order(vehicle, f"o{i}", start, slots=rng.choice([1, 2]),
                                          connector_id=connector,
                                          at_ms=market.start_ms - 3_600_000 + i))
    return orders


def replay(mesh: Mesh,
           stations: set[str]) -> tuple[dict[str, ledger.LedgerState], dict[str, bytes]]:
    """The fault-free run: the same inputs, in partition order, through the same pure steps."""
    store = TrustStore(mesh.world.anchors())
    gov = TopicReader(mesh.settings, GOVERNANCE.name)
    gov.poll(2.0)
    for r in sorted(gov.records, key=lambda r: r.offset):
        admit_governance(r.value, r.key, store)
    gov.close()
    market = TopicReader(mesh.settings, MARKET.name)
    market.poll(3.0)
    market.close()
    signer = load_processor_signer(mesh.settings)
    states: dict[str, ledger.LedgerState] = {}
    decisions: dict[str, bytes] = {}
    seen: dict[str, str] = {}
    for r in sorted(market.records, key=lambda r: (r.partition, r.offset)):
        if r.key is None or r.key.decode(errors="replace") not in stations:
            continue
        verdict = admit(r.value, r.key, MARKET.name, store)
        if not isinstance(verdict, Admitted):
            continue
        state = states.setdefault(r.key.decode(errors="replace"), ledger.LedgerState(r.key.decode(errors="replace")))
        step = market_step(state, verdict, r.partition, r.offset, seen.get(verdict.event.event_id),
                           store)
        seen.setdefault(verdict.event.event_id, f"{r.partition}:{r.offset}")
        for i, d in enumerate(step.decisions):
            sealed = seal_decision(signer, state, verdict.event, i, d)
            decisions[sealed.event_id] = sealed.encode()
    return states, decisions


def outcomes(records: list[Record], stations: set[str]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for r in records:
        if r.key is not None and r.key.decode(errors="replace") in stations:
            out.setdefault(r.event().event_id, []).append(r.value)
    return out


def test_sigkill_mid_burst_loses_and_duplicates_nothing(mesh: Mesh) -> None:
    rng = random.Random(4)
    t = now_ms()
    conns = [sdk.connector(c, 150_000) for c in ("c1", "c2", "c3")]
    markets = [open_market(mesh, f"kill{i}", t, conns, hours=12) for i in range(2)]
    stations = {m.station_id for m in markets}
    orders = [o for m in markets for o in burst(m, rng)]
    order_ids = {o.event_id for o in orders}
    reader = TopicReader(mesh.settings, DECISIONS.name)
    mesh.publish(*orders)
    reader.wait_for(lambda rs: len(outcomes(rs, stations)) >= 80, timeout_s=60,
                    workers=(mesh.worker,))
    mesh.worker.kill()  # SIGKILL mid-burst
    killed_after = len(outcomes(reader.records, stations))
    time.sleep(mesh.settings.session_timeout_ms / 1000 + 2)  # the dead member expires first
    mesh.worker.start()

    expected_states, expected = replay(mesh, stations)
    decided_orders = {ledger_id for ledger_id in expected}
    assert len(expected) >= ORDERS_PER_STATION * 2  # every order decided once in the model
    reader.wait_for(lambda rs: set(expected) <= set(outcomes(rs, stations)), timeout_s=120,
                    workers=(mesh.worker,))
    time.sleep(1.0)
    reader.poll(1.0)
    actual = outcomes(reader.records, stations)
    reader.close()
    duplicates = sum(len(c) - 1 for c in actual.values())
    print(f"decisions before kill {killed_after}, total {len(expected)}, "
          f"redelivered copies {duplicates}")
    assert killed_after < len(expected), "the kill did land mid-burst"
    assert set(actual) == set(expected), "no decision lost, none invented"
    for event_id, copies in actual.items():
        assert all(c == expected[event_id] for c in copies), f"{event_id} differs from the model"
    assert decided_orders

    changelog = TopicReader(mesh.settings, CHANGELOG)
    changelog.poll(3.0)
    changelog.close()
    final: dict[str, bytes] = {}
    for r in sorted(changelog.records, key=lambda r: (r.partition, r.offset)):
        if r.key is not None and r.key.decode(errors="replace") in stations:
            final[r.key.decode(errors="replace")] = r.value
    for station, state in expected_states.items():
        assert ledger.load_state(final[station]) == state, f"{station} ledger differs"
    assert order_ids  # the burst was real
