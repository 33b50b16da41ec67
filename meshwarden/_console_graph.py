"""The web console's graph (`GET /api/graph`): the mesh's workloads grouped by namespace, and one
edge per (peer, destination workload, port) the flow log saw in the last N minutes, with its
decision counts and causes (`ns/policy#rule` or a default cause).

An edge's `decision` is that of its newest record — `allow`, `deny`, or `would-deny` (allowed,
but a dry-run DENY policy matched) — so a policy change shows as a colour change as soon as the
next request is decided. A peer is its workload when its SPIFFE ID belongs to exactly one
workload of the registry, else its SPIFFE ID (`identity` node), or its address for a plaintext
peer (`plaintext` node). Egress records count only when egress denied them (nothing reached
the destination to report it; an upstream egress closed is an edge to its Service); the others
are the same connections the destinations reported. Pure: a function of the registry, the
records and the query."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import Effect, Registry
from meshwarden.xds import Flow

DEFAULT_MINUTES = 15.0
FLOWS_PER_EDGE = 20  # newest records kept in an edge's details
DECISIONS = ("allow", "deny", "would-deny")


@dataclass(frozen=True)
class GraphQuery:
    """What `GET /api/graph` is asked: the window and optional filters."""

    minutes: float = DEFAULT_MINUTES
    namespace: str | None = None  # workloads of this namespace and the edges touching them
    identity: str | None = None  # edges from or to this SPIFFE ID, workload (ns/name) or IP
    decision: str | None = None  # edges with at least one such decision in the window

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> GraphQuery:
        """From URL query parameters; ValueError names a bad one."""
        try:
            minutes = float(params.get("minutes", DEFAULT_MINUTES))
        except ValueError:
            raise ValueError("minutes must be a number") from None
        if not 0 < minutes <= 7 * 24 * 60:
            raise ValueError("minutes must be above 0 and at most 10080 (a week)")
        decision = params.get("decision") or None
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
        return cls(
            minutes, params.get("namespace") or None, params.get("identity") or None, decision
        )


def flow_decision(flow: Flow) -> str:
    """allow, deny, or would-deny (allowed now, denied once a dry-run policy enforces)."""
    verdict = flow.verdict
    if verdict.decision == Effect.DENY:
        return "deny"
    return "would-deny" if verdict.dry_run_decision == Effect.DENY else "allow"


def cause(policy: str, rule: int | None) -> str:
    """`ns/policy#rule`, or the policy (a default cause such as `default:deny`) alone."""
    return policy if rule is None else f"{policy}#{rule}"


def workload_json(workload: Any) -> dict[str, Any]:
    """A registry workload as the console shows it (no selectors: they may name uids)."""
    return {
        "id": workload.ref,
        "kind": "workload",
        "namespace": workload.namespace,
        "name": workload.name,
        "identity": workload.identity,
        "labels": dict(workload.labels),
        "addresses": [str(a) for a in workload.addresses],
        "ports": [{"port": n, "protocol": p.protocol} for n, p in sorted(workload.ports.items())],
    }


class _Peers:
    """Which node a record's peer is."""

    def __init__(self, registry: Registry | None) -> None:
        owners: dict[str, list[str]] = defaultdict(list)
        for ref, workload in registry.workloads.items() if registry else ():
            owners[workload.identity].append(ref)
        self._owner = {identity: refs[0] for identity, refs in owners.items() if len(refs) == 1}

    def node(self, flow: Flow) -> tuple[str, str]:
        """(node id, kind) of the peer of `flow`."""
        if flow.identity is not None:
            ref = self._owner.get(flow.identity)
            return (ref, "workload") if ref else (flow.identity, "identity")
        return f"ip:{flow.source_ip or 'unknown'}", "plaintext"


class _Edge:
    def __init__(self, source: str, target: str, port: int) -> None:
        self.source, self.target, self.port = source, target, port
        self.counts: Counter[str] = Counter()
        self.causes: Counter[tuple[str, str, int | None, str]] = Counter()
        self.flows: deque[Flow] = deque(maxlen=FLOWS_PER_EDGE)  # the newest

    def add(self, flow: Flow) -> None:
        decision = flow_decision(flow)
        self.counts[decision] += 1
        self.causes[(decision, flow.verdict.policy, flow.verdict.rule, flow.protocol)] += 1
        self.flows.append(flow)

    def to_json(self, kind: str, flows: bool = False) -> dict[str, Any]:
        """The edge; with `flows`, also its newest records (newest first)."""
        newest = self.flows[-1]
        summary = self._summary(kind, newest)
        if flows:
            summary["flows"] = [f.to_json() for f in reversed(self.flows)]
        return summary

    def _summary(self, kind: str, newest: Flow) -> dict[str, Any]:
        return {
            "id": f"{self.source}->{self.target}:{self.port}",
            "source": self.source,
            "target": self.target,
            "port": self.port,
            "protocol": newest.protocol,
            "decision": flow_decision(newest),
            "plaintext": kind == "plaintext",
            "counts": {
                "allow": self.counts["allow"],
                "deny": self.counts["deny"],
                "wouldDeny": self.counts["would-deny"],
            },
            "causes": [
                {"decision": d, "cause": cause(p, r), "policy": p, "rule": r, "count": n}
                for (d, p, r, _), n in self.causes.most_common()
            ],
            "lastSeen": dt.datetime.fromtimestamp(newest.time, dt.UTC).isoformat(),
        }


