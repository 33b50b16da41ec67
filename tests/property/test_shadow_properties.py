"""The indexed shadowed-rule analysis reports exactly what a pairwise scan in rule order reports
(hypothesis: random policies over a small vocabulary, so rules often cover one another)."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshwarden.engine import CompiledMesh, check_documents, compile_documents, parse_text
from meshwarden.engine._shadow import covers

TD = "example.org"
IDS = [f"spiffe://{TD}/ns/{ns}/sa/{sa}" for ns in ("a", "b") for sa in ("x", "y")]
ID_PATTERNS = [*IDS, f"spiffe://{TD}/ns/a/*", f"spiffe://{TD}/ns/*", "*/sa/x", "*/x", "*"]
PATHS = ["/api/*", "/api/v1/*", "/health", "*.js", "*/app.js", "/api/v1/x", "*"]


def some(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True)


source = st.fixed_dictionaries(
    {},
    optional={
        "identities": some(ID_PATTERNS),
        "namespaces": some(["a", "b", "*"]),
        "notIdentities": some(IDS[:1]),
        "workloads": st.builds(lambda a: {"matchLabels": {"app": a}}, st.sampled_from(["x", "y"])),
    },
)
operation = st.fixed_dictionaries(
    {},
    optional={
        "ports": some(["8080", "8081", "8080-8081"]),
        "paths": some(PATHS),
        "methods": some(["GET", "POST"]),
        "hosts": some(["a.example", "*.example"]),
    },
)
condition = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["request.headers[x-t]", "source.namespace"]),
        "values": some(["a", "b"]),
    }
)
rule = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(source, max_size=2),
        "to": st.lists(operation, max_size=2),
        "when": st.lists(condition, max_size=2),
    },
)
policy = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["ALLOW", "ALLOW", "DENY"]),
        "rules": st.lists(rule, min_size=1, max_size=4),
    },
    optional={"selector": st.just({"matchLabels": {"app": "x"}})},
)

HTTP_PORTS = [{"port": 8080, "protocol": "http"}, {"port": 8081, "protocol": "http"}]
PLACES = [("a", "x"), ("a", "y"), ("b", "x")]
BASE = [
    {"kind": "Mesh", "metadata": {"name": "m"}, "spec": {"trustDomain": TD}},
    *(
        {
            "kind": "Workload",
            "metadata": {"name": f"{app}-1", "namespace": ns, "labels": {"app": app}},
            "spec": {"serviceAccount": app, "addresses": [f"127.0.9.{n}"], "ports": HTTP_PORTS},
        }
        for n, (ns, app) in enumerate(PLACES, start=1)
    ),
]


def documents_of(specs: list[dict]) -> list | None:
    policies = [
        {"kind": "AuthorizationPolicy", "metadata": {"name": f"p{i}", "namespace": "a"}, "spec": s}
        for i, s in enumerate(specs)
    ]
    docs = [*BASE, *policies]
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    documents, problems = parse_text(yaml.safe_dump_all(docs, sort_keys=False))
    return None if problems else documents


def pairwise(mesh: CompiledMesh) -> list[str]:
    """Rule by rule in (namespace, name, index) order: the first other rule, of the same action
    and earlier or a DENY rule shadowing an ALLOW rule, whose policy selects at least as many
    workloads and that covers it."""
    enforced = sorted(
        (p for p in mesh.policies.values() if not p.dry_run and p.action != "AUDIT" and p.targets),
        key=lambda p: (p.namespace, p.name),
    )
    ranked = [((n, r.index), r, p) for n, p in enumerate(enforced) for r in p.rules]
    found = []
    for position, rule, pol in ranked:
        for rank, other, rival in ranked:
            earlier_same = rival.action == pol.action and rank < position
            deny_first = rival.action == "DENY" and pol.action == "ALLOW"
            if other is rule or not (earlier_same or deny_first):
                continue
            if rival.targets >= pol.targets and covers(other, rule):
                found.append(f"{rule.location}: rule {rule.index} of {pol.ref} by {other.name}")
                break
    return sorted(found)


def indexed(documents: list) -> list[str]:
    """The shadow warnings `check_documents` reports, in the same shape."""
    out = []
    for d in check_documents(documents)[1]:
        if "fully shadowed" in d.message:
            head = d.message.split(" is fully shadowed")[0]
            by = d.message.rsplit("by rule ", 1)[1].removesuffix(" first")
            out.append(f"{d.location}: {head} by {by}")
    return sorted(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(policy, min_size=1, max_size=6))
def test_indexed_analysis_finds_the_same_shadowing_rule_as_a_pairwise_scan(
    specs: list[dict],
) -> None:
    documents = documents_of(specs)
    if documents is None:
        return
    assert indexed(documents) == pairwise(compile_documents(documents))
