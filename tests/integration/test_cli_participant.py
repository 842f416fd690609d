"""The participant CLI: key files, credential requests and issuance, JSON -> Avro publishing.

Pure tests drive the commands with click's CliRunner and no broker (nothing published: no
``--publish``, ``--dry-run``); one integration test issues a credential and publishes events with
the CLI on the session stack and reads the processors' verdicts back from ClickHouse.
"""

from __future__ import annotations

import json
import stat
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from chargemesh.infra.cli.main import cli
from chargemesh.streams.sdk.key_files import write_key_file
from chargemesh.infra.config import Settings
from chargemesh.schemas.codec import catalog
from chargemesh.schemas.json_avro import PayloadError, from_json
from chargemesh.streams.envelope import open_envelope
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.participant import Participant, heartbeat, now_ms
from click.testing import CliRunner, Result

from tests.conftest import Mesh

CALENDAR = "chargemesh.capacity.v1.SlotCalendarPublished"


def run(*args: str, settings: Settings | None = None, stdin: str | None = None) -> Result:
    env = settings.as_environ() if settings is not None else None
    return CliRunner().invoke(cli, list(args), input=stdin, env=env, catch_exceptions=False)


def generate(tmp_path: Path, name: str, *extra: str) -> Path:
    path = tmp_path / f"{name}.json"
    result = run("keys", "generate", "--out", str(path), "--credential-id", name, *extra)
    assert result.exit_code == 0, result.output
    return path


# ---- keys ---------------------------------------------------------------------------------------


def test_a_generated_key_file_is_private_and_show_prints_only_its_public_part(
        tmp_path: Path) -> None:
    out = tmp_path / "keys" / "station.json"
    created = run("keys", "generate", "--out", str(out), "--credential-id", "st-cred-1",
                  "--subject-id", "station-1")
    assert created.exit_code == 0, created.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text())
    signer = Signer.load(out)  # the SDK reads the same file
    assert (doc["credential_id"], doc["subject_id"]) == ("st-cred-1", "station-1")
    assert doc["public_key_hex"] == signer.public_key.hex()

    shown = run("keys", "show", str(out))
    assert shown.exit_code == 0
    assert json.loads(shown.stdout) == {"credential_id": "st-cred-1", "subject_id": "station-1",
                                        "public_key_hex": signer.public_key.hex(),
                                        "file": str(out)}
    assert doc["ed25519_private_hex"] not in shown.output
    assert doc["ed25519_private_hex"] not in created.output


def test_generate_never_overwrites_a_key_without_force(tmp_path: Path) -> None:
    path = generate(tmp_path, "v-1")
    before = path.read_text()
    again = run("keys", "generate", "--out", str(path), "--credential-id", "v-1")
    assert again.exit_code == 1 and "--force" in again.output
    assert path.read_text() == before
    forced = run("keys", "generate", "--out", str(path), "--credential-id", "v-1", "--force")
    assert forced.exit_code == 0 and path.read_text() != before


def test_a_key_file_whose_public_key_does_not_match_is_refused(tmp_path: Path) -> None:
    path = generate(tmp_path, "v-2")
    doc = json.loads(path.read_text())
    doc["public_key_hex"] = "00" * 32
    path.write_text(json.dumps(doc))
    shown = run("keys", "show", str(path))
    assert shown.exit_code == 1 and "does not match the private key" in shown.output


# ---- credentials --------------------------------------------------------------------------------


