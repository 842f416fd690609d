"""A station's (or road operator's) ledger judges each event at its own log time. Pure.

Issue 15, hole 3 (the rules and bounds: ``processors/log_clock.py``). :func:`judge` runs in
``ledger.step.market_step`` before any command handler; an event it refuses changes nothing
and is not admitted to the lineage log:

- **skew**: an event claiming a time more than ``CLOCK_SKEW_MS_MAX`` from the ledger's clock
  (``station_clock_ms``: the latest time the station itself signed; 0 before it signed
  anything) is refused ``CLOCK_SKEW``. Records the processors sign (routed revocations, grid
  events, observer decisions) carry another log's time and are not judged here;
- **revocation**: a ``RevocationRouted`` is remembered in the ledger state with the ledger's
  clock when it became known (``extra["revocations_known"]``: id -> [effective_at_ms,
  known_at_ms, in_force_from_ms]); from then on an event signed (as author or co-signer) by
  the revoked credential or anything chained through it is refused ``CREDENTIAL_REVOKED``,
  whatever time it claims, when the revocation took effect when it was signed (in force at
  once: the ledger's clock may lag the governance log's) or, scheduled ahead, is effective at
  ``max(claimed, ledger clock)``;
- **expiry**: a signer whose chain has expired by ``max(claimed, ledger clock)`` is refused
  ``CREDENTIAL_EXPIRED`` (ingress checked the claimed time only).

Deterministic: everything read is in the ledger's own order (its state and the routed record),
so replaying the market topic reproduces every refusal. A remembered revocation is forgotten
once the ledger's clock is past its effective time by more than the skew bound: every event the
skew rule still lets in then claims a time the revocation covers, which ingress refuses on the
claimed time alone.
"""

from __future__ import annotations

from typing import Any

from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted
from chargemesh.processors.ledger.state import GovernanceView, LedgerState
from chargemesh.processors.log_clock import CLOCK_SKEW_MS_MAX, revoked_problem, skew_problem
from chargemesh.processors.policy import POLICIES, field_at
from chargemesh.processors.reasons import Reason, Rejection

REVOCATION_ROUTED = "chargemesh.ledger.v1.RevocationRouted"
KNOWN = "revocations_known"
# Revocations a ledger remembers at once (each is forgotten a skew bound after it took effect).
REVOCATIONS_KNOWN_MAX = 10_000
PROCESSOR_ROLE = "PROCESSOR"


def judge(state: LedgerState, verdict: Admitted, view: GovernanceView) -> Rejection | None:
    """Why ``verdict``'s event may not act in this ledger at its log time, or None."""
    event = verdict.event
    if event.event_type == REVOCATION_ROUTED:
        remember(state, verdict.payload, event.body.occurred_at_ms)
        return None
    if verdict.author is not None and PROCESSOR_ROLE in verdict.author.principal.roles:
        return None
    claimed = event.body.occurred_at_ms
    problem = skew_problem(state.station_clock_ms, claimed, CLOCK_SKEW_MS_MAX,
                           f"ledger {state.station_id}")
    if problem is not None:
        return problem
    known: dict[str, list[int]] = state.extra.get(KNOWN) or {}
    if known:
        _forget_settled(state, known)
    judged_at = max(claimed, state.clock_ms)
    if not known and judged_at == claimed:
        return None  # ingress judged it at this very time
    for chain in _signer_chains(verdict, view):
        problem = revoked_problem(chain, lambda cid: known[cid][2] if cid in known else None,
                                  judged_at)
        if problem is None and judged_at > claimed and isinstance(view, TrustStore):
            held = view.resolve(chain[0], judged_at)
            if isinstance(held, Rejection) and held.reason == Reason.CREDENTIAL_EXPIRED:
                problem = held
        if problem is not None:
            return problem
    return None


def remember(state: LedgerState, payload: dict[str, Any], revoked_at_ms: int) -> None:
    """A routed revocation (signed at ``revoked_at_ms`` on the governance log) becomes known to
    this ledger at its current clock: [effective_at_ms, known_at_ms, in_force_from_ms]. One
    effective when it was signed (or before: KEY_COMPROMISE) is in force from now on whatever
    the ledger's clock says (0); one scheduled ahead, from its effective time."""
    known: dict[str, list[int]] = state.extra.setdefault(KNOWN, {})
    effective = int(payload["effective_at_ms"])
    in_force_from = effective if effective > revoked_at_ms else 0
    for cid in (payload["revoked_credential_id"], *payload["revoked_credential_ids"]):
        entry = known.get(cid)
        if entry is not None:
            entry[0], entry[2] = min(entry[0], effective), min(entry[2], in_force_from)
        elif len(known) < REVOCATIONS_KNOWN_MAX:
            known[cid] = [effective, state.clock_ms, in_force_from]


def _forget_settled(state: LedgerState, known: dict[str, list[int]]) -> None:
    horizon = state.station_clock_ms - CLOCK_SKEW_MS_MAX
    for cid in [cid for cid, entry in known.items() if entry[0] < horizon]:
        del known[cid]


def _signer_chains(verdict: Admitted, view: GovernanceView) -> list[tuple[str, ...]]:
    """The author's chain (as ingress resolved it) and each co-signer's."""
    event = verdict.event
    chains = [verdict.author.chain if verdict.author is not None
              else (event.body.author_credential_id,)]
    policy = POLICIES.get(event.event_type)
    for path in policy.cosigner_paths if policy is not None else ():
        cosigner = field_at(verdict.payload, path)
        if not isinstance(cosigner, str):
            continue
        resolved = (view.resolve(cosigner, event.body.occurred_at_ms)
                    if isinstance(view, TrustStore) else None)
        chains.append(resolved.chain if resolved is not None and hasattr(resolved, "chain")
                      else (cosigner,))
    return chains
