"""`recommend`: least-privilege ALLOW policies from observed flows (pure; no I/O).

Flows (records as `GET /flows` prints them) that were allowed are grouped by destination — the
workloads sharing one label set (replicas), so the policy's selector is their labels — and port.
Callers are exact identities; a namespace is named instead only when every identity of that
namespace (at least two) was seen calling that port. HTTP operations keep each observed method
with its own paths (no method × path cross product); sibling paths collapse to `/dir/*` only
when at least `MIN_SIBLINGS` distinct ones share a directory other than the root. Plaintext
callers become /32 IP rules, flagged. Output is dry-run and commented with what each rule covers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._patterns import normalize_path
from meshwarden.engine._recommend_yaml import render
from meshwarden.engine._registry import Workload
from meshwarden.engine._vocabulary import Direction

MIN_SIBLINGS = 4
Caller = tuple[str, str]  # ("identity" | "namespace" | "ip", value)


@dataclass(slots=True)
class Seen:
    """What one caller did on one port: method → paths, and when."""

    ops: dict[str | None, set[str]] = field(default_factory=lambda: defaultdict(set))
    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, method: str | None, path: str | None, time: str) -> None:
        if method is not None and path is not None:
            self.ops[method].add(path)
        self.count += 1
        self.first = min(self.first, time) if self.first else time
        self.last = max(self.last, time)

    def merge(self, other: Seen) -> None:
        for method, paths in other.ops.items():
            self.ops[method] |= paths
        self.count += other.count
        self.first = min(x for x in (self.first, other.first) if x)
        self.last = max(self.last, other.last)


@dataclass(frozen=True, slots=True)
class RecommendedRule:
    port: int
    http: bool
    callers: tuple[Caller, ...]
    operations: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (methods, paths)
    seen: Seen
    notes: tuple[str, ...]


@dataclass(slots=True)
class Recommendation:
    """A recommended ALLOW policy for the workloads of one label set: its rules and notes."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    workloads: list[str]
    rules: list[RecommendedRule]
    notes: list[str]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_yaml(self, today: str) -> str:
        return render(self, today)


def recommend(
    mesh: CompiledMesh, flows: Iterable[Mapping[str, Any]]
) -> tuple[list[Recommendation], list[str]]:
    """Recommendations, one per destination group, and notes on flows that were left out."""
    notes: list[str] = []
    groups = _groups(mesh, notes)
    seen: dict[tuple[str, int], dict[Caller, Seen]] = defaultdict(dict)
    skipped: dict[str, int] = defaultdict(int)
    for flow in flows:
        if flow.get("direction") == Direction.EGRESS:
            continue  # the source's record of a connection the destination also reported
        reason = _usable(mesh, flow, groups)
        if reason:
            skipped[reason] += 1
            continue
        caller = _caller(flow)
        key = (groups[flow["workload"]], int(flow["port"]))
        path = flow.get("path")
        method = flow.get("method") if flow.get("protocol", "http") != "tcp" else None
        entry = seen[key].setdefault(caller, Seen())
        entry.add(method, normalize_path(path) if method and path else None, str(flow["time"]))
    notes += [f"{n} flow(s) left out: {why}" for why, n in sorted(skipped.items())]
    return _build(mesh, groups, seen, notes), notes


def _groups(mesh: CompiledMesh, notes: list[str]) -> dict[str, str]:
    """workload ref → group key `ns|k=v,...` (workloads with one label set)."""
    groups: dict[str, str] = {}
    for ref, workload in sorted(mesh.registry.workloads.items()):
        if not workload.labels:
            notes.append(
                f"workload {ref} has no labels, so no policy can select it alone; "
                "give it a label (e.g. app) and run recommend again"
            )
            continue
        labels = ",".join(f"{k}={v}" for k, v in sorted(workload.labels.items()))
        groups[ref] = f"{workload.namespace}|{labels}"
    return groups


def _usable(mesh: CompiledMesh, flow: Mapping[str, Any], groups: dict[str, str]) -> str:
    if str(flow.get("decision", "")).lower() != "allow":
        return "denied by the mesh when observed (recommend proposes what was allowed)"
    workload = mesh.registry.workloads.get(str(flow.get("workload")))
    if workload is None:
        return "destination workload not in the policies"
    if flow["workload"] not in groups:
        return "destination workload without labels"
    if int(flow.get("port", 0)) not in workload.ports:
        return "port not declared by the destination workload"
    if not flow.get("sourceIdentity") and not flow.get("sourceIp"):
        return "caller unknown (neither identity nor address recorded)"
    return ""


def _caller(flow: Mapping[str, Any]) -> Caller:
    identity = flow.get("sourceIdentity")
    return ("identity", str(identity)) if identity else ("ip", str(flow["sourceIp"]))