def test_an_issuer_issues_what_the_holder_requested(tmp_path: Path) -> None:
    issuer = generate(tmp_path, "issuer-x")
    holder = generate(tmp_path, "veh-cred-7", "--subject-id", "vin-7")
    request = run("credential", "request", "--key", str(holder), "--role", "VEHICLE",
                  "--jurisdiction", "DE-BY", "--attr", "vin=WVW123", "--attr", "max_power_w=11000")
    assert request.exit_code == 0, request.output
    request_file = tmp_path / "request.json"
    request_file.write_text(request.stdout)

    out = tmp_path / "issued.bin"
    issued = run("credential", "issue", "--issuer-key", str(issuer), "--request",
                 str(request_file), "--valid-until-ms", "1900000000000", "--at-ms", "1000",
                 "--out", str(out))
    assert issued.exit_code == 0, issued.output
    view = json.loads(issued.stdout)
    assert view["event_type"] == "chargemesh.governance.v1.CredentialIssued"
    assert view["author_credential_id"] == "issuer-x" and view["occurred_at_ms"] == 1000
    holder_public = json.loads(holder.read_text())["public_key_hex"]
    assert view["payload"] == {
        "credential_id": "veh-cred-7", "subject_id": "vin-7", "issuer_id": "issuer-x",
        "public_key": holder_public, "roles": ["VEHICLE"], "jurisdiction": "DE-BY",
        "valid_from_ms": 0, "valid_until_ms": 1_900_000_000_000,
        "attributes": [{"name": "max_power_w", "value": "11000"},
                       {"name": "vin", "value": "WVW123"}]}
    event = open_envelope(out.read_bytes())  # --out holds the signed bytes
    assert event.event_id == view["event_id"]
    assert event.verify_by("issuer-x", Signer.load(issuer).public_key)


def test_an_altered_request_is_refused(tmp_path: Path) -> None:
    issuer = generate(tmp_path, "issuer-y")
    holder = generate(tmp_path, "st-cred-9")
    request = json.loads(run("credential", "request", "--key", str(holder), "--role", "STATION",
                             "--jurisdiction", "US-CA").stdout)
    request["roles"] = ["RATE_AUTHORITY"]
    altered = tmp_path / "request.json"
    altered.write_text(json.dumps(request))
    result = run("credential", "issue", "--issuer-key", str(issuer), "--request", str(altered))
    assert result.exit_code == 1
    assert "proof does not verify" in result.output


def test_issuing_to_a_bare_public_key_needs_a_credential_id(tmp_path: Path) -> None:
    issuer = generate(tmp_path, "issuer-z")
    key_hex = Participant.generate("x").public_key.hex()
    missing = run("credential", "issue", "--issuer-key", str(issuer), "--holder-public-key",
                  key_hex, "--role", "METER", "--jurisdiction", "US-CA")
    assert missing.exit_code == 2 and "--credential-id" in missing.output
    issued = run("credential", "issue", "--issuer-key", str(issuer), "--holder-public-key",
                 key_hex, "--credential-id", "meter-1", "--role", "METER", "--jurisdiction",
                 "US-CA")
    assert issued.exit_code == 0, issued.output
    assert json.loads(issued.stdout)["payload"]["public_key"] == key_hex


def test_revoke_prints_the_signed_revocation(tmp_path: Path) -> None:
    issuer = generate(tmp_path, "issuer-r")
    result = run("credential", "revoke", "--key", str(issuer), "--credential-id", "veh-9",
                 "--effective-at-ms", "5000", "--reason", "KEY_COMPROMISE", "--at-ms", "6000")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["payload"] == {"credential_id": "veh-9", "revoked_by_id": "issuer-r",
                               "effective_at_ms": 5000, "reason_code": "KEY_COMPROMISE",
                               "detail": ""}
    unknown = run("credential", "revoke", "--key", str(issuer), "--credential-id", "veh-9",
                  "--effective-at-ms", "5000", "--reason", "BORED")
    assert unknown.exit_code == 2


# ---- JSON -> Avro ------------------------------------------------------------------------------


def _calendar_json() -> dict[str, Any]:
    return {"station_id": "s-1", "calendar_version": 1, "rate_authority_id": "auth",
            "jurisdiction": "US-CA", "tariff_id": "t-1", "grid_zone_id": "z-1",
            "latitude_microdeg": 0, "longitude_microdeg": 0,
            "connectors": [{"connector_id": "c1", "hardware_id": "hw-c1", "power_w": 150_000,
                            "kind": "DC_FAST", "meter_credential_id": ""}],
            "slot_duration_ms": 900_000, "horizon_start_at_ms": 0,
            "horizon_end_at_ms": 3_600_000, "posted_rate_per_kwh": "0.35", "currency": "USD",
            "rules_version": "r1", "extension": None}


