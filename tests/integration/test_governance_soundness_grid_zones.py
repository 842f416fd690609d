"""Issue 15 hole 2 on the real stack: a grid zone belongs to a jurisdiction and to the operators
its authority registered, not to whoever writes ``grid_zones=<zone>`` on a credential.

The attacks: a GRID_OPERATOR credential carrying the attribute ``grid_zones=h2-zone`` declares a
program for the zone (registered to another operator) and for an unregistered zone, and signs a
price signal for the zone; an authority recognised for DE-BY registers the US-CA zone, and
re-registers it as its own jurisdiction's. Each is refused with its reason on
``chargemesh.rejections.v1`` and in ClickHouse ``rejections``, none is in the admitted log, and
``grid_zones_current`` (what ``chargemesh grid zones`` prints) shows only the legitimate twins:
the zone registered by the US-CA authority to its operator, that operator's program.
"""

from __future__ import annotations

import json

import pytest
from chargemesh.infra.cli.main import cli
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.units import MINUTE_MS
from click.testing import CliRunner

from tests.conftest import Mesh
from tests.support.verdicts import await_verdicts

pytestmark = pytest.mark.integration

ZONE = "h2-zone"
NOBODYS_ZONE = "h2-zone-unregistered"


def test_a_zone_is_its_jurisdictions_and_only_its_registered_operator_acts_for_it(
        mesh: Mesh) -> None:
    t = now_ms()
    world = mesh.world
    operator = world.credential("h2-grid-op", ["GRID_OPERATOR"])
    squatter = world.credential("h2-squatter", ["GRID_OPERATOR"],
                                attributes={"grid_zones": f"{ZONE},{NOBODYS_ZONE}"})
    foreign = sdk.Participant.seeded("h2-authority-de", secret="tests")
    world.governance.append(world.root.recognise_authority(
        foreign, "DE-BY", ["AUTHORITY"], at_ms=t))
    mesh.publish(*world.governance)
    world.governance.clear()

    # governance: the legitimate registration and program, and the attacks on them
    registered = sdk.grid_zone_registered(world.root, grid_zone_id=ZONE, jurisdiction="US-CA",
                                          operator_ids=[operator.credential_id], at_ms=t)
    program = sdk.grid_program(operator, grid_zone_id=ZONE, program="V2G",
                               operator_ids=[operator.credential_id], at_ms=t + 1)
    hijack = sdk.grid_program(squatter, grid_zone_id=ZONE, program="DEMAND_RESPONSE",
                              operator_ids=[squatter.credential_id], at_ms=t + 2)
    unregistered = sdk.grid_program(squatter, grid_zone_id=NOBODYS_ZONE, program="V2G",
                                    operator_ids=[squatter.credential_id], at_ms=t + 2)
    outsider = sdk.grid_program(operator, grid_zone_id=ZONE, program="DEMAND_RESPONSE",
                                operator_ids=[squatter.credential_id], at_ms=t + 2)
    foreign_claim = sdk.grid_zone_registered(foreign, grid_zone_id=ZONE, jurisdiction="US-CA",
                                             operator_ids=[squatter.credential_id], at_ms=t + 2)
    takeover = sdk.grid_zone_registered(foreign, grid_zone_id=ZONE, jurisdiction="DE-BY",
                                        operator_ids=[squatter.credential_id], at_ms=t + 2)
    attacks = [hijack, unregistered, outsider, foreign_claim, takeover]
    mesh.publish(registered, program, *attacks)
    verdicts = await_verdicts(mesh, attacks, [registered, program])
    expected = {hijack.event_id: "NOT_THE_ZONES_OPERATOR",
                unregistered.event_id: "ZONE_NOT_REGISTERED",
                outsider.event_id: "NOT_THE_ZONES_OPERATOR",
                foreign_claim.event_id: "ZONE_JURISDICTION_NOT_HELD",
                takeover.event_id: "ZONE_REGISTERED_ELSEWHERE"}
    assert {e: r["reason_code"] for e, r in verdicts.items()} == expected

    # grid topic: the squatter's price signal is refused, the operator's routed
    def price_signal(author: sdk.Participant) -> SignedEvent:
        return sdk.grid_event(author, grid_event_id=f"h2-ge-{author.credential_id}-{t}",
                              grid_zone_id=ZONE, kind="PRICE_SIGNAL", from_ms=t + MINUTE_MS,
                              until_ms=t + 30 * MINUTE_MS, rate_per_kwh="2.50", at_ms=now_ms())

    spoofed, signal = price_signal(squatter), price_signal(operator)
    mesh.publish(spoofed, signal)
    verdicts = await_verdicts(mesh, [spoofed], [signal])
    assert verdicts[spoofed.event_id]["reason_code"] == "NOT_THE_ZONES_OPERATOR"

    # ClickHouse: each refusal with its reason; nothing of the attacks among the events
    refused = {**expected, spoofed.event_id: "NOT_THE_ZONES_OPERATOR"}
    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(ids)s", {"ids": tuple(refused)}, count=len(refused))
    assert dict(rows) == refused
    assert mesh.query("SELECT count() FROM events WHERE event_id IN %(ids)s",
                      {"ids": tuple(refused)}) == [(0,)]

    # the zone in force, public: registered by the US-CA authority to its operator, its program
    mesh.wait_rows("SELECT event_id FROM grid_zones FINAL WHERE grid_zone_id = %(z)s",
                   {"z": ZONE}, count=2)
    assert mesh.query("SELECT count() FROM grid_zones WHERE grid_zone_id = %(z)s",
                      {"z": NOBODYS_ZONE}) == [(0,)]
    env = {**mesh.settings.as_environ(), "CHARGEMESH_CONFIG": None, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, ["grid", "zones", "--json"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [zone] = [z for z in json.loads(result.output) if z["grid_zone_id"] == ZONE]
    assert (zone["jurisdiction"], zone["registered_by"], zone["operators"], zone["program"],
            zone["program_declared_by"], zone["registrations"]) == (
        "US-CA", world.root.credential_id, [operator.credential_id], "V2G",
        operator.credential_id, 1)
    table = CliRunner().invoke(cli, ["grid", "zones"], env=env, catch_exceptions=False)
    assert table.exit_code == 0 and ZONE in table.output and "h2-grid-op" in table.output
