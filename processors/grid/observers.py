"""Byzantine-robust grid observers (P3): k-of-n co-signed capacity and curtailment decisions.

Pure and deterministic: no Kafka, no clock. The zone router (the grid agent, single writer per
zone) folds ``ObserverSetDeclared`` and ``ObserverAttestation`` events into a JSON-able zone
state with :func:`declare_set` and :func:`attest`; a station's ledger applies a routed decision
with :func:`apply_routed_decision` after verifying it on its own (:func:`verify_certificate`).

The decision an observer signs is the ``ObserverDecision`` record: zone, observer-set version,
interval, the operator's grid event it answers, zone capacity limit, energy rate, and the
curtailment steps *in order*. Its digest is SHA-256 over a domain prefix and the record's Avro
binary (arrays keep order, decimals have one encoding at scale 6), so two decisions that differ
only in the order of curtailed stations have different digests.

Quorum rule. A set has n observers, tolerates f faults and needs k signatures, with
``1 <= k <= n - f`` and ``2k - n > f`` (for n = 3f + 1: k = 2f + 1).

Independence. A fault is an *organisation* (one operator can run many credentials), so the rule
is also kept over organisations (:meth:`TrustStore.organisation`: a credential's issuer-written
``organisation`` attribute, else its home authority): a set whose observers come from fewer than
k + f distinct organisations is refused (``OBSERVERS_NOT_INDEPENDENT``), and a quorum is k
distinct *organisations* signing one digest (two attestations of one organisation count once).
With o >= k + f organisations the arguments below hold with o for n (2k - o >= 2k - n > f).

* Liveness: the n - f >= k honest observers sign the same digest, and nothing a faulty observer
  signs removes an honest vote (only the signer's own two signatures prove equivocation), so f
  faulty observers cannot block the honest decision.
* Safety: a decision nobody honest signed needs k > f signers (k >= 2k - n > f): f faulty
  observers cannot push one through. Two *different* digests reaching k each for one interval
  need two k-sets of n observers, which share at least 2k - n > f members, each of whom signed
  both: more than f equivocators, so with at most f faulty this cannot happen. In addition the
  router decides an interval once (the first digest to reach k) and an observer caught signing
  two digests for one interval is recorded (``ObserverEquivocation`` with both signed
  attestations) and no longer counts for that interval.
"""

from __future__ import annotations

import base64
import dataclasses
from decimal import Decimal
from typing import Any

from chargemesh.checks import ensure
from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.governance import ChainOk, TrustStore
from chargemesh.processors.ingress import decode
from chargemesh.processors.ledger import power, sessions
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.statuses import CapacityCause, GridEventKind
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.observer_decision import decision_digest

SET_DECLARED = "chargemesh.grid.v1.ObserverSetDeclared"
ATTESTATION = "chargemesh.grid.v1.ObserverAttestation"
QUORUM_REACHED = DecisionType.OBSERVER_QUORUM_REACHED
EQUIVOCATION = DecisionType.OBSERVER_EQUIVOCATION
DECISION_ROUTED = DecisionType.OBSERVER_DECISION_ROUTED  # to each station, on the market topic
ROUTER_EVENT_TYPES = frozenset({SET_DECLARED, ATTESTATION})
OBSERVER_ROLE = "OBSERVER"
# The zone's state keeps every vote's signed bytes (evidence) for INTERVALS_KEPT_MAX intervals:
# 6 x 16 attestations of <= 100 steps (~3.5 KB each, base64) stays well under a 1 MiB record.
OBSERVERS_PER_SET_MAX = 16
CURTAILMENTS_PER_DECISION_MAX = 100
# Intervals a zone keeps votes for; older ones are closed (attestations for them refused).
INTERVALS_KEPT_MAX = 6
INTERVAL_MS_MIN = 60_000
# Digests a station remembers having applied (a second copy of a decision changes nothing).
APPLIED_DECISIONS_KEPT_MAX = 256
CURTAILMENT_CAUSE = CapacityCause.GRID_CURTAILMENT