def test_json_payloads_convert_to_the_schemas_types() -> None:
    doc = _calendar_json()
    doc["extension"] = {"V2GExtension": {"export_energy_wh": 5_000}}
    record = from_json(CALENDAR, doc)
    assert record["posted_rate_per_kwh"] == Decimal("0.350000")
    fingerprint, body = catalog().encode(CALENDAR, record)
    decoded = catalog().decode(fingerprint, body)[1]
    assert decoded["connectors"][0]["bidirectional"] is False  # left out: the default
    assert decoded["extension"] == {"export_energy_wh": 5_000, "max_export_power_w": 0}
    untagged = dict(doc, extension={"fleet_id": "fleet-1"})
    fingerprint, body = catalog().encode(CALENDAR, from_json(CALENDAR, untagged))
    assert catalog().decode(fingerprint, body)[1]["extension"] == {"fleet_id": "fleet-1",
                                                                   "site_id": ""}


@pytest.mark.parametrize(("change", "path", "problem"), [
    ({"posted_rate_per_kwh": 0.35}, "$.posted_rate_per_kwh", "never a float"),
    ({"posted_rate_per_kwh": "0.1234567"}, "$.posted_rate_per_kwh", "decimal(20,6)"),
    ({"slot_duration_ms": "900000"}, "$.slot_duration_ms", "expected an integer (long)"),
    ({"extension": {"BatterySwapExtension": {"pack_id": "p", "chemistry": "LFP",
                                             "state_of_health_permille": 2**31}}},
     "$.extension.state_of_health_permille", "out of range for an Avro int"),
    ({"colour": "red"}, "$", "has no field colour"),
    ({"connectors": [{"connector_id": "c1"}]}, "$.connectors[0].hardware_id", "missing"),
    ({"connectors": [{"connector_id": "c1", "hardware_id": "h", "power_w": 1, "kind": "PLUG",
                      "meter_credential_id": ""}]}, "$.connectors[0].kind", "expected one of"),
    ({"extension": {"pack": 1}}, "$.extension", "fits none of the union's branches"),
])
def test_a_payload_that_does_not_fit_says_where(change: dict[str, Any], path: str,
                                                problem: str) -> None:
    with pytest.raises(PayloadError) as caught:
        from_json(CALENDAR, {**_calendar_json(), **change})
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_bytes_are_hex_and_enums_their_symbols() -> None:
    doc = {"credential_id": "c", "subject_id": "s", "issuer_id": "i", "public_key": "zz",
           "roles": ["VEHICLE"], "jurisdiction": "J", "valid_from_ms": 0, "valid_until_ms": 1}
    with pytest.raises(PayloadError, match=r"\$\.public_key: not hex"):
        from_json("chargemesh.governance.v1.CredentialIssued", doc)
    with pytest.raises(PayloadError, match=r"\$\.roles\[0\]: expected one of"):
        from_json("chargemesh.governance.v1.CredentialIssued",
                  dict(doc, public_key="ab", roles=["KING"]))
    record = from_json("chargemesh.governance.v1.CredentialIssued", dict(doc, public_key="ab01"))
    assert record["public_key"] == b"\xab\x01" and "attributes" not in record


def test_events_publish_refuses_a_payload_that_does_not_fit(tmp_path: Path) -> None:
    key = generate(tmp_path, "st-cred-1", "--subject-id", "s-1")
    doc = {**_calendar_json(), "posted_rate_per_kwh": 0.35}
    result = run("events", "publish", "--key", str(key), "--type", "SlotCalendarPublished",
                 stdin=json.dumps(doc))
    assert result.exit_code == 1
    assert ("payload does not fit chargemesh.capacity.v1.SlotCalendarPublished: "
            "$.posted_rate_per_kwh: a decimal is written as a string") in result.output
    many = run("events", "publish", "--key", str(key), "--type", "StationHeartbeat",
               stdin=json.dumps([{"station_id": "s-1", "at_ms": 1}, {"station_id": "s-1"}]))
    assert many.exit_code == 1 and "payload 2 of 2" in many.output and "$.at_ms" in many.output
    unknown = run("events", "publish", "--key", str(key), "--type", "Teleported", stdin="{}")
    assert unknown.exit_code == 2 and "unknown event type" in unknown.output