def _build(
    mesh: CompiledMesh,
    groups: dict[str, str],
    seen: dict[tuple[str, int], dict[Caller, Seen]],
    notes: list[str],
) -> list[Recommendation]:
    members: dict[str, list[Workload]] = defaultdict(list)
    for ref, group in groups.items():
        members[group].append(mesh.registry.workloads[ref])
    found: dict[str, Recommendation] = {}
    taken = {p.ref for p in mesh.policies.values()}
    for (group, port), callers in sorted(seen.items()):
        if group not in found:
            found[group] = _recommendation(mesh, members[group], taken)
        workload = members[group][0]
        http = workload.ports[port].is_http
        found[group].rules.extend(_rules(mesh, port, http, callers))
    return list(found.values())


def _recommendation(
    mesh: CompiledMesh, workloads: list[Workload], taken: set[str]
) -> Recommendation:
    first = workloads[0]
    base = f"recommended-{first.labels.get('app') or first.name}"[:55].rstrip("-")
    name, n = base, 1
    while f"{first.namespace}/{name}" in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(f"{first.namespace}/{name}")
    refs = sorted(w.ref for w in workloads)
    selected = sorted(mesh.registry.select(first.namespace, _selector(first.labels)))
    notes = []
    if selected != refs:
        others = ", ".join(r for r in selected if r not in refs)
        notes.append(
            f"its selector also selects {others} (their labels include these); "
            "narrow it by hand if that is not wanted"
        )
    return Recommendation(first.namespace, name, dict(first.labels), refs, [], notes)


def _selector(labels: Mapping[str, str]) -> Any:
    from meshwarden.engine._model import LabelSelector

    return LabelSelector(match_labels=dict(labels))


def _rules(
    mesh: CompiledMesh, port: int, http: bool, callers: dict[Caller, Seen]
) -> list[RecommendedRule]:
    merged, notes = _collapse_namespaces(mesh, callers)
    by_ops: dict[tuple[Any, ...], list[Caller]] = defaultdict(list)
    operations: dict[Caller, tuple[Any, ...]] = {}
    for caller, entry in merged.items():
        operations[caller] = _operations(entry) if http else ()
        by_ops[(caller[0] == "ip", operations[caller])].append(caller)
    rules = []
    for (_, ops), group in sorted(by_ops.items(), key=lambda kv: sorted(kv[1])):
        seen = Seen()
        for caller in group:
            seen.merge(merged[caller])
        rule_notes = [n for c in group for n in notes.get(c, ())]
        rule_notes += [
            f"{c[1]} is a plaintext caller (no identity; allowed by address under "
            "PERMISSIVE mTLS): give it an identity"
            for c in group
            if c[0] == "ip"
        ]
        rule_notes += _generalised(seen, ops)
        rules.append(
            RecommendedRule(port, http, tuple(sorted(group)), ops, seen, tuple(rule_notes))
        )
    return rules


def _collapse_namespaces(
    mesh: CompiledMesh, callers: dict[Caller, Seen]
) -> tuple[dict[Caller, Seen], dict[Caller, list[str]]]:
    by_namespace: dict[str, set[str]] = defaultdict(set)
    for w in mesh.registry.workloads.values():
        by_namespace[w.namespace].add(w.identity)
    seen_ids = {value for kind, value in callers if kind == "identity"}
    merged = dict(callers)
    notes: dict[Caller, list[str]] = {}
    for namespace, identities in sorted(by_namespace.items()):
        if len(identities) < 2 or not identities <= seen_ids:
            continue
        entry = Seen()
        for identity in sorted(identities):
            entry.merge(merged.pop(("identity", identity)))
        merged[("namespace", namespace)] = entry
        notes[("namespace", namespace)] = [
            f"namespace {namespace}: all {len(identities)} of its identities were seen, so the "
            "rule names the namespace (it also admits workloads added there later)"
        ]
    return merged, notes


def _operations(seen: Seen) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """(methods, paths) pairs: methods with the same (generalised) paths share one."""
    by_paths: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for method, paths in seen.ops.items():
        if method is not None:
            by_paths[tuple(generalise(paths))].append(method)
    return tuple(sorted((tuple(sorted(m)), p) for p, m in by_paths.items()))


def generalise(paths: Iterable[str]) -> list[str]:
    """Exact paths, with `MIN_SIBLINGS` or more siblings in one directory (not the root)
    replaced by `dir/*`."""
    by_dir: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        by_dir[path.rsplit("/", 1)[0]].add(path)
    out: set[str] = set()
    for directory, members in by_dir.items():
        if directory and len(members) >= MIN_SIBLINGS:
            out.add(f"{directory}/*")
        else:
            out |= members
    return sorted(out)


def _generalised(seen: Seen, ops: tuple[Any, ...]) -> list[str]:
    observed = {p for paths in seen.ops.values() for p in paths}
    notes = []
    for _, paths in ops:
        for pattern in paths:
            if pattern.endswith("/*"):
                covered = sum(1 for p in observed if p.startswith(pattern[:-1]))
                notes.append(f"{pattern} stands for {covered} observed paths under it")
    return sorted(set(notes))
