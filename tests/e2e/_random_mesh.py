"""Random policy sets and requests over a small fixed mesh (deterministic per seed)."""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

TD = "example.org"
NAMESPACES = ["a", "b"]
APPS = ["x", "y"]
IDS = [f"spiffe://{TD}/ns/{ns}/sa/{app}" for ns in NAMESPACES for app in APPS]
ID_PATTERNS = [*IDS, f"spiffe://{TD}/ns/a/*", "*/sa/x", "*"]
CIDRS = ["127.0.1.0/28", "127.0.1.4/32", "127.0.2.0/24", "10.0.0.0/8"]
SOURCE_IPS = ["127.0.1.1", "127.0.1.4", "127.0.1.20", "127.0.2.9"]
PATHS = ["/api/*", "/health", "*.js", "/admin/*", "/api/{*}", "/admin/{**}", "/{*}/x/{**}"]
REQUEST_PATHS = [
    "/api/items",
    "/health",
    "/static/app.js",
    "/admin/x",
    "/",
    "/api//x/../y",
    "/health?probe=1",
    "/%61dmin/x",
    "/api/a/b",
    "/a/x/",
    "/admin/a=b/c",
]
DESTINATION = "a/x-1"
ISSUER = "https://idp.diff.test"
GROUPS = ["admin", "dev", "ops"]
SUBJECTS = ["alice", "bob"]


def mesh_documents(
    rng: random.Random, destination_address: str, target_port: int, jwks: str
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {
                "trustDomain": TD,
                "mtls": rng.choice(["STRICT", "PERMISSIVE"]),
                "defaultPolicy": rng.choice(["allow", "deny"]),
            },
        }
    ]
    n = 0
    for ns in NAMESPACES:
        for app in APPS:
            for i in (1, 2):
                n += 1
                ref = f"{ns}/{app}-{i}"
                address = destination_address if ref == DESTINATION else f"127.0.3.{n}"
                docs.append(
                    {
                        "kind": "Workload",
                        "metadata": {"name": f"{app}-{i}", "namespace": ns, "labels": {"app": app}},
                        "spec": {
                            "serviceAccount": app,
                            "addresses": [address],
                            "ports": [
                                {"port": 8080, "targetPort": target_port, "protocol": "http"}
                            ],
                        },
                    }
                )
    docs.append(
        {
            "kind": "JwtIssuer",
            "metadata": {"name": "idp", "namespace": "meshwarden-system"},
            "spec": {"issuer": ISSUER, "jwks": jwks},
        }
    )
    for i in range(rng.randint(1, 6)):
        docs.append(
            {
                "kind": "AuthorizationPolicy",
                "metadata": {
                    "name": f"p{i}",
                    "namespace": rng.choice([*NAMESPACES, "meshwarden-system"]),
                },
                "spec": _policy(rng),
            }
        )
    for doc in docs:
        doc["apiVersion"] = "meshwarden.io/v1alpha1"
    docs[0]["spec"].update(_monitor_mode(docs))
    _mtls_overrides(docs)
    return docs


def _mtls_overrides(docs: list[dict[str, Any]]) -> None:
    """Per-namespace / per-workload / per-port mTLS modes for about one mesh in three, drawn
    from the documents' checksum (like monitor mode), so the requests stay what they were."""
    draw = zlib.crc32(json.dumps(docs, sort_keys=True).encode()) // 12 % 9
    flip = {"STRICT": "PERMISSIVE", "PERMISSIVE": "STRICT"}[docs[0]["spec"]["mtls"]]
    destination = next(
        d
        for d in docs
        if d["kind"] == "Workload"
        and f"{d['metadata']['namespace']}/{d['metadata']['name']}" == DESTINATION
    )
    if draw == 0:
        namespaces = docs[0]["spec"].setdefault("namespaces", {})
        namespaces.setdefault(DESTINATION.split("/")[0], {})["mtls"] = flip
    elif draw == 1:
        destination["spec"]["mtls"] = flip
    elif draw == 2:  # the workload flips, its port flips back: the port's mode wins
        destination["spec"]["mtls"] = flip
        destination["spec"]["ports"][0]["mtls"] = docs[0]["spec"]["mtls"]