def test_events_publish_dry_run_signs_and_keys_by_the_policy_field(tmp_path: Path) -> None:
    key = generate(tmp_path, "st-cred-2", "--subject-id", "s-2")
    payloads = tmp_path / "beats.json"
    payloads.write_text(json.dumps([{"station_id": "s-2", "at_ms": t} for t in (1, 2, 3)]))
    result = run("events", "publish", "--key", str(key), "--type", "StationHeartbeat",
                 "--file", str(payloads), "--occurred-at-ms", "7", "--dry-run")
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["event"]["payload"]["at_ms"] for d in docs] == [1, 2, 3]
    assert {(d["topic"], d["partition_key"], d["published"]) for d in docs} == {
        ("chargemesh.market.v1", "s-2", False)}
    assert {d["event"]["signers"][0] for d in docs} == {"st-cred-2"}


def test_raw_publish_takes_bytes_from_exactly_one_source(tmp_path: Path) -> None:
    neither = run("events", "publish", "--raw", "--topic", "market")
    assert neither.exit_code == 2 and "exactly one of --file or --hex" in neither.output
    signed = run("events", "publish", "--raw", "--topic", "market", "--key", "x", "--hex", "00")
    assert signed.exit_code == 2
    dry = run("events", "publish", "--raw", "--topic", "market", "--partition-key", "s-1",
              "--hex", "c301ff", "--dry-run")
    assert dry.exit_code == 0
    assert json.loads(dry.stdout)["bytes"] == 3


# ---- on the session stack -----------------------------------------------------------------------


@pytest.mark.integration
def test_cli_issued_credential_and_published_events_meet_the_processors(
        mesh: Mesh, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    station_cred, station_id = f"st-cli-{tag}", f"station-cli-{tag}"
    issuer_key = tmp_path / "issuer.json"
    write_key_file(issuer_key, mesh.world.issuer)  # the session world's delegated issuer
    station_key = generate(tmp_path, station_cred, "--subject-id", station_id)

    issued = run("credential", "issue", "--issuer-key", str(issuer_key), "--holder-key",
                 str(station_key), "--role", "STATION", "--jurisdiction", "US-CA", "--publish",
                 settings=mesh.settings)
    assert issued.exit_code == 0, issued.output
    issued_id = json.loads(issued.stdout)["event_id"]
    mesh.wait_rows("SELECT event_id FROM events WHERE event_id = %(id)s", {"id": issued_id})

    shown = json.loads(run("credential", "show", station_cred, settings=mesh.settings).stdout)
    assert shown["status"] == "VALID" and shown["root_authority_id"] == "auth-root"
    assert [link["id"] for link in shown["chain"]] == [station_cred, "issuer-1", "auth-root"]

    beat = run("events", "publish", "--key", str(station_key), "--type", "StationHeartbeat",
               settings=mesh.settings, stdin=json.dumps({"station_id": station_id,
                                                         "at_ms": now_ms()}))
    assert beat.exit_code == 0, beat.output
    beat_doc = json.loads(beat.stdout)
    assert beat_doc["partition_key"] == station_id and beat_doc["published"]

    impostor = Participant.generate(station_cred, station_id)  # same id, another key
    forged = heartbeat(impostor, now_ms())
    raw = run("events", "publish", "--raw", "--topic", "market", "--partition-key", station_id,
              "--hex", forged.encode().hex(), settings=mesh.settings)
    assert raw.exit_code == 0, raw.output

    admitted = mesh.wait_rows("SELECT event_type, author_credential_id FROM events FINAL "
                              "WHERE event_id = %(id)s", {"id": beat_doc["event_id"]})
    assert admitted == [("chargemesh.capacity.v1.StationHeartbeat", station_cred)]
    refused = mesh.wait_rows("SELECT reason_code, source_topic FROM rejections FINAL "
                             "WHERE event_id = %(id)s", {"id": forged.event_id})
    assert refused == [("BAD_SIGNATURE", "chargemesh.market.v1")]
    assert not mesh.query("SELECT 1 FROM events FINAL WHERE event_id = %(id)s",
                          {"id": forged.event_id})