# ---- the quorum rule and the decision ----------------------------------------------------------


def quorum_problem(n: int, k: int, f: int) -> str | None:
    """Why (n, k, f) is not a Byzantine quorum system, or None."""
    if not 1 <= n <= OBSERVERS_PER_SET_MAX:
        return f"n={n} observers, need 1..{OBSERVERS_PER_SET_MAX}"
    if f < 0 or not 1 <= k <= n - f:
        return f"k={k} must be in 1..n-f={n - f} (f={f}): f faults must not block a decision"
    if 2 * k - n <= f:
        return f"2k-n={2 * k - n} must exceed f={f}: two quorums must share an honest observer"
    return None


def decision_problem(decision: dict[str, Any], obs_set: dict[str, Any]) -> str | None:
    """Why a decision cannot be one for this set's zone and intervals, or None."""
    if decision["grid_zone_id"] != obs_set["grid_zone_id"]:
        return "decision is for another grid zone"
    start, interval = decision["interval_start_at_ms"], obs_set["interval_ms"]
    if start < obs_set["effective_from_ms"] or (start - obs_set["effective_from_ms"]) % interval:
        return f"interval start {start} is not on the set's {interval} ms interval grid"
    if decision["interval_end_at_ms"] != start + interval:
        return f"interval must last exactly {interval} ms"
    steps = decision["curtailments"]
    if len(steps) > CURTAILMENTS_PER_DECISION_MAX:
        return f"more than {CURTAILMENTS_PER_DECISION_MAX} curtailment steps"
    if len({(s["station_id"], s["connector_id"]) for s in steps}) != len(steps):
        return "a connector appears twice in the curtailment order"
    if any(s["power_limit_w"] < 0 for s in steps) or decision["zone_capacity_limit_w"] < 0:
        return "power limits are not negative"
    if decision["rate_per_kwh"] < 0:
        return "the rate is not negative"
    return None


# ---- the observer set --------------------------------------------------------------------------


def check_set(event: SignedEvent, p: dict[str, Any], view: TrustStore) -> Rejection | None:
    """A set declaration's content and authority (its signatures are checked by ingress)."""
    ids = list(p["observer_credential_ids"])
    problem = quorum_problem(len(ids), p["threshold_k"], p["faults_tolerated_f"])
    if problem is None and len(set(ids)) != len(ids):
        problem = "an observer is listed twice"
    if problem is None and p["interval_ms"] < INTERVAL_MS_MIN:
        problem = f"interval_ms below {INTERVAL_MS_MIN}"
    if problem is not None:
        return Rejection(Reason.INVALID_OBSERVER_SET, problem)
    operator, zone = p["grid_operator_credential_id"], p["grid_zone_id"]
    if not view.operates_zone(operator, zone):
        return Rejection(Reason.NOT_THE_ZONES_OPERATOR, f"{operator} does not operate {zone}")
    at_ms = event.body.occurred_at_ms
    chain = view.resolve(operator, at_ms)
    if not isinstance(chain, ChainOk) or p["declared_by_authority_id"] not in chain.chain:
        return Rejection(Reason.ROLE_NOT_PERMITTED,
                         f"{p['declared_by_authority_id']} does not vouch "
                         f"for the zone's operator {operator}")
    for observer in ids:
        verdict = view.resolve(observer, at_ms)
        if not isinstance(verdict, ChainOk) or OBSERVER_ROLE not in verdict.principal.roles:
            return Rejection(Reason.INVALID_OBSERVER_SET, f"{observer} is not a valid OBSERVER "
                             "credential")
        if observer == operator:
            return Rejection(Reason.INVALID_OBSERVER_SET, "the operator cannot observe itself")
    return independence_problem(organisations(ids, view, at_ms), p["threshold_k"],
                                p["faults_tolerated_f"])


