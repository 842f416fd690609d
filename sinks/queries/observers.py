"""The grid observers read model (P3): a zone's observer set, its latest quorum decisions, the
observers caught equivocating, and the attestations refused, from ``observer_sets``,
``grid_quorum_decisions``, ``observer_equivocations`` and ``rejections``.

``read_observer_view`` takes a ``clickhouse_driver.Client``; ``chargemesh grid observers``
prints what it returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.sinks.queries import named_rows
from clickhouse_driver import Client

DECISIONS_READ_MAX = 20
EQUIVOCATIONS_READ_MAX = 20
ATTESTATION_EVENT_TYPE = "chargemesh.grid.v1.ObserverAttestation"


@dataclasses.dataclass(frozen=True)
class ObserverView:
    zone: str
    observer_set: dict[str, Any] | None
    decisions: list[dict[str, Any]]
    equivocations: list[dict[str, Any]]
    refusals: dict[str, int]  # reason code -> attestations refused for it (all zones)


def read_observer_view(client: Client, zone: str) -> ObserverView:
    params = {"z": zone}
    sets = named_rows(client, "SELECT observer_set_version, observer_credential_ids, "
                      "threshold_k, faults_tolerated_f, interval_ms, effective_from_ms, "
                      "declared_by_authority_id, grid_operator_credential_id FROM observer_sets "
                      "FINAL WHERE grid_zone_id = %(z)s ORDER BY observer_set_version DESC "
                      "LIMIT 1", params)
    decisions = named_rows(client, "SELECT interval_start_at_ms, interval_end_at_ms, "
                           "decision_digest, signer_credential_ids, curtailment_order, "
                           "rate_per_kwh, station_ids FROM grid_quorum_decisions FINAL "
                           "WHERE grid_zone_id = %(z)s ORDER BY interval_start_at_ms DESC "
                           f"LIMIT {DECISIONS_READ_MAX}", params)
    equivocations = named_rows(client, "SELECT observer_credential_id, interval_start_at_ms, "
                               "first_attestation_event_id, second_attestation_event_id, "
                               "interval_decided FROM observer_equivocations FINAL "
                               "WHERE grid_zone_id = %(z)s ORDER BY interval_start_at_ms DESC "
                               f"LIMIT {EQUIVOCATIONS_READ_MAX}", params)
    # Refused attestations never reach the events table (a forged one may not even name a
    # real observer), and a rejection keeps no partition key: these are for all zones.
    refused = client.execute(
        "SELECT reason_code, count() FROM rejections FINAL WHERE event_type = "
        f"'{ATTESTATION_EVENT_TYPE}' GROUP BY reason_code")
    return ObserverView(zone, sets[0] if sets else None, decisions, equivocations,
                        {str(reason): int(n) for reason, n in refused})
