"""The verdict behind a request, read back from the dynamic metadata Envoy's RBAC filters (or
the ext_authz answer) recorded — as the flow log does. Keys are Envoy's: `<rules_stat_prefix>
enforced_engine_result` / `..._effective_policy_id`, shadow keys for dry-run."""

from __future__ import annotations

from typing import Any

import pytest
from meshwarden.xds._decisions import Verdict, split_action, verdict_from_envoy

RBAC = "envoy.filters.http.rbac"


def _rbac(**fields: str) -> dict[str, dict[str, Any]]:
    return {RBAC: fields}


CASES = [
    pytest.param(
        _rbac(
            authz_deny_enforced_engine_result="denied",
            authz_deny_enforced_effective_policy_id="shop/no-secrets#2",
        ),
        403,
        Verdict("deny", "shop/no-secrets", 2),
        id="explicit-deny",
    ),
    pytest.param(
        _rbac(
            authz_deny_enforced_engine_result="allowed",
            authz_deny_enforced_effective_policy_id="allow:no-deny-rule",
            authz_allow_enforced_engine_result="allowed",
            authz_allow_enforced_effective_policy_id="shop/reads#0",
        ),
        200,
        Verdict("allow", "shop/reads", 0),
        id="allow-after-deny-stage",
    ),
    pytest.param(
        _rbac(
            authz_allow_enforced_engine_result="denied",
            authz_allow_enforced_effective_policy_id="default:deny",
        ),
        403,
        Verdict("deny", "default:deny"),
        id="implicit-deny-is-named",
    ),
    pytest.param(
        _rbac(
            authz_allow_enforced_engine_result="allowed",
            authz_allow_enforced_effective_policy_id="default:allow",
        ),
        200,
        Verdict("allow", "default:allow"),
        id="implicit-allow-is-named",
    ),
    pytest.param({}, 401, Verdict("deny", "jwt:invalid"), id="token-rejected-before-rbac"),
    pytest.param(
        _rbac(
            authz_allow_enforced_engine_result="allowed",
            authz_allow_enforced_effective_policy_id="shop/reads#1",
            dryrun_deny_shadow_engine_result="denied",
            dryrun_deny_shadow_effective_policy_id="shop/lockdown#0",
        ),
        200,
        Verdict("allow", "shop/reads", 1, "deny", "shop/lockdown"),
        id="dry-run-deny",
    ),
    pytest.param(
        _rbac(
            authz_allow_enforced_engine_result="allowed",
            authz_allow_enforced_effective_policy_id="shop/reads#1",
            dryrun_allow_shadow_engine_result="denied",
            dryrun_allow_shadow_effective_policy_id="dry-run:default-deny",
        ),
        200,
        Verdict("allow", "shop/reads", 1, "deny", "default:deny"),
        id="dry-run-allow-policies-admit-nothing",
    ),
    pytest.param(
        _rbac(
            authz_allow_enforced_engine_result="denied",
            authz_allow_enforced_effective_policy_id="default:deny",
            dryrun_allow_shadow_engine_result="allowed",
            dryrun_allow_shadow_effective_policy_id="shop/next#4",
        ),
        403,
        Verdict("deny", "default:deny", None, "allow", "shop/next"),
        id="dry-run-allow-would-admit",
    ),
    pytest.param(
        {"envoy.filters.http.ext_authz": {"decision": "deny", "policy": "shop/x", "rule": 3.0}},
        403,
        Verdict("deny", "shop/x", 3),
        id="ext-authz-answer",
    ),
    pytest.param({}, 403, Verdict("deny", "authz:unavailable"), id="ext-authz-down-fails-closed"),
]


@pytest.mark.parametrize(("metadata", "status", "expected"), CASES)
def test_the_verdict_is_read_back_from_envoys_metadata(
    metadata: dict[str, dict[str, Any]], status: int, expected: Verdict
) -> None:
    assert verdict_from_envoy(metadata, status) == expected


def test_ext_authz_metadata_round_trips() -> None:
    verdict = Verdict("allow", "shop/reads", 0, "deny", "shop/lockdown")
    assert Verdict.from_metadata(verdict.to_metadata()) == verdict
    assert "dry_run_decision" not in Verdict("deny", "default:deny").to_metadata()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shop/a#12", ("shop/a", 12)),
        ("default:deny", ("default:deny", None)),
        ("ns/with#hash#3", ("ns/with#hash", 3)),
        ("ns/x#y", ("ns/x#y", None)),
    ],
)
def test_action_names_split_into_policy_and_rule(
    name: str, expected: tuple[str, int | None]
) -> None:
    assert split_action(name) == expected