def organisations(observer_ids: list[str], view: TrustStore, at_ms: int) -> dict[str, str]:
    """Each observer's organisation at ``at_ms`` (its credential id if its chain fails: a
    caller has refused such an observer already)."""
    return {o: view.organisation(o, at_ms) or o for o in observer_ids}


def independence_problem(orgs: dict[str, str], k: int, f: int) -> Rejection | None:
    """The quorum rule over organisations: k + f distinct ones, so that f faulty organisations
    can neither block a decision nor, with k counted per organisation, push one through."""
    distinct = sorted(set(orgs.values()))
    if len(distinct) >= k + f:
        return None
    return Rejection(Reason.OBSERVERS_NOT_INDEPENDENT,
                     f"{len(orgs)} observers from {len(distinct)} organisations "
                     f"({', '.join(distinct)}); k={k} with f={f} needs {k + f} distinct ones")


def organisations_signing(voters: list[str], orgs: dict[str, str]) -> int:
    """How many distinct organisations ``voters`` are (an observer unknown to ``orgs``: its
    own)."""
    return len({orgs.get(o, o) for o in voters})


def new_state() -> dict[str, Any]:
    """A zone's observer state (JSON-able: it lives in the zone state table)."""
    return {"set": None, "intervals": {}, "floor_at_ms": -(2**62)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode())


def declare_set(ostate: dict[str, Any], event: SignedEvent, p: dict[str, Any],
                view: TrustStore) -> Rejection | None:
    current = ostate["set"]
    if current is not None and p["observer_set_version"] <= current["observer_set_version"]:
        return Rejection(Reason.STALE_OBSERVER_SET, f"version {p['observer_set_version']} is not "
                         f"newer than {current['observer_set_version']}")
    problem = check_set(event, p, view)
    if problem is not None:
        return problem
    ostate["set"] = {
        "grid_zone_id": p["grid_zone_id"], "observer_set_version": p["observer_set_version"],
        "observers": sorted(p["observer_credential_ids"]), "k": p["threshold_k"],
        "f": p["faults_tolerated_f"], "interval_ms": p["interval_ms"],
        "effective_from_ms": p["effective_from_ms"], "event": _b64(event.encode()),
        "organisations": organisations(list(p["observer_credential_ids"]), view,
                                       event.body.occurred_at_ms),
    }
    ostate["intervals"] = {}  # votes were for the old set's version
    return None


def observed(ostate: dict[str, Any] | None, at_ms: int) -> bool:
    """The zone has an observer set in force at ``at_ms``: its operator alone decides nothing."""
    return bool(ostate and ostate["set"] and ostate["set"]["effective_from_ms"] <= at_ms)


# ---- attestations ------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one attestation did: a rejection (None: admitted) and the records it causes."""

    rejection: Rejection | None = None
    decisions: list[Decision] = dataclasses.field(default_factory=list)


def _vote_problem(ostate: dict[str, Any], event: SignedEvent,
                  p: dict[str, Any]) -> Rejection | None:
    obs_set = ostate["set"]
    if obs_set is None:
        return Rejection(Reason.NO_OBSERVER_SET, "the zone has declared no observer set")
    decision = p["decision"]
    if event.body.author_credential_id not in obs_set["observers"]:
        return Rejection(Reason.NOT_IN_OBSERVER_SET, f"{event.body.author_credential_id} is not an "
                         f"observer of {obs_set['grid_zone_id']} (set "
                         f"v{obs_set['observer_set_version']})")
    if decision["observer_set_version"] != obs_set["observer_set_version"]:
        return Rejection(Reason.STALE_OBSERVER_SET,
                         f"set v{decision['observer_set_version']} is not "
                         f"the zone's v{obs_set['observer_set_version']}")
    problem = decision_problem(decision, obs_set)
    if problem is not None:
        return Rejection(Reason.INVALID_DECISION, problem)
    if decision["interval_start_at_ms"] <= ostate["floor_at_ms"]:
        return Rejection(Reason.INTERVAL_CLOSED, "votes for this interval are no longer kept")
    if decision_digest(decision) != p["decision_digest"]:
        return Rejection(Reason.DIGEST_MISMATCH, "decision_digest is not the decision's digest")
    return None


