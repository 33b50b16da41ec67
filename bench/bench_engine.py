"""Policy-engine benchmark: compile, one-change recompile and decisions/s, ours vs a naive scan.

    .venv/bin/python bench/bench_engine.py         # 1,000 workloads; 10/100/1,000/10,000 policies
    .venv/bin/python bench/bench_engine.py --quick # 100 workloads; 10/100/1,000 policies
    .venv/bin/python bench/bench_engine.py --json  # one JSON object for scripts

For every policy count it generates a realistic mesh (YAML text → `read_documents` →
`validate_document`), then measures `compile_documents`, `with_policy_changes` for ~20 different
single-policy edits, and `decide(compiled.plan(dest), request)` over a fixed request mix, against
a naive evaluator that scans every policy per request the way Envoy's classic RBAC `rules` engine
and istiod's per-workload policy selection do. Both evaluators must agree on every request
(verdict, cause, audit and dry-run outcomes); a mismatch is an engine bug and fails the run.
Prints figures only; targets are issue #2's "Benchmark" section.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import ipaddress
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from meshwarden.engine import (
    Cause,
    CompiledMesh,
    CompiledRule,
    Document,
    InputLimits,
    Request,
    Workload,
    compile_documents,
    decide,
)
from meshwarden.engine._documents import validate_document
from meshwarden.engine._yaml import read_documents

API = "meshwarden.io/v1alpha1"
TD = "bench.example.org"
ROOT = "meshwarden-system"
NAMESPACES = (
    "shop",
    "payments",
    "catalog",
    "search",
    "identity",
    "orders",
    "shipping",
    "billing",
    "inventory",
    "reviews",
    "ads",
    "media",
    "notify",
    "analytics",
    "data",
    "ml",
    "gateway",
    "support",
    "monitoring",
    "legacy",
)
TIERS = ("frontend", "backend", "backend", "db", "cache", "worker")
PORTS = {  # tier → (port, protocol); every http/grpc port is 8080/9090, every tcp port 5432/6379
    "frontend": ((8080, "http"),),
    "backend": ((8080, "http"), (9090, "grpc")),
    "db": ((5432, "tcp"),),
    "cache": ((6379, "tcp"),),
    "worker": ((8080, "http"),),
}
LEGACY_NET = "127.200.0.0/16"  # plaintext peers without a sidecar (PERMISSIVE mesh)
BLOCKED_NET = "127.250.0.0/16"  # plaintext peers a root DENY blocks
PATHS = (
    "/api/v1/items",
    "/api/v1/items/42",
    "/api//v1/./orders",
    "/health",
    "/metrics",
    "/admin/users",
    "/static/app.js",
    "/debug/pprof",
    "/v1/orders",
    "/api/v1/%69tems",
)
METHODS = ("GET",) * 11 + ("POST",) * 4 + ("PUT", "PUT", "DELETE", "HEAD", "PATCH")
TARGETS: dict[str, float] = {
    "cost_ratio": 1.5,
    "decisions_per_s": 50_000,
    "compile_s": 2.0,
    "recompile_ms": 50,
}


# ---------------------------------------------------------------------------- generated mesh


@dataclass(frozen=True)
class App:
    namespace: str
    name: str
    tier: str
    replicas: int
    clients: tuple[App, ...] = ()

    @property
    def identity(self) -> str:
        return f"spiffe://{TD}/ns/{self.namespace}/sa/{self.name}"

    @property
    def ports(self) -> tuple[tuple[int, str], ...]:
        return PORTS[self.tier]

    @property
    def is_http(self) -> bool:
        return self.ports[0][1] != "tcp"


@dataclass
class Topology:
    """Namespaces, apps (several replicas each), workloads and who calls whom."""

    apps: list[App]
    workloads: list[tuple[App, str, str]]  # (app, workload name, address)

    @classmethod
    def generate(cls, n_workloads: int, seed: int = 7) -> Topology:
        rng = random.Random(seed)
        n_apps = max(2 * len(NAMESPACES), n_workloads // 5)
        replicas = [1] * n_apps
        for _ in range(n_workloads - n_apps):
            replicas[rng.randrange(n_apps)] += 1
        bare = [
            App(
                NAMESPACES[i % len(NAMESPACES)],
                f"{TIERS[i % 6]}-{i // len(NAMESPACES)}",
                TIERS[i % 6],
                replicas[i],
            )
            for i in range(n_apps)
        ]
        apps = []
        for app in bare:
            local = [a for a in bare if a.namespace == app.namespace and a is not app]
            count = rng.randint(2, 4)
            clients = [
                rng.choice(local) if rng.random() < 0.6 else rng.choice(bare) for _ in range(count)
            ]
            apps.append(App(app.namespace, app.name, app.tier, app.replicas, tuple(clients)))
        workloads = []
        base = int(ipaddress.IPv4Address("127.1.0.1"))
        for app in apps:
            for r in range(app.replicas):
                address = str(ipaddress.IPv4Address(base + len(workloads)))
                workloads.append((app, f"{app.name}-{r}", address))
        return cls(apps, workloads)

    def documents(self) -> list[dict[str, Any]]:
        mesh = {
            "trustDomain": TD,
            "rootNamespace": ROOT,
            "mtls": "PERMISSIVE",
            "defaultPolicy": "allow",
        }
        docs = [_doc("Mesh", "default", "mesh", mesh)]
        for app, name, address in self.workloads:
            spec = {
                "serviceAccount": app.name,
                "addresses": [address],
                "ports": [{"name": p, "port": n, "protocol": p} for n, p in app.ports],
            }
            labels = {"app": app.name, "tier": app.tier}
            docs.append(_doc("Workload", app.namespace, name, spec, labels))
        return docs


def _doc(kind: str, ns: str, name: str, spec: dict[str, Any], labels: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}


class PolicyWriter:
    """AuthorizationPolicy i of a mesh; policy i is the same whatever the total count."""

    def __init__(self, topology: Topology) -> None:
        self.apps = topology.apps
        self.addresses = [address for _, _, address in topology.workloads]

    def policies(self, count: int) -> list[dict[str, Any]]:
        roots = root_policies()[: 1 if count < 50 else 5]
        return roots + [self.policy(i) for i in range(count - len(roots))]

    def policy(self, i: int, variant: int = 0) -> dict[str, Any]:
        """`variant` > 0: an edit of policy i (same app and name, new action and rules)."""
        app = random.Random(1_000_003 * i).choice(self.apps)
        rng = random.Random(1_000_003 * i + 17 * variant + 1)
        roll = rng.random()
        action, mode = ("ALLOW", "enforce") if roll < 0.78 else ("DENY", "enforce")
        if roll >= 0.90:
            action, mode = (
                ("AUDIT", "enforce") if roll < 0.94 else (rng.choice(("ALLOW", "DENY")), "dry-run")
            )
        spec: dict[str, Any] = {"selector": self.selector(rng, app), "action": action}
        if mode != "enforce":
            spec["mode"] = mode
        make = self.allow_rule if action == "ALLOW" else self.deny_rule
        spec["rules"] = [make(rng, app) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
        return _doc("AuthorizationPolicy", app.namespace, f"{app.name}-p{i:05d}", spec)

    def selector(self, rng: random.Random, app: App) -> dict[str, Any] | None:
        roll = rng.random()
        if roll < 0.90:
            return {"matchLabels": {"app": app.name}}
        if roll < 0.95:
            return {"matchLabels": {"tier": app.tier}}
        if roll < 0.98:
            other = rng.choice([a for a in self.apps if a.namespace == app.namespace])
            expr = {"key": "app", "operator": "In", "values": sorted({app.name, other.name})}
            return {"matchExpressions": [expr]}
        return None  # every workload of the namespace

    def allow_rule(self, rng: random.Random, app: App) -> dict[str, Any]:
        rule: dict[str, Any] = {}
        if rng.random() < 0.92:
            rule["from"] = [self.source(rng, app) for _ in range(rng.choice((1, 1, 1, 2)))]
        if rng.random() < 0.75:
            rule["to"] = [self.operation(rng, app)]
            if "methods" in rule["to"][0] and rng.random() < 0.1:
                rule["when"] = [{"key": "request.headers[x-tenant]", "values": ["acme", "beta-*"]}]
        return rule

    def source(self, rng: random.Random, app: App) -> dict[str, Any]:
        client = rng.choice(app.clients)
        roll = rng.random()
        if roll < 0.40:
            others = rng.sample(app.clients, k=min(len(app.clients), rng.randint(1, 3)))
            return {"identities": sorted({c.identity for c in [client, *others]})}
        if roll < 0.60:
            return {
                "workloads": {"matchLabels": {"app": client.name}, "namespaces": [client.namespace]}
            }
        if roll < 0.75:
            return {"namespaces": [client.namespace]}
        if roll < 0.85:
            return {"identities": [f"spiffe://{TD}/ns/{client.namespace}/*"]}
        if roll < 0.88:
            return {"identities": [f"*/sa/{client.name}"]}
        if roll < 0.91:
            return {"namespaces": [client.namespace], "notIdentities": [client.identity]}
        return {"ipBlocks": self.blocks(rng)}

    def blocks(self, rng: random.Random) -> list[str]:
        if rng.random() < 0.5:
            return [f"127.200.{rng.randrange(8)}.0/24"]
        return [
            f"{rng.choice(self.addresses)}/32",
            f"127.200.{rng.randrange(8)}.{rng.randrange(256)}",
        ]

    def operation(self, rng: random.Random, app: App) -> dict[str, Any]:
        if not app.is_http:
            return {"ports": [app.ports[0][0]]}
        op: dict[str, Any] = {"ports": [8080] if rng.random() < 0.8 else [8080, 9090]}
        if rng.random() < 0.8:
            op["methods"] = rng.choice((["GET"], ["GET", "HEAD"], ["GET", "POST"], ["POST", "PUT"]))
        if rng.random() < 0.7:
            op["paths"] = rng.sample(["/api/*", "/health", "/static/*", "*.js", "/v1/orders"], 2)
        if rng.random() < 0.1:
            op["notPaths"] = ["/admin/*"]
        return op

    def deny_rule(self, rng: random.Random, app: App) -> dict[str, Any]:
        roll = rng.random()
        if roll < 0.3:
            source: dict[str, Any] = {"namespaces": ["legacy", rng.choice(NAMESPACES)]}
        elif roll < 0.5:
            source = {"identities": [rng.choice(self.apps).identity]}
        elif roll < 0.65:
            source = {"identities": [f"spiffe://{TD}/ns/{rng.choice(NAMESPACES)}/*"]}
        elif roll < 0.8:
            source = {"ipBlocks": self.blocks(rng)}
        else:  # anyone with an identity but the known clients
            source = {"notIdentities": sorted({c.identity for c in app.clients})}
        rule: dict[str, Any] = {"from": [source]}
        if not app.is_http:
            rule["to"] = [{"ports": [app.ports[0][0]]}]
        elif rng.random() < 0.7:
            what, values = rng.choice(
                (
                    ("methods", ["DELETE"]),
                    ("methods", ["PUT", "PATCH"]),
                    ("paths", ["/admin/*"]),
                    ("paths", ["/debug/*", "*.php"]),
                )
            )
            rule["to"] = [{"ports": [8080, 9090], what: values}]
        return rule


def root_policies() -> list[dict[str, Any]]:
    """The handful of mesh-wide policies a platform team keeps in the root namespace."""
    specs: list[tuple[str, dict[str, Any]]] = [
        (
            "deny-debug",
            {
                "action": "DENY",
                "rules": [{"to": [{"ports": [8080, 9090], "paths": ["/debug/*", "/internal/*"]}]}],
            },
        ),
        (
            "deny-quarantined",
            {
                "action": "DENY",
                "rules": [{"from": [{"identities": [f"spiffe://{TD}/ns/legacy/sa/quarantine*"]}]}],
            },
        ),
        (
            "deny-blocked-plaintext",
            {"action": "DENY", "rules": [{"from": [{"ipBlocks": [BLOCKED_NET]}]}]},
        ),
        (
            "audit-admin",
            {"action": "AUDIT", "rules": [{"to": [{"ports": [8080], "paths": ["/admin/*"]}]}]},
        ),
        (
            "allow-monitoring-scrape",
            {
                "selector": {"matchLabels": {"tier": "frontend"}},
                "rules": [
                    {
                        "from": [{"namespaces": ["monitoring"]}],
                        "to": [{"ports": [8080], "methods": ["GET"], "paths": ["/metrics"]}],
                    },
                    {"to": [{"ports": [8080]}]},
                ],
            },
        ),
    ]
    return [_doc("AuthorizationPolicy", ROOT, name, spec) for name, spec in specs]


def requests(topology: Topology, count: int, seed: int = 11) -> list[Request]:
    """A fixed mix: callers that policies name, random callers, strangers and plaintext peers."""
    rng = random.Random(seed)
    apps = topology.apps
    out = []
    for _ in range(count):
        app, dest, _address = rng.choice(topology.workloads)
        port, protocol = rng.choice(app.ports)
        roll = rng.random()
        identity: str | None = None
        source_ip = None
        if roll < 0.55:
            identity = rng.choice(app.clients).identity
        elif roll < 0.75:
            identity = rng.choice(apps).identity
        elif roll < 0.80:
            identity = f"spiffe://{TD}/ns/legacy/sa/quarantine-{rng.randrange(9)}"
        elif roll < 0.85:
            identity = f"spiffe://partner.example.com/ns/{rng.choice(NAMESPACES)}/sa/client"
        else:
            source_ip = rng.choice(
                (
                    f"127.200.{rng.randrange(10)}.{rng.randrange(256)}",
                    f"127.250.0.{rng.randrange(256)}",
                    rng.choice(topology.workloads)[2],
                )
            )
        http: dict[str, Any] = {}
        if protocol != "tcp":
            tenant = rng.choice(("acme", "beta-7", "gamma", None))
            http = {
                "method": rng.choice(METHODS),
                "path": rng.choice(PATHS),
                "host": f"{app.name}.{app.namespace}.svc",
                "headers": {"X-Tenant": tenant} if tenant else {},
            }
        out.append(
            Request.build(
                f"{app.namespace}/{dest}", port, identity=identity, source_ip=source_ip, **http
            )
        )
    return out


# ---------------------------------------------------------------------------- loading


def load(dicts: Sequence[dict[str, Any]], file: str) -> list[Document[Any]]:
    """YAML text → SourceDocuments (with marks) → validated Documents; any error is fatal."""
    text = yaml.dump_all(dicts, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
    # generated input, not a policy author's file: the per-file input limits do not apply
    limits = InputLimits(documents=1_000_000, nodes=100_000_000, file_bytes=1 << 40)
    sources, problems = read_documents(file, text, limits)
    documents = []
    for source in sources:
        doc, found = validate_document(source)
        problems.extend(found)
        if doc is not None:
            documents.append(doc)
    if problems:
        raise SystemExit(f"generated data is invalid: {problems[0]} (+{len(problems) - 1} more)")
    return documents


# ---------------------------------------------------------------------------- naive evaluator

Verdict = tuple[bool, str, int | None, tuple[Any, ...], tuple[Any, ...]]


def engine_verdict(decision: Any) -> Verdict:
    audit = tuple((o.policy, o.rule) for o in decision.audit)
    dry = tuple((o.policy, o.decision, o.rule) for o in decision.dry_run)
    return decision.allowed, decision.policy, decision.rule, audit, dry


@dataclass(frozen=True, slots=True)
class NaivePolicy:
    namespace: str
    ref: str
    match_labels: tuple[tuple[str, str], ...] | None  # None: no selector
    match_expressions: tuple[tuple[str, str, frozenset[str]], ...]
    action: str
    dry_run: bool
    rules: tuple[CompiledRule, ...]


class NaiveEvaluator:
    """Scans every policy of the mesh per request, like Envoy's `rules` RBAC engine fed by
    istiod: does the policy select the destination (root namespace = mesh-wide; labels
    matched per request)? then its rules in order. No index of any kind; only a rule's own
    fields are matched by `CompiledRule.matches`."""

    def __init__(self, compiled: CompiledMesh) -> None:
        spec = compiled.registry.mesh.spec
        self.root, self.strict, self.deny_default = (
            spec.root_namespace,
            spec.mtls == "STRICT",
            spec.default_policy == "deny",
        )
        self.workloads: dict[str, Workload] = compiled.registry.workloads
        self.policies = [self._naive(p) for p in compiled.policies.values()]
        self.policies.sort(key=lambda p: (p.namespace, p.ref))

    @staticmethod
    def _naive(policy: Any) -> NaivePolicy:
        selector = policy.document.spec.selector
        labels = None if selector is None else tuple(selector.match_labels.items())
        exprs = (
            ()
            if selector is None
            else tuple((e.key, e.operator, frozenset(e.values)) for e in selector.match_expressions)
        )
        return NaivePolicy(
            policy.namespace,
            policy.ref,
            labels,
            exprs,
            policy.action,
            policy.mode == "dry-run",
            policy.rules,
        )

    def decide(self, req: Request) -> Verdict:
        workload = self.workloads[req.destination]
        if req.identity is None and self.strict:
            return False, Cause.MTLS_REQUIRED, None, (), ()
        namespace, labels, root = workload.namespace, workload.labels, self.root
        deny = allow = None
        has_allow = False
        audit, dry = [], []
        for p in self.policies:
            if p.namespace != namespace and p.namespace != root:
                continue
            if p.match_labels is not None and not _selects(p, labels):
                continue
            if p.dry_run:
                rule = _first(p.rules, req)
                dry.append(_dry_outcome(p, rule))
            elif p.action == "DENY":
                deny = deny or _first(p.rules, req)
            elif p.action == "ALLOW":
                has_allow = True
                allow = allow or _first(p.rules, req)
            else:
                rule = _first(p.rules, req)
                if rule is not None:
                    audit.append((p.ref, rule.index))
        dry_run = tuple(o for o in dry if o[1] != "NONE")
        extra = (tuple(audit), dry_run)
        if deny is not None:
            return (False, deny.policy, deny.index, *extra)
        if has_allow:
            return (
                (True, allow.policy, allow.index, *extra)
                if allow
                else (False, Cause.DEFAULT_DENY, None, *extra)
            )
        if self.deny_default:
            return (False, Cause.DEFAULT_DENY, None, *extra)
        return (True, Cause.DEFAULT_ALLOW, None, *extra)


def _selects(policy: NaivePolicy, labels: Any) -> bool:
    for key, value in policy.match_labels or ():
        if labels.get(key) != value:
            return False
    for key, operator, values in policy.match_expressions:
        present = key in labels
        if (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
    return True


def _first(rules: Iterable[CompiledRule], req: Request) -> CompiledRule | None:
    for rule in rules:
        if rule.matches(req):
            return rule
    return None


def _dry_outcome(policy: NaivePolicy, rule: CompiledRule | None) -> tuple[str, str, int | None]:
    index = rule.index if rule else None
    if policy.action == "ALLOW":
        return policy.ref, "ALLOW" if rule else "DENY", index
    if policy.action == "DENY":
        return policy.ref, "DENY" if rule else "ALLOW", index
    return policy.ref, "AUDIT" if rule else "NONE", index


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Timing:
    """Medians over the repetitions: wall (perf_counter), CPU (process_time), and the part of
    wall time spent in the cyclic garbage collector (left on: a server runs with it)."""

    wall: float
    cpu: float
    gc: float


_GC = {"start": 0.0, "total": 0.0}


def _gc_clock(phase: str, _info: dict[str, Any]) -> None:
    if phase == "start":
        _GC["start"] = time.perf_counter()
    else:
        _GC["total"] += time.perf_counter() - _GC["start"]


def timed(fn: Callable[[], Any], repeat: int, collect: bool = True) -> tuple[Timing, Any]:
    """Run `fn` `repeat` times (from a collected heap unless `collect` is False: a full
    collection of ~1M objects takes ~1 s); medians and the last result."""
    if _gc_clock not in gc.callbacks:
        gc.callbacks.append(_gc_clock)
    walls, cpus, gcs, result = [], [], [], None
    for _ in range(repeat):
        result = None
        if collect:
            gc.collect()
        _GC["total"] = 0.0
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        gcs.append(_GC["total"])
    med = statistics.median
    return Timing(med(walls), med(cpus), med(gcs)), result


def ours(compiled: CompiledMesh, reqs: Sequence[Request]) -> list[Any]:
    plan = compiled.plan
    return [decide(plan(req.destination), req) for req in reqs]


@dataclass
class SizeResult:
    policies: int
    rules: int
    load_s: float
    compile_s: float
    compile_gc_s: float
    recompile_ms: float
    recompile_max_ms: float
    recompile_root_ms: float
    recompile_workloads: float
    ours_per_s: float
    naive_per_s: float
    ours_cpu_per_s: float
    naive_cpu_per_s: float
    candidates: dict[str, float]
    allowed: int
    denied: int
    plan_policies: float
    checks: list[str] = field(default_factory=list)


def measure(
    topology: Topology,
    base: list[Document[Any]],
    count: int,
    reqs: list[Request],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> SizeResult:
    writer = PolicyWriter(topology)
    dicts = writer.policies(count)
    start = time.perf_counter()
    policy_docs = load(dicts, f"policies-{count}.yaml")
    load_s = time.perf_counter() - start
    documents = base + policy_docs
    reps = 3 if count >= 10_000 else 5
    compile_t, compiled = timed(lambda: compile_documents(documents), 1 if args.quick else reps)
    log(f"  {count:>6} policies: loaded in {load_s:.2f} s, compiled in {compile_t.wall:.3f} s")
    recompile = measure_recompile(writer, compiled, documents, count, reqs)
    log(f"  {count:>6} policies: recompile median {recompile[0]:.2f} ms")
    ours_t, decisions = timed(lambda: ours(compiled, reqs), args.repeat)
    naive = NaiveEvaluator(compiled)
    naive_t, verdicts = timed(lambda: [naive.decide(r) for r in reqs], 1 if count > 100 else 3)
    mismatches = [
        (req, engine_verdict(d), v)
        for req, d, v in zip(reqs, decisions, verdicts, strict=True)
        if engine_verdict(d) != v
    ]
    if mismatches:
        req, mine, theirs = mismatches[0]
        raise AssertionError(
            f"{len(mismatches)} of {len(reqs)} verdicts differ at {count} policies; first: "
            f"{req}\n  engine: {mine}\n  naive:  {theirs}"
        )
    allowed = sum(d.allowed for d in decisions)
    plan_sizes = [len(p.policies) for p in compiled.plans.values()]
    return SizeResult(
        policies=count,
        rules=sum(len(p.rules) for p in compiled.policies.values()),
        load_s=load_s,
        compile_s=compile_t.wall,
        compile_gc_s=compile_t.gc,
        recompile_ms=recompile[0],
        recompile_max_ms=recompile[1],
        recompile_root_ms=recompile[2],
        recompile_workloads=recompile[3],
        ours_per_s=len(reqs) / ours_t.wall,
        naive_per_s=len(reqs) / naive_t.wall,
        ours_cpu_per_s=len(reqs) / ours_t.cpu,
        naive_cpu_per_s=len(reqs) / naive_t.cpu,
        candidates=index_selectivity(compiled, reqs[:2000]),
        allowed=allowed,
        denied=len(decisions) - allowed,
        plan_policies=statistics.mean(plan_sizes),
        checks=[f"engine == naive on all {len(reqs)} requests", recompile[4]],
    )


def index_selectivity(compiled: CompiledMesh, reqs: Sequence[Request]) -> dict[str, float]:
    """Mean rules per decision: in the plan, and returned by each RuleIndex lookup."""
    plans = [compiled.plan(r.destination) for r in reqs]
    out = {"plan_rules": statistics.mean(sum(len(p.rules) for p in pl.policies) for pl in plans)}
    for name in ("deny", "allow", "audit"):
        out[name] = statistics.mean(
            len(getattr(pl, name).candidates(r)) for pl, r in zip(plans, reqs, strict=True)
        )
    return out


def measure_recompile(
    writer: PolicyWriter,
    compiled: CompiledMesh,
    documents: list[Document[Any]],
    count: int,
    reqs: Sequence[Request],
) -> tuple[float, float, float, float, str]:
    """Median/max ms of ~20 single-policy edits (each one applied to the same snapshot), the
    ms of editing one root-namespace (mesh-wide) policy, mean workloads rebuilt, and a check
    that the incremental snapshot decides exactly like a full compile of the edited documents."""
    n_app = count - (1 if count < 50 else 5)
    picks = random.Random(count).sample(range(n_app), k=min(20, n_app))
    edits = load([writer.policy(i, variant=1) for i in picks], "edits.yaml")
    times, touched = [], []
    gc.collect()
    for edit in edits:
        elapsed, (_, affected) = timed(
            lambda e=edit: compiled.with_policy_changes(upserts=[e]), 3, False
        )
        times.append(elapsed.wall * 1e3)
        touched.append(len(affected))
    root_edit = root_policies()[0]
    root_edit["spec"]["rules"][0]["to"][0]["paths"].append("/pprof/*")
    root_doc = load([root_edit], "root-edit.yaml")[0]
    root_s, _ = timed(lambda: compiled.with_policy_changes(upserts=[root_doc]), 3, False)
    # incremental == full: apply the first edit, compare with compiling from scratch
    incremental, _ = compiled.with_policy_changes(upserts=[edits[0]])
    edited = [edits[0] if d.key == edits[0].key else d for d in documents]
    assert any(d.key == edits[0].key for d in documents), "an edit must change a policy"
    full = compile_documents(edited)
    differ = sum(
        engine_verdict(a) != engine_verdict(b)
        for a, b in zip(ours(incremental, reqs), ours(full, reqs), strict=True)
    )
    if differ:
        raise AssertionError(f"incremental recompile decides {differ} requests unlike a full one")
    check = f"incremental == full compile on all {len(reqs)} requests after an edit"
    return (
        statistics.median(times),
        max(times),
        root_s.wall * 1e3,
        statistics.mean(touched),
        check,
    )


# ---------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
                platform.processor() or "unknown",
            )
    except OSError:
        model = platform.processor() or "unknown"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "pinned_cpu": pin_one_core(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def pin_one_core() -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def verdicts(results: list[SizeResult], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Issue #2's targets, measured at the largest size: key → label, value, target, pass."""
    first, last = results[0], results[-1]
    quick = " [quick: not the issue's sizes]" if args.quick else ""
    rows = {
        "cost_ratio": (
            f"decision cost {last.policies}/{first.policies} policies ≤ {{}}×",
            first.ours_per_s / last.ours_per_s,
        ),
        "decisions_per_s": (
            f"decisions/s at {last.policies} policies on one core ≥ {{:,}}",
            last.ours_per_s,
        ),
        "compile_s": (
            f"full compile {last.policies} policies × {args.workloads} workloads ≤ {{}} s",
            last.compile_s,
        ),
        "recompile_ms": (
            f"one-change recompile at {last.policies} policies ≤ {{}} ms",
            last.recompile_ms,
        ),
    }
    out = {}
    for key, (label, value) in rows.items():
        target = TARGETS[key]
        ok = value >= target if key == "decisions_per_s" else value <= target
        out[key] = {
            "label": label.format(target) + quick,
            "value": value,
            "target": target,
            "pass": ok,
        }
    return out