def _monitor_mode(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Monitor mode for about one mesh in four: mesh-wide, or the destination's namespace, or
    every namespace but the destination's. Drawn from the documents' checksum, not from `rng`,
    so the requests drawn after the mesh stay what they were before monitor mode existed."""
    draw = zlib.crc32(json.dumps(docs, sort_keys=True).encode()) % 12
    namespace = DESTINATION.split("/")[0]
    return (
        [
            {"defaultMode": "dry-run"},
            {"namespaces": {namespace: {"defaultMode": "dry-run"}}},
            {"defaultMode": "dry-run", "namespaces": {namespace: {"defaultMode": "enforce"}}},
        ][draw]
        if draw < 3
        else {}
    )


def _some(rng: random.Random, values: list[str]) -> list[str]:
    return rng.sample(values, rng.randint(1, 2))


def _source(rng: random.Random) -> dict[str, Any]:
    makers = {
        "identities": lambda: _some(rng, ID_PATTERNS),
        "notIdentities": lambda: _some(rng, IDS),
        "namespaces": lambda: _some(rng, NAMESPACES),
        "workloads": lambda: {"matchLabels": {"app": rng.choice(APPS)}},
        "ipBlocks": lambda: _some(rng, CIDRS),
        "notIpBlocks": lambda: _some(rng, CIDRS),
        "jwt": lambda: _jwt_constraint(rng),
    }
    if rng.random() < 0.3:  # tokens deserve their share: their translation is the most intricate
        return {"jwt": _jwt_constraint(rng)}
    keys = rng.sample(sorted(makers), rng.choice([1, 1, 2]))
    return {k: makers[k]() for k in keys}


def _jwt_constraint(rng: random.Random) -> dict[str, Any]:
    makers = {
        "issuers": lambda: [rng.choice([ISSUER, "https://other.test"])],
        "subjects": lambda: _some(rng, [*SUBJECTS, "al*"]),
        "claims": lambda: rng.choice([{"groups": _some(rng, GROUPS)}, {"realm.role": ["ops"]}]),
    }
    keys = rng.sample(sorted(makers), rng.randint(0, 2))
    return {k: makers[k]() for k in keys}


def _operation(rng: random.Random) -> dict[str, Any]:
    makers = {
        "methods": lambda: _some(rng, ["GET", "POST"]),
        "notMethods": lambda: ["DELETE"],
        "paths": lambda: _some(rng, PATHS),
        "notPaths": lambda: _some(rng, PATHS),
    }
    keys = rng.sample(sorted(makers), rng.randint(0, 2))
    return {k: makers[k]() for k in keys}


def _condition(rng: random.Random) -> dict[str, Any]:
    return rng.choice(
        [
            {"key": "request.headers[x-tenant]", "values": _some(rng, ["acme", "beta-*"])},
            {"key": "request.headers[x-tenant]", "notValues": ["blocked"]},
            {"key": "source.ip", "values": _some(rng, CIDRS)},
            {"key": "source.namespace", "values": _some(rng, NAMESPACES)},
            {"key": "request.method", "values": ["GET"]},
            {"key": "request.jwt.claims[groups]", "values": _some(rng, GROUPS)},
            {"key": "request.jwt.claims[realm.role]", "notValues": ["ops"]},
        ]
    )


def _policy(rng: random.Random) -> dict[str, Any]:
    rules = []
    for _ in range(rng.randint(0, 3)):
        rule: dict[str, Any] = {}
        if rng.random() < 0.8:
            rule["from"] = [_source(rng) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.6:
            rule["to"] = [_operation(rng) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.3:
            rule["when"] = [_condition(rng)]
        rules.append(rule)
    spec: dict[str, Any] = {
        "action": rng.choice(["ALLOW", "ALLOW", "DENY", "AUDIT"]),
        "rules": rules,
    }
    if rng.random() < 0.6:
        spec["selector"] = {"matchLabels": {"app": rng.choice(APPS)}}
    if rng.random() < 0.15:
        spec["mode"] = "dry-run"
    return spec


def random_request(rng: random.Random) -> dict[str, Any]:
    identified = rng.random() < 0.65
    return {
        "identity": rng.choice(IDS) if identified else None,
        "source_ip": rng.choice(SOURCE_IPS),
        "method": rng.choice(["GET", "POST", "DELETE"]),
        "path": rng.choice(REQUEST_PATHS),
        "tenant": rng.choice([None, "acme", "beta-2", "blocked"]),
        "claims": rng.choice([None, _claims(rng)]),
    }


def _claims(rng: random.Random) -> dict[str, Any]:
    issuer = ISSUER if rng.random() < 0.9 else "https://unknown.test"  # → 401 / jwt:invalid
    claims: dict[str, Any] = {"iss": issuer, "sub": rng.choice(SUBJECTS)}
    if rng.random() < 0.7:
        groups = _some(rng, GROUPS)
        claims["groups"] = groups if rng.random() < 0.7 else groups[0]
    if rng.random() < 0.4:
        claims["realm"] = {"role": rng.choice(["ops", "dev"])}
    return claims