def _interval(ostate: dict[str, Any], start: int) -> dict[str, Any]:
    intervals = ostate["intervals"]
    key = str(start)
    if key not in intervals:
        intervals[key] = {"votes": {}, "equivocators": [], "decided": ""}
        while len(intervals) > INTERVALS_KEPT_MAX:
            oldest = min(intervals, key=int)
            ostate["floor_at_ms"] = max(ostate["floor_at_ms"], int(oldest))
            del intervals[oldest]
    entry: dict[str, Any] = intervals[key]
    return entry


def attest(ostate: dict[str, Any], stations: list[str], event: SignedEvent,
           p: dict[str, Any]) -> Outcome:
    """Count one admitted attestation (its signature and credential were checked by ingress)."""
    problem = _vote_problem(ostate, event, p)
    if problem is not None:
        return Outcome(problem)
    observer, digest = event.body.author_credential_id, p["decision_digest"].hex()
    start = p["decision"]["interval_start_at_ms"]
    if start <= ostate["floor_at_ms"]:
        return Outcome(Rejection(Reason.INTERVAL_CLOSED,
                                 "votes for this interval are no longer kept"))
    entry = _interval(ostate, start)
    if observer in entry["equivocators"]:
        return Outcome(Rejection(Reason.OBSERVER_EQUIVOCATED, f"{observer} already equivocated on "
                                 f"interval {start}; its votes do not count"))
    prior = entry["votes"].get(observer)
    if prior is not None and prior["digest"] == digest:
        return Outcome(Rejection(Reason.DUPLICATE_ATTESTATION, f"{observer} already attested it"))
    if prior is not None:
        return _equivocated(ostate, entry, event, p, prior)
    entry["votes"][observer] = {"digest": digest, "event": _b64(event.encode())}
    if entry["decided"]:
        return Outcome()  # late or dissenting vote: recorded, the interval is decided
    voters = sorted(o for o, v in entry["votes"].items() if v["digest"] == digest)
    # a set declared before organisations were recorded: each observer is its own
    if organisations_signing(voters, ostate["set"].get("organisations", {})) < ostate["set"]["k"]:
        return Outcome()
    entry["decided"] = digest
    return Outcome(decisions=_quorum_records(ostate, stations, p, entry, voters))


def _equivocated(ostate: dict[str, Any], entry: dict[str, Any], event: SignedEvent,
                 p: dict[str, Any], prior: dict[str, Any]) -> Outcome:
    observer = event.body.author_credential_id
    del entry["votes"][observer]
    entry["equivocators"] = sorted(set(entry["equivocators"]) | {observer})
    record = {
        "grid_zone_id": ostate["set"]["grid_zone_id"], "observer_credential_id": observer,
        "observer_set_version": ostate["set"]["observer_set_version"],
        "interval_start_at_ms": p["decision"]["interval_start_at_ms"],
        "first_decision_digest": bytes.fromhex(prior["digest"]),
        "second_decision_digest": p["decision_digest"],
        "first_attestation": _unb64(prior["event"]), "second_attestation": event.encode(),
        "interval_decided": bool(entry["decided"]),
    }
    rejection = Rejection(Reason.OBSERVER_EQUIVOCATED, f"{observer} signed two decisions for "
                          f"interval {record['interval_start_at_ms']}; its votes are discarded")
    return Outcome(rejection, [decided(EQUIVOCATION, record)])