def print_report(
    info: dict[str, Any], args: argparse.Namespace, results: list[SizeResult], n_requests: int
) -> None:
    print("meshwarden policy-engine benchmark" + (" (--quick)" if args.quick else ""))
    print(f"machine : {info['cpu']}, {info['cores']} cores (pinned to cpu {info['pinned_cpu']})")
    print(f"python  : {info['python']}    date: {info['date']}")
    if info["load_average"]:
        now = " ".join(f"{x:.2f}" for x in os.getloadavg())
        was = " ".join(f"{x:.2f}" for x in info["load_average"])
        print(f"load avg: {was} at start, {now} at end (other work on this shared machine)")
    print(
        f"mesh    : {args.workloads} workloads, {len(NAMESPACES)} namespaces, PERMISSIVE, "
        f"defaultPolicy allow; {n_requests:,} requests per evaluator"
    )
    print()
    head = (
        f"{'policies':>8} {'rules':>6} {'pol/plan':>8} {'load s':>7} {'compile s':>9} {'(gc)':>5} "
        f"{'recomp ms':>9} {'(max)':>7} {'root ms':>8} {'ours dec/s':>11} {'naive dec/s':>11} "
        f"{'speed-up':>8} {'allow/deny':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.policies:>8,} {r.rules:>6,} {r.plan_policies:>8.1f} {r.load_s:>7.2f} "
            f"{r.compile_s:>9.3f} {r.compile_gc_s:>5.2f} "
            f"{r.recompile_ms:>9.2f} {r.recompile_max_ms:>7.2f} "
            f"{r.recompile_root_ms:>8.1f} {r.ours_per_s:>11,.0f} {r.naive_per_s:>11,.0f} "
            f"{r.ours_per_s / r.naive_per_s:>7.1f}× {r.allowed:>5}/{r.denied:<5}"
        )
    print()
    print(
        "pol/plan: mean policies selecting a workload. (gc): seconds of the compile spent in\n"
        "Python's cyclic GC (left on). recomp: median (max) of 20 single-policy edits. root ms:\n"
        "editing one root-namespace policy (rebuilds every plan). dec/s: one core, median of "
        f"{args.repeat}\npasses over the mix (naive: 1 pass above 100 policies). "
        "speed-up: ours/naive."
    )
    print(
        "\nby CPU time (process_time), ours / naive dec/s:",
        ", ".join(
            f"{r.policies:,}: {r.ours_cpu_per_s:,.0f} / {r.naive_cpu_per_s:,.0f}" for r in results
        ),
    )
    print("index selectivity, mean rules per decision — in the plan: deny/allow/audit candidates:")
    for r in results:
        c = r.candidates
        print(
            f"  {r.policies:>6,}: {c['plan_rules']:6.1f}: {c['deny']:5.1f} / {c['allow']:5.1f} "
            f"/ {c['audit']:5.1f}"
        )
    base = results[0]
    print(
        "\ncost per decision relative to",
        f"{base.policies} policies:",
        ", ".join(f"{r.policies:,}: {base.ours_per_s / r.ours_per_s:.2f}×" for r in results),
        "(wall);",
        ", ".join(f"{base.ours_cpu_per_s / r.ours_cpu_per_s:.2f}×" for r in results[1:]),
        "(CPU time)",
    )
    print("\nchecks:")
    for check in dict.fromkeys(c for r in results for c in r.checks):
        print(f"  ok  {check}")
    print("\ntargets (issue #2):")
    for row in verdicts(results, args).values():
        value = row["value"]
        shown = f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"
        print(f"  {'PASS' if row['pass'] else 'MISS'}  {row['label']}: {shown}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 workloads, up to 1,000 policies")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workloads", type=int, help="workloads (default 1000; quick 100)")
    parser.add_argument("--sizes", help="comma-separated policy counts")
    parser.add_argument("--requests", type=int, help="requests in the mix (12,000; quick 4,000)")
    parser.add_argument("--repeat", type=int, help="timed passes over the mix (default 5; quick 3)")
    args = parser.parse_args(argv)
    args.workloads = args.workloads or (100 if args.quick else 1000)
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.requests = args.requests or (4_000 if args.quick else 12_000)
    started = time.perf_counter()
    default_sizes = "10,100,1000" if args.quick else "10,100,1000,10000"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    log = (lambda s: print(s, file=sys.stderr)) if args.json else (lambda s: print(s, flush=True))
    info = machine()
    topology = Topology.generate(args.workloads)
    start = time.perf_counter()
    base = load(topology.documents(), "workloads.yaml")
    log(
        f"generated {len(topology.apps)} apps, {args.workloads} workloads "
        f"(loaded in {time.perf_counter() - start:.2f} s)"
    )
    reqs = requests(topology, args.requests)
    results = [measure(topology, base, n, reqs, args, log) for n in sizes]
    if args.json:
        json.dump(
            {
                "machine": info,
                "workloads": args.workloads,
                "requests": len(reqs),
                "results": [r.__dict__ for r in results],
                "targets": verdicts(results, args),
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print()
        print_report(info, args, results, len(reqs))
        print(f"\nwhole run: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
