"""The README's main job plans the same signed bytes across refactors (issue 14: behaviour
unchanged). The digest was taken from main before the redesign (commit 57b8b07)."""

from __future__ import annotations

import hashlib

from chargemesh.infra.sim.plan import SimConfig, plan_market

SEED_7_EVENTS = 7048
SEED_7_SHA256 = "366bb64a3b5deb6ec9d987e88de759844af7d58ea55928406c86f5f28dc716dc"


def test_simulate_seed_7_plans_byte_identical_events() -> None:
    events = plan_market(SimConfig(seed=7)).events()
    digest = hashlib.sha256()
    for event in events:
        digest.update(event.encode())
    assert (len(events), digest.hexdigest()) == (SEED_7_EVENTS, SEED_7_SHA256)
