"""The policy version on decision spans changes with what decides a workload's requests and
with nothing else, so a span leads to the one push that installed its rules."""

from __future__ import annotations

from typing import Any

import yaml
from meshwarden.engine import CompiledMesh, check_documents, parse_text
from meshwarden.xds._tracing import policy_version

WORKLOADS = [
    {"kind": "Mesh", "metadata": {"name": "m"}, "spec": {"trustDomain": "example.org"}},
    *(
        {
            "kind": "Workload",
            "metadata": {"name": name, "namespace": "a", "labels": {"app": name}},
            "spec": {"ports": [{"port": 8080, "protocol": "http"}]},
        }
        for name in ("api", "web")
    ),
]


def _policy(name: str, app: str, methods: list[str]) -> dict[str, Any]:
    return {
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "a"},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "rules": [{"to": [{"methods": methods}]}],
        },
    }


def _mesh(*docs: dict[str, Any]) -> CompiledMesh:
    text = yaml.safe_dump_all(
        [{"apiVersion": "meshwarden.io/v1alpha1", **d} for d in (*WORKLOADS, *docs)],
        sort_keys=False,
    )
    documents, problems = parse_text(text)
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, [str(d) for d in found]
    return compiled


def test_a_change_to_a_workloads_policy_changes_only_its_version() -> None:
    before = _mesh(_policy("api-reads", "api", ["GET"]), _policy("web-reads", "web", ["GET"]))
    after = _mesh(
        _policy("api-reads", "api", ["GET", "POST"]), _policy("web-reads", "web", ["GET"])
    )
    assert policy_version(after, "a/api") != policy_version(before, "a/api")
    assert policy_version(after, "a/web") == policy_version(before, "a/web")


def test_the_same_documents_give_the_same_version_and_workloads_differ() -> None:
    one = _mesh(_policy("api-reads", "api", ["GET"]))
    again = _mesh(_policy("api-reads", "api", ["GET"]))
    assert policy_version(one, "a/api") == policy_version(again, "a/api")
    assert policy_version(one, "a/api") != policy_version(one, "a/web")
    assert len(policy_version(one, "a/api")) == 16


def test_who_is_who_changes_every_version() -> None:
    base = _mesh(_policy("api-reads", "api", ["GET"]))
    WORKLOADS[2]["spec"]["ports"].append({"port": 9090, "protocol": "http"})
    try:
        moved = _mesh(_policy("api-reads", "api", ["GET"]))
    finally:
        WORKLOADS[2]["spec"]["ports"].pop()
    assert policy_version(moved, "a/api") != policy_version(base, "a/api")