def _edges(flows: Iterable[Flow], peers: _Peers) -> tuple[list[_Edge], dict[str, str]]:
    edges: dict[tuple[str, str, int], _Edge] = {}
    kinds: dict[str, str] = {}
    for flow in flows:
        if flow.egress is not None and not flow.denied:
            continue  # the destination reported the same connection (ingress)
        source, kind = peers.node(flow)
        kinds[source] = kind
        key = (source, flow.workload, flow.port)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = _Edge(*key)
        edge.add(flow)
    return list(edges.values()), kinds


def _keep(edge: _Edge, query: GraphQuery, workloads: Mapping[str, Any]) -> bool:
    ends = {edge.source, edge.target}
    if query.decision is not None and not edge.counts[query.decision]:
        return False
    if query.namespace is not None and query.namespace not in {_namespace(e) for e in ends}:
        return False
    if query.identity is not None:
        names = ends | {edge.source.removeprefix("ip:")}
        names |= {workloads[e].identity for e in ends if e in workloads}
        return query.identity in names
    return True


def edge(registry: Registry | None, flows: Sequence[Flow], edge_id: str) -> dict[str, Any] | None:
    """One edge with its newest records (`GET /api/edge?id=...`); `flows` are the records of
    the window to its target workload. None when the window has no such edge."""
    edges, kinds = _edges(flows, _Peers(registry))
    for found in edges:
        if f"{found.source}->{found.target}:{found.port}" == edge_id:
            return found.to_json(kinds.get(found.source, "workload"), flows=True)
    return None


def target_of(edge_id: str) -> str:
    """The destination workload of an edge id `SOURCE->NS/NAME:PORT` ("" if malformed)."""
    _, arrow, rest = edge_id.rpartition("->")
    return rest.rpartition(":")[0] if arrow else ""


def _namespace(node: str) -> str | None:
    """The namespace of a workload node (`ns/name`); None for an identity or address."""
    if node.startswith(("ip:", "spiffe://")) or node.count("/") != 1:
        return None
    return node.split("/")[0]


def sidecar_sync(ref: str, status: Mapping[str, Any]) -> dict[str, Any]:
    """A workload's sidecar as the /healthz report `status` tells it: `sync` is the report's
    own state where it has one (SYNCED, STALE, NACK), else SYNCED or STALE from whether it
    applied its configuration; PROBLEM while `up` says it is not serving, NONE when no sidecar
    is connected; `syncReason` says why it is not SYNCED."""
    sidecar = status.get("sidecars", {}).get(ref)
    problem = status.get("sidecarProblems", {}).get(ref)
    if problem:
        state, reason = "PROBLEM", str(problem)
    elif not isinstance(sidecar, dict):
        state, reason = "NONE", "no sidecar connected to this control plane"
    elif sidecar.get("state"):
        state, reason = str(sidecar["state"]), str(sidecar.get("reason") or "")
    else:
        applied = bool(sidecar.get("applied"))
        state = "SYNCED" if applied else "STALE"
        reason = "" if applied else "its current configuration is not ACKed yet"
    return {"sidecar": sidecar, "sync": state, "syncReason": reason}


def graph(
    registry: Registry | None,
    flows: Sequence[Flow],
    query: GraphQuery,
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The graph JSON for the records in the window (`flows` are those records, oldest first);
    `status` is the /healthz report (each workload's sidecar sync state)."""
    workloads = dict(registry.workloads) if registry else {}
    edges, kinds = _edges(flows, _Peers(registry))
    kept = [e for e in edges if _keep(e, query, workloads)]
    filtered = query.namespace is not None or query.identity is not None
    shown = {ref for ref in workloads if not filtered or _namespace(ref) == query.namespace}
    shown |= {end for e in kept for end in (e.source, e.target)}
    known = sorted(shown & set(workloads))
    nodes = [{**workload_json(workloads[ref]), **sidecar_sync(ref, status or {})} for ref in known]
    nodes += [_peer_node(ref, kinds.get(ref, "workload")) for ref in sorted(shown - set(known))]
    return {
        "windowMinutes": query.minutes,
        "namespaces": sorted({n["namespace"] for n in nodes if n["namespace"]}),
        "nodes": nodes,
        "edges": [e.to_json(kinds.get(e.source, "workload")) for e in kept],
    }


def _peer_node(ref: str, kind: str) -> dict[str, Any]:
    """A node outside the registry: a peer identity, a plaintext address, or a workload that
    is gone from the policies but still has records in the window."""
    identity = ref if kind == "identity" else None
    return {
        "id": ref,
        "kind": kind,
        "namespace": _namespace(ref),
        "name": ref.removeprefix("ip:"),
        "identity": identity,
    }
