"""ext_authz remembers decisions: a repeated Check is answered without deciding again, yet the
answer is always the engine's own for that request — whatever headers, identities and paths
vary, and across a reload of the policies."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import yaml
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from meshwarden.engine import Cause, CompiledMesh, Effect, check_documents, decide, parse_text
from meshwarden.xds._check import CheckAttributes, decode_check, request_of
from meshwarden.xds._decision_cache import condition_headers
from meshwarden.xds._decisions import Verdict
from meshwarden.xds._ext_authz import Authorization, verdict_of
from meshwarden.xds._ext_authz_filter import PORT_HEADER
from meshwarden.xds._wire import decode, last, struct_value

TD = "example.org"
WORKLOAD = "a/api"
CALLERS = [f"spiffe://{TD}/ns/b/sa/{name}" for name in ("client", "batch", "other")]

# clients may read in production; batch may write anywhere but /admin; nobody reaches /admin
# from dev — the rules read the identity, method, path and the x-env header
POLICIES: list[dict[str, Any]] = [
    {
        "selector": {"matchLabels": {"app": "api"}},
        "rules": [
            {
                "from": [{"identities": [CALLERS[0]]}],
                "to": [{"methods": ["GET"]}],
                "when": [{"key": "request.headers[x-env]", "values": ["prod"]}],
            },
            {"from": [{"identities": [CALLERS[1]]}], "to": [{"notPaths": ["/admin*"]}]},
        ],
    },
    {
        "selector": {"matchLabels": {"app": "api"}},
        "action": "DENY",
        "rules": [
            {
                "to": [{"paths": ["/admin*"]}],
                "when": [{"key": "request.headers[x-env]", "notValues": ["prod"]}],
            }
        ],
    },
]


def _mesh(policies: list[dict[str, Any]]) -> CompiledMesh:
    docs: list[dict[str, Any]] = [
        {
            "kind": "Mesh",
            "metadata": {"name": "m"},
            "spec": {"trustDomain": TD, "enforcement": "ext-authz"},
        },
        {
            "kind": "Workload",
            "metadata": {"name": "api", "namespace": "a", "labels": {"app": "api"}},
            "spec": {"ports": [{"port": 8080, "protocol": "http"}]},
        },
        *(
            {"kind": "AuthorizationPolicy", "metadata": {"name": f"p{i}", "namespace": "a"}}
            | {"spec": spec}
            for i, spec in enumerate(policies)
        ),
    ]
    text = yaml.safe_dump_all([{"apiVersion": "meshwarden.io/v1alpha1"} | d for d in docs])
    documents, problems = parse_text(text)
    compiled, found = check_documents(documents)
    assert compiled is not None and not problems, [*problems, *map(str, found)]
    return compiled


MESH = _mesh(POLICIES)


def _check(principal: str, method: str, path: str, headers: dict[str, str]) -> CheckAttributes:
    http = AttributeContextHttpRequest(method=method, path=path, host="api", headers=headers)
    peer = AttributeContextPeer(
        principal=principal,
        address=Address(socket_address=SocketAddress(address="10.1.2.3", port_value=40000)),
    )
    request = AttributeContextRequest(http=http)
    return decode_check(
        bytes(CheckRequest(attributes=AttributeContext(source=peer, request=request)))
    )


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((PORT_HEADER, "8080"),)


def _answers(authorization: Authorization, *checks: CheckAttributes) -> list[Verdict]:
    async def ask() -> list[bytes]:
        return [await authorization.check(c, _Context()) for c in checks]

    metadata = (last(decode(answer), 4) for answer in asyncio.run(ask()))  # dynamic_metadata
    return [Verdict.from_metadata(struct_value(m)) for m in metadata]


def _answer(authorization: Authorization, check: CheckAttributes) -> Verdict:
    [verdict] = _answers(authorization, check)
    return verdict


def _engine(mesh: CompiledMesh, check: CheckAttributes) -> Verdict:
    plan = mesh.plan(WORKLOAD)
    return verdict_of(plan, decide(plan, request_of(check, WORKLOAD, 8080)))


def test_a_repeated_check_is_answered_from_memory_whatever_its_request_id() -> None:
    authorization = Authorization(lambda context, metadata: MESH.plan(WORKLOAD))
    for request_id in ("1", "2", "3"):
        check = _check(CALLERS[0], "GET", "/items", {"x-env": "prod", "x-request-id": request_id})
        assert _answer(authorization, check).decision == "allow"
    assert (authorization.cache.misses, authorization.cache.hits) == (1, 2)


def test_only_headers_a_condition_reads_are_part_of_the_key() -> None:
    assert condition_headers(MESH.plan(WORKLOAD)) == ("x-env",)


def test_after_a_reload_the_new_policies_decide() -> None:
    meshes = [MESH]
    authorization = Authorization(lambda context, metadata: meshes[-1].plan(WORKLOAD))
    check = _check(CALLERS[1], "POST", "/items", {})
    assert _answer(authorization, check) == Verdict(Effect.ALLOW, "a/p0", 1)
    allow, deny = copy.deepcopy(POLICIES)
    del allow["rules"][1]  # batch's rule is gone: nothing allows it any more
    meshes.append(_mesh([allow, deny]))
    assert _answer(authorization, check) == Verdict(Effect.DENY, Cause.DEFAULT_DENY)


requests = st.tuples(
    st.sampled_from(CALLERS),
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["/items", "/admin", "/admin/users", "/Admin"]),
    st.fixed_dictionaries(
        {},
        optional={
            "x-env": st.sampled_from(["prod", "dev", ""]),
            "x-request-id": st.text("0123456789abcdef", min_size=1, max_size=8),
        },
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(requests, min_size=1, max_size=12))
def test_every_answer_is_the_engines_own_decision(sequence: list[Any]) -> None:
    authorization = Authorization(lambda context, metadata: MESH.plan(WORKLOAD))
    checks = [_check(*request) for request in sequence]
    assert _answers(authorization, *checks) == [_engine(MESH, check) for check in checks]
