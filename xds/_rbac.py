"""An AuthorizationPlan → Envoy RBAC filter configs built on the unified matcher API.

For the mTLS filter chain: an `exact_match_map` on the peer's URI SAN (one O(1) lookup) whose
entries list, in policy order, only the rules that can match that identity; identities outside
the map fall to a short list of the namespace/wildcard/any rules. For the plaintext chain (only
under PERMISSIVE): the IP-fallback rules. DENY and ALLOW need two filters (one action each);
AUDIT is a third, with LOG actions; dry-run policies go into each filter's shadow matcher.
Every action is named after its source rule (`ns/name#index`), so Envoy's
`rbac_access_denied_matched_policy[...]` and the filter metadata point at the YAML.

The filters depend only on the plan's policies and the mesh's default policy (not on the
workload they guard), so `InboundRbac` translates them once per distinct plan content, port
and branch, and every workload with an equal plan (an app's replicas) shares the same objects
and so their encoded bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshwarden.engine import (
    Action,
    AuthorizationPlan,
    Cause,
    CompiledPolicy,
    CompiledRule,
    Effect,
    RuleIndex,
)
from meshwarden.xds._decisions import (
    DRY_ALLOW_PREFIX,
    DRY_DEFAULT_DENY,
    DRY_DENY_PREFIX,
    DRY_NO_DENY,
    NO_AUDIT,
    NO_DENY,
    RULES_STAT_PREFIX,
)
from meshwarden.xds._encode import SharedConfig
from meshwarden.xds._envoy import extension
from meshwarden.xds._predicates import TRUE, URI_SAN, rule_predicate

Matcher = dict[str, Any]
_ACTION_TYPE = "type.googleapis.com/envoy.config.rbac.v3.Action"


def action(name: str, verdict: str) -> dict[str, Any]:
    typed = {"@type": _ACTION_TYPE, "name": name, "action": verdict}
    return {"action": {"name": "envoy.filters.rbac.action", "typedConfig": typed}}


def _rule_list(
    rules: Sequence[CompiledRule],
    port: int,
    identified: bool,
    verdict: str,
    fallback: dict[str, Any],
) -> dict[str, Any]:
    matchers = []
    for rule in rules:
        predicate = rule_predicate(rule, port, identified)
        if predicate is not None:
            matchers.append({"predicate": predicate, "onMatch": action(rule.name, verdict)})
    if not matchers:
        return fallback
    return {"matcher": {"matcherList": {"matchers": matchers}, "onNoMatch": fallback}}


def _identity_matcher(
    index: RuleIndex, port: int, verdict: str, fallback: dict[str, Any]
) -> Matcher:
    rest = _rule_list(index.unkeyed_identity_rules(), port, True, verdict, fallback)
    entries = {}
    for identity in index.identity_keys():
        entries[identity] = _rule_list(index.for_peer(identity), port, True, verdict, fallback)
    if not entries:
        return rest.get("matcher") or _always(rest)
    return {"matcherTree": {"input": URI_SAN, "exactMatchMap": {"map": entries}}, "onNoMatch": rest}


def _plaintext_matcher(
    index: RuleIndex, port: int, verdict: str, fallback: dict[str, Any]
) -> Matcher:
    found = _rule_list(index.plaintext_rules(), port, False, verdict, fallback)
    return found.get("matcher") or _always(found)


def _always(on_match: dict[str, Any]) -> Matcher:
    return {"matcherList": {"matchers": [{"predicate": TRUE, "onMatch": on_match}]}}


def index_matcher(
    index: RuleIndex, port: int, identified: bool, verdict: str, fallback: dict[str, Any]
) -> Matcher:
    build = _identity_matcher if identified else _plaintext_matcher
    return build(index, port, verdict, fallback)


def _dry_run_index(plan: AuthorizationPlan, wanted: Action) -> RuleIndex:
    index = RuleIndex()
    for policy in plan.dry_run:
        if policy.action == wanted:
            for rule in policy.rules:
                index.add(rule)
    return index


def rbac_filters(plan: AuthorizationPlan, port: int, identified: bool) -> list[tuple[str, Any]]:
    """(stat prefix, RBAC config with `matcher`/`shadowMatcher`) in filter order:
    AUDIT (LOG, never blocks), DENY, ALLOW. The ALLOW stage is always there (it names the
    default: `default:allow` / `default:deny`); AUDIT and DENY only where policies need them."""
    filters: list[tuple[str, Any]] = []
    audit = plan.audit
    if audit.size:
        filters.append(
            (
                "audit",
                {
                    "matcher": index_matcher(
                        audit, port, identified, "LOG", action(NO_AUDIT, "ALLOW")
                    )
                },
            )
        )
    deny_shadow = _dry_run_index(plan, Action.DENY)
    if plan.deny.size or deny_shadow.size:
        config: dict[str, Any] = {
            "matcher": index_matcher(plan.deny, port, identified, "DENY", action(NO_DENY, "ALLOW"))
        }
        if deny_shadow.size:
            config["shadowMatcher"] = index_matcher(
                deny_shadow, port, identified, "DENY", action(DRY_NO_DENY, "ALLOW")
            )
            config["shadowRulesStatPrefix"] = DRY_DENY_PREFIX
        filters.append(("deny", config))
    allow_shadow = _dry_run_index(plan, Action.ALLOW)
    config = {}
    if plan.has_allow:
        config["matcher"] = index_matcher(
            plan.allow, port, identified, "ALLOW", action(Cause.DEFAULT_DENY, "DENY")
        )
    elif Effect(plan.mesh.default_policy) is Effect.DENY:
        config["matcher"] = _always(action(Cause.DEFAULT_DENY, "DENY"))
    else:  # an explicit stage, so traces and flow logs name the implicit allow
        config["matcher"] = _always(action(Cause.DEFAULT_ALLOW, "ALLOW"))
    if allow_shadow.size:
        config["shadowMatcher"] = index_matcher(
            allow_shadow, port, identified, "ALLOW", action(DRY_DEFAULT_DENY, "DENY")
        )
        config["shadowRulesStatPrefix"] = DRY_ALLOW_PREFIX
    filters.append(("allow", config))
    return filters


def rbac_filter(stage: str, config: dict[str, Any], http: bool) -> dict[str, Any]:
    """One stage of `rbac_filters` as an HTTP filter (`http`) or a network filter."""
    prefix = RULES_STAT_PREFIX[stage]
    if http:
        rbac = "envoy.extensions.filters.http.rbac.v3.RBAC"
        return extension("envoy.filters.http.rbac", rbac, rulesStatPrefix=prefix, **config)
    rbac = "envoy.extensions.filters.network.rbac.v3.RBAC"
    return extension("envoy.filters.network.rbac", rbac, statPrefix=prefix, **config)


# What `rbac_filters` reads of a plan, and the filter's port, branch and kind (HTTP or network).
# CompiledPolicy compares by identity, so equal keys mean the very same compiled policies.
_Key = tuple[tuple[CompiledPolicy, ...], str, int, bool, bool]


class InboundRbac:
    """The inbound RBAC filters of plans, translated once per distinct key and shared.

    The key is exactly what `rbac_filters` reads: the plan's policies (its rule indexes,
    dry-run policies and `has_allow` are made from them alone), the mesh's default policy, the
    port and the branch. Entries live for two meshes: those the current mesh's plans used and
    those of the mesh before (a partial rebuild finds what it still shares); older ones are
    dropped, so the cache does not grow with every reload."""

    def __init__(self) -> None:
        self._mesh: object = None
        self._current: dict[_Key, tuple[SharedConfig, ...]] = {}
        self._previous: dict[_Key, tuple[SharedConfig, ...]] = {}
        self.translated = 0  # filter lists translated (not found in the cache)

    def __len__(self) -> int:
        """Entries held (of the current mesh and the one before)."""
        return len(self._current.keys() | self._previous.keys())

    def for_mesh(self, mesh: object) -> None:
        """Start translating plans of `mesh` (a new mesh drops the entries of the one before
        the last)."""
        if mesh is not self._mesh:
            self._mesh = mesh
            self._previous, self._current = self._current, {}

    def filters(
        self, plan: AuthorizationPlan, port: int, identified: bool, http: bool
    ) -> tuple[SharedConfig, ...]:
        key = (plan.policies, plan.mesh.default_policy, port, identified, http)
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
        if found is None:
            found = tuple(
                SharedConfig(rbac_filter(stage, config, http))
                for stage, config in rbac_filters(plan, port, identified)
            )
            self.translated += 1
        self._current[key] = found
        return found
