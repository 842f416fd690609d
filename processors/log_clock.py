"""Issue 15, hole 3: an event is judged at the time of the log that admits it. Pure.

An event's ``occurred_at_ms`` is what its author claims; nothing checks it against a wall
clock (the processors read none, so a replay of a log reproduces its decisions). What the mesh
can check is the claim against the clock of the log that orders the event, a clock derived from
that log alone and persisted with it:

- a station's ledger (and a road operator's, the same ``LedgerState``): ``station_clock_ms``,
  the latest time the ledger's owner signed (its heartbeats, calendar, evidence; a road's
  segments), moved only by its admitted events;
- the governance log: ``TrustStore.log_clock_ms``, the latest time an admitted governance event
  claimed.

Rules (``processors/ledger/log_time.py`` applies them to the ledgers, ``governance`` to its log):

- **skew**: a claimed time more than the log's bound from its clock is refused ``CLOCK_SKEW``;
  a log with no clock yet (0: nothing signed by its owner) takes any time;
- **expiry**: a signer's chain must still be valid at ``max(claimed, log clock)``;
- **revocation**: once a revocation is in a log (admitted to the governance log; routed to a
  station's ledger), the revoked credential and everything that chains through it may not act
  in that log from ``max(claimed time, log clock)`` on: a backdated event does not get round it.

The bounds. ``CLOCK_SKEW_MS_MAX`` (7 days) for a ledger. A station publishes its calendar
ahead (the SDK's and the tests' habit: a day ahead, then nothing until the first arrival; depots
a week of windows) and may sign nothing in between, so a ledger's clock can lag the truth by that
much; a week covers it, clock drift and events signed offline and published late, while no single
event may jump a ledger's clock (closing auctions, releasing bookings as no-shows, pruning
history) by more than a week. Backdating gains nothing within the bound: the ledger judges its
signers' revocation and expiry at ``max(claimed, ledger clock)``.
``GOVERNANCE_CLOCK_SKEW_MS_MAX`` (one year), ahead of the governance log's clock only:
governance acts are administrative, signed offline in key ceremonies and published weeks later,
and the SDK's governance builders sign at time 0 unless told otherwise (so behind is not
refused, and gains nothing: the log judges its signers at ``max(claimed, log clock)``); a year
keeps one act from flinging the log's clock, and with it every later act's judging time, years
ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.units import DAY_MS

CLOCK_SKEW_MS_MAX = 7 * DAY_MS
GOVERNANCE_CLOCK_SKEW_MS_MAX = 366 * DAY_MS


def skew_problem(log_clock_ms: int, claimed_ms: int, bound_ms: int,
                 log_name: str) -> Rejection | None:
    """``claimed_ms`` is more than ``bound_ms`` from the log's clock (0: none yet)."""
    if log_clock_ms <= 0 or abs(claimed_ms - log_clock_ms) <= bound_ms:
        return None
    side = "ahead of" if claimed_ms > log_clock_ms else "behind"
    return Rejection.of(Reason.CLOCK_SKEW,
                        f"claims {claimed_ms}, {abs(claimed_ms - log_clock_ms)} ms {side} "
                        f"{log_name}'s clock {log_clock_ms} (bound {bound_ms} ms)")


def revoked_problem(chain: Iterable[str], effective_of: Callable[[str], int | None],
                    judged_at_ms: int) -> Rejection | None:
    """A link of ``chain`` whose revocation the log holds (``effective_of``: its effective time,
    None if none) is in force at ``judged_at_ms`` (``max(claimed, log clock)``, so a backdated
    claim does not move it)."""
    for link in chain:
        effective = effective_of(link)
        if effective is not None and effective <= judged_at_ms:
            since = f"from {effective}" if effective else "since the log learnt of it"
            return Rejection.of(Reason.CREDENTIAL_REVOKED,
                                f"{link} is revoked in this log {since}; judged at "
                                f"{judged_at_ms} (the later of the claimed and the log's time)")
    return None
