"""Waiting for the processors' verdicts on events a test published: the attack's refusal on the
rejections topic and its legitimate twin in the admitted log (issue 15's soundness tests)."""

from __future__ import annotations

import pytest
from chargemesh.infra.stack.worker import event_ids, log_tail
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.topics import ADMITTED, REJECTIONS

from tests.conftest import Mesh

VERDICT_WAIT_S = 60


def await_verdicts(mesh: Mesh, refused: list[SignedEvent],
                   admitted: list[SignedEvent]) -> dict[str, dict[str, object]]:
    """Wait until every ``refused`` event is on the rejections topic and every ``admitted`` one
    in the admitted log; the rejection records by event id. None of ``refused`` is admitted,
    none of ``admitted`` refused."""
    rejections, log = mesh.reader(REJECTIONS.name), mesh.reader(ADMITTED.name)
    wanted_refused = {e.event_id for e in refused}
    try:
        rejections.wait_for(
            lambda rs: wanted_refused <= {r.rejection()["event_id"] for r in rs},
            timeout_s=VERDICT_WAIT_S, workers=(mesh.worker,))
        log.wait_for(lambda rs: {e.event_id for e in admitted} <= event_ids(rs),
                     timeout_s=VERDICT_WAIT_S, workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    records = {r.rejection()["event_id"]: r.rejection() for r in rejections.records}
    assert not wanted_refused & event_ids(log.records)
    assert not {e.event_id for e in admitted} & set(records)
    rejections.close()
    log.close()
    return {event_id: records[event_id] for event_id in wanted_refused}