def _quorum_records(ostate: dict[str, Any], stations: list[str], p: dict[str, Any],
                    entry: dict[str, Any], voters: list[str]) -> list[Decision]:
    obs_set, decision = ostate["set"], p["decision"]
    attestations = [_unb64(entry["votes"][o]["event"]) for o in voters]
    set_event = _unb64(obs_set["event"])
    zone = obs_set["grid_zone_id"]
    quorum = {
        "grid_zone_id": zone, "interval_start_at_ms": decision["interval_start_at_ms"],
        "interval_end_at_ms": decision["interval_end_at_ms"],
        "observer_set_version": obs_set["observer_set_version"], "threshold_k": obs_set["k"],
        "decision_digest": p["decision_digest"], "grid_event_id": decision["grid_event_id"],
        "zone_capacity_limit_w": decision["zone_capacity_limit_w"],
        "rate_per_kwh": decision["rate_per_kwh"],
        "curtailment_order": [f"{s['station_id']}/{s['connector_id']}"
                              for s in decision["curtailments"]],
        "signer_credential_ids": voters, "station_ids": list(stations),
        "observer_set_event": set_event, "attestations": attestations,
    }
    out: list[Decision] = [decided(QUORUM_REACHED, quorum)]
    for station in stations:
        out.append(decided(DECISION_ROUTED, {
            "station_id": station, "grid_zone_id": zone,
            "decision_digest": p["decision_digest"], "observer_set_event": set_event,
            "attestations": attestations}))
    return out


