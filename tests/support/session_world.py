"""Shared setup for the pure session tests: a station's ledger opened under its own filed tariff
and published rules, fed through the same admission and step as the processors."""

from __future__ import annotations

from typing import Any

from chargemesh.processors.ledger import state as ledger
from chargemesh.streams.sdk import participant as sdk
from chargemesh.units import HOUR_MS

from tests.support.world import T0_MS, World


class PureStation:
    """Base for the pure tests' station helpers: ``world`` and ``name`` set by the subclass."""

    world: World
    name: str

    def open_ledger(self, tariff: dict[str, Any]) -> None:
        """File ``tariff`` and publish rules as ``{name}-tariff``/``{name}-rules``, then start an
        empty ledger whose horizon opens an hour after T0."""
        world, name = self.world, self.name
        world.governance += [
            sdk.tariff_filed(world.root, tariff_id=f"{name}-tariff", jurisdiction="US-CA",
                             at_ms=T0_MS, **tariff),
            sdk.rules_published(world.root, rules_version=f"{name}-rules", jurisdiction="US-CA",
                                at_ms=T0_MS)]
        self.store = world.store()
        self.state = ledger.LedgerState(name)
        self.offset = 0
        self.start_ms = T0_MS + HOUR_MS