# ---- independent verification and the station's side -----------------------------------------


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A verified quorum: the decision and who signed it."""

    decision: dict[str, Any]
    signers: tuple[str, ...]
    observer_set: dict[str, Any]


def _open(raw: bytes, event_type: str,
          view: TrustStore) -> tuple[SignedEvent, dict[str, Any]] | str:
    decoded = decode(raw)
    if not isinstance(decoded, tuple):
        return f"undecodable {event_type}: {decoded.rejection.detail}"
    event, payload = decoded
    if event.event_type != event_type:
        return f"{event.event_type} where {event_type} was expected"
    verdict = view.check_event(event, payload)
    if not isinstance(verdict, ChainOk):
        return f"{event_type} {event.event_id}: {verdict.reason} {verdict.detail}"
    return event, payload


def verify_certificate(set_raw: bytes, attestations: list[bytes], digest: bytes,
                       view: TrustStore) -> Certificate | Rejection:
    """Re-check a quorum from the signed events alone: the set (author, co-signer, rule) and k
    distinct member attestations of ``digest``, each signed, credentialed and unrevoked."""
    opened = _open(set_raw, SET_DECLARED, view)
    if isinstance(opened, str):
        return Rejection(Reason.INVALID_QUORUM, opened)
    set_event, obs_set = opened
    problem = check_set(set_event, obs_set, view)
    if problem is not None:
        return Rejection(Reason.INVALID_QUORUM, f"observer set: {problem.detail}")
    if len(attestations) > OBSERVERS_PER_SET_MAX:
        return Rejection(Reason.INVALID_QUORUM, "more attestations than observers")
    signers: set[str] = set()
    decision: dict[str, Any] | None = None
    for raw in attestations:
        att = _open(raw, ATTESTATION, view)
        if isinstance(att, str):
            return Rejection(Reason.INVALID_QUORUM, att)
        event, p = att
        if event.body.author_credential_id not in obs_set["observer_credential_ids"]:
            return Rejection(Reason.INVALID_QUORUM,
                             f"{event.body.author_credential_id} is no member")
        if p["decision_digest"] != digest or decision_digest(p["decision"]) != digest:
            return Rejection(Reason.INVALID_QUORUM, f"{event.event_id} attests another decision")
        signers.add(event.body.author_credential_id)
        decision = p["decision"]
    orgs = organisations(sorted(signers), view, set_event.body.occurred_at_ms)
    signing = organisations_signing(sorted(signers), orgs)
    if decision is None or signing < obs_set["threshold_k"]:
        return Rejection(Reason.INVALID_QUORUM, f"{signing} of {obs_set['threshold_k']} "
                         "observer organisations")
    if decision["observer_set_version"] != obs_set["observer_set_version"]:
        return Rejection(Reason.INVALID_QUORUM, "the decision names another set version")
    problem_text = decision_problem(decision, obs_set)
    if problem_text is not None:
        return Rejection(Reason.INVALID_QUORUM, problem_text)
    return Certificate(decision, tuple(sorted(signers)), obs_set)


def apply_routed_decision(state: ledger.LedgerState, cmd: ledger.Command,
                          view: ledger.GovernanceView, out: list[Decision]
                          ) -> Rejection | None:
    """A station applies a zone's quorum decision: its connectors curtailed in the decided
    order (displacing what no longer fits), and its active sessions re-priced."""
    p = cmd.payload
    if not isinstance(view, TrustStore):
        return Rejection(Reason.INVALID_QUORUM, "no trust store to verify the quorum against")
    if state.calendar is None or state.calendar["grid_zone_id"] != p["grid_zone_id"]:
        return Rejection(Reason.WRONG_GRID_ZONE, f"this station is not in {p['grid_zone_id']}")
    applied: list[str] = state.extra.setdefault("observer_decisions", [])
    if p["decision_digest"].hex() in applied:
        return Rejection(Reason.DECISION_ALREADY_APPLIED, "this quorum decision was applied before")
    cert = verify_certificate(p["observer_set_event"], list(p["attestations"]),
                              p["decision_digest"], view)
    if isinstance(cert, Rejection):
        return cert
    if cert.observer_set["grid_zone_id"] != p["grid_zone_id"]:
        return Rejection(Reason.INVALID_QUORUM, "the observer set is another zone's")
    applied.append(p["decision_digest"].hex())
    del applied[:-APPLIED_DECISIONS_KEPT_MAX]
    decision = cert.decision
    for step in decision["curtailments"]:  # in the decided order: earlier steps pick first
        if step["station_id"] != state.station_id or state.connector(step["connector_id"]) is None:
            continue
        _curtail(state, cmd, view, out, step, decision)
    if decision["rate_per_kwh"] > 0:
        _reprice(state, cmd, view, out, decision)
    return None


def _curtail(state: ledger.LedgerState, cmd: ledger.Command, view: ledger.GovernanceView,
             out: list[Decision], step: dict[str, Any], decision: dict[str, Any]) -> None:
    """Through the ledger's own capacity-change handler, so displacement follows its rules."""
    limit_w = step["power_limit_w"]
    payload = {"station_id": state.station_id, "connector_id": step["connector_id"],
               "available": limit_w > 0, "power_w": limit_w, "cause": CURTAILMENT_CAUSE,
               "from_at_ms": decision["interval_start_at_ms"],
               "until_at_ms": decision["interval_end_at_ms"]}
    before = len(state.outages)
    problem = ledger.change_capacity(state, dataclasses.replace(cmd, payload=payload), view, out)
    ensure(problem is None or problem.reason == Reason.LEDGER_FULL,
           f"curtailment refused: {problem}")
    if problem is None:  # M5: sessions that have started are held to the step's limit too
        grid_event_id = reprice_id(decision)
        if len(state.outages) > before:
            state.outages[-1].grid_event_id = grid_event_id
        power.limit_sessions(state, step["connector_id"], (limit_w, payload["from_at_ms"],
                             payload["until_at_ms"]), grid_event_id, power.SOURCE_QUORUM,
                             power.SOURCE_QUORUM, out)


def _reprice(state: ledger.LedgerState, cmd: ledger.Command, view: ledger.GovernanceView,
             out: list[Decision], decision: dict[str, Any]) -> None:
    grid = {"kind": GridEventKind.PRICE_SIGNAL, "grid_event_id": reprice_id(decision),
            "from_at_ms": decision["interval_start_at_ms"],
            "rate_per_kwh": Decimal(decision["rate_per_kwh"])}
    sessions.reprice_sessions(state, dataclasses.replace(cmd, payload={"_grid_event": grid}),
                              view, out)


def reprice_id(decision: dict[str, Any]) -> str:
    """The id vehicles accept a quorum re-price under (``RepriceAccepted.grid_event_id``)."""
    return decision["grid_event_id"] or f"quorum:{decision_digest(decision).hex()[:32]}"

