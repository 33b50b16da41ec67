"""Istio AuthorizationPolicy (security.istio.io v1 and v1beta1) as an AuthorizationPolicy.

The evaluation order is the same (DENY before ALLOW; with an ALLOW policy selecting a workload,
a request is allowed iff one of their rules matches; AUDIT never decides), and so are `rules`
omitted (matches nothing) and `[{}]` (matches everything). CUSTOM (an external authorizer) is
refused. The `istio.io/dry-run: "true"` annotation becomes `mode: dry-run`. A policy in Istio's
root namespace (istio-system) applies mesh-wide and goes to the Mesh's root namespace.
Sources and conditions: see `_istio_sources`; Istio's implicit behaviours: `_istio_rules`.
"""

from __future__ import annotations

import copy
from typing import Any

from meshwarden.engine import Diagnostic
from meshwarden.importers._context import ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Pod, workload_port
from meshwarden.importers._istio_common import (
    istio_mesh_defaults,
    output_namespace,
    read_workload_selector,
    selected_pods,
    selector_yaml,
    strings,
    supported,
)
from meshwarden.importers._istio_rules import plaintext_companion, split_by_protocol, uses_token
from meshwarden.importers._istio_sources import (
    RuleParts,
    read_condition,
    read_source,
    with_addresses,
)
from meshwarden.importers._names import dns_label
from meshwarden.importers._objects import KubeObject, error

Path = tuple[str | int, ...]
_ACTIONS = ("ALLOW", "DENY", "AUDIT")
_CUSTOM = (
    "CUSTOM delegates the decision to an external authorizer (spec.provider), which meshwarden "
    "does not call; decide in the policies instead"
)
OPERATION_FIELDS = (
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
)


def translate_authorization_policy(obj: KubeObject, ctx: ImportContext) -> None:
    """Translate one AuthorizationPolicy (see the module docstring)."""
    fields = Fields(obj, ctx.problems)
    if not supported(fields, "AuthorizationPolicy"):
        return
    istio_mesh_defaults(ctx)
    fields.known(("spec",), ("selector", "targetRef", "targetRefs", "rules", "action", "provider"))
    action = fields.string("spec", "action") or "ALLOW"
    if action not in _ACTIONS:
        what = _CUSTOM if action == "CUSTOM" else f"action {action!r} is not ALLOW, DENY or AUDIT"
        fields.fail(("spec", "action"), what)
        return
    if obj.get("spec", "provider") is not None:
        fields.fail(("spec", "provider"), "spec.provider is only for the CUSTOM action")
        return
    labels = read_workload_selector(fields)
    if labels is None:
        return
    targets = selected_pods(ctx, obj, labels)
    rules = _rules(ctx, fields, action, _ports_by_protocol(ctx, fields, targets))
    if rules is None:
        return
    if any(uses_token(r) for r in rules):
        ctx.token_rules.append((obj.at("spec", "rules"), frozenset(p.ref for p in targets)))
    spec: dict[str, Any] = {**selector_yaml(labels), "action": action, "rules": rules}
    annotations = obj.get("metadata", "annotations") or {}
    if isinstance(annotations, dict) and annotations.get("istio.io/dry-run") == "true":
        spec["mode"] = "dry-run"
    metadata = {"name": dns_label(obj.name), "namespace": output_namespace(obj, ctx)}
    ctx.emit(obj, {"kind": "AuthorizationPolicy", "metadata": metadata, "spec": spec})


def unverifiable_tokens(ctx: ImportContext) -> list[Diagnostic]:
    """A rule on a verified token (requestPrincipals, request.auth.*) for pods no
    RequestAuthentication selects: Istio never matches it silently; here it is an error."""
    problems = []
    for where, pods in ctx.token_rules:
        lacking = sorted(pods - ctx.token_pods)
        if lacking:
            problems.append(
                error(
                    where,
                    f"these rules need a verified token, but no RequestAuthentication selects "
                    f"pod {lacking[0]}"
                    + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else "")
                    + "; import the RequestAuthentication too, or remove the token fields",
                )
            )
    return problems


def _ports_by_protocol(
    ctx: ImportContext, fields: Fields, targets: list[Pod]
) -> tuple[list[int], list[int]]:
    """(http ports, tcp ports) of the target pods; a port that is HTTP on one target and not
    on another is an error (no one limit fits both)."""
    protocols: dict[int, set[str]] = {}
    for pod in targets:
        for port in pod.ports:
            protocol = workload_port(pod, port, ctx.inventory.services)["protocol"]
            protocols.setdefault(port.port, set()).add(
                "http" if protocol in ("http", "grpc") else "tcp"
            )
    mixed = sorted(p for p, kinds in protocols.items() if len(kinds) > 1)
    if mixed:
        fields.fail(
            ("spec", "selector"),
            f"port {mixed[0]} is HTTP on some selected pods and "
            "not on others; split the policy by selector",
        )
    http = sorted(p for p, kinds in protocols.items() if kinds == {"http"})
    return http, sorted(p for p, kinds in protocols.items() if kinds == {"tcp"})


def _rules(
    ctx: ImportContext, fields: Fields, action: str, ports: tuple[list[int], list[int]]
) -> list[dict[str, Any]] | None:
    out: list[dict[str, Any]] = []
    problems = len(ctx.problems)
    for i, _ in enumerate(fields.sequence("spec", "rules") or []):
        rule = _rule(ctx, fields, ("spec", "rules", i))
        if rule is None:
            continue
        first = len(out)
        for explicit in split_by_protocol(rule, action, *ports):
            companion = plaintext_companion(explicit)
            out.extend(copy.deepcopy(r) for r in (explicit, companion) if r is not None)
        _note_rules(ctx, fields.obj, i, first, len(out))
    return out if len(ctx.problems) == problems else None


def _note_rules(ctx: ImportContext, obj: KubeObject, index: int, first: int, end: int) -> None:
    """Say where an Istio rule went when it is not one rule of the same index (explain names
    the rules of the output)."""
    if first == end:
        written = "no rule (it can match no request to the selected pods)"
    elif end - first == 1:
        written = f"rule {first}"
    else:
        written = f"rules {first}-{end - 1} (its HTTP, tcp and plaintext-peer readings)"
    if end - first != 1 or first != index:
        ctx.note(f"{obj.origin}: rule {index} is written as {written}")


def _rule(ctx: ImportContext, fields: Fields, path: Path) -> dict[str, Any] | None:
    if fields.obj.get(*path) is None:
        return {}
    if fields.mapping(*path) is None:
        return None
    fields.known(path, ("from", "to", "when"))
    parts = RuleParts()
    for j, _ in enumerate(fields.sequence(*path, "when") or []):
        if not read_condition(ctx, fields, (*path, "when", j), parts):
            return None
    sources = _sources(ctx, fields, path, parts)
    operations = _operations(fields, path)
    if operations is False:
        return None
    where = (*path, "from") if fields.obj.get(*path, "from") else path
    sources = with_addresses(ctx, fields, where, sources, parts)
    if sources is None and (
        parts.ip_values or parts.ip_not_values or fields.obj.get(*path, "from")
    ):
        return None
    rule: dict[str, Any] = {}
    if sources is not None:
        rule["from"] = sources
    if operations:
        rule["to"] = operations
    if parts.when:
        rule["when"] = parts.when
    return rule


def _sources(
    ctx: ImportContext, fields: Fields, path: Path, parts: RuleParts
) -> list[dict[str, Any]] | None:
    entries = fields.sequence(*path, "from") or []
    if not entries:
        return None
    out: list[dict[str, Any]] = []
    for j, _ in enumerate(entries):
        entry = (*path, "from", j)
        fields.known(entry, ("source",))
        found = read_source(ctx, fields, (*entry, "source"), parts)
        if found is None:
            return None
        out.extend(s for s in found if s not in out)
    return out


def _operations(fields: Fields, path: Path) -> list[dict[str, Any]] | bool | None:
    """The operations (None = any); False after an error."""
    out: list[dict[str, Any]] = []
    for j, _ in enumerate(fields.sequence(*path, "to") or []):
        entry = (*path, "to", j)
        fields.known(entry, ("operation",))
        op_path = (*entry, "operation")
        if fields.obj.get(*op_path) is not None and fields.mapping(*op_path) is None:
            return False
        fields.known(op_path, OPERATION_FIELDS)
        op: dict[str, Any] = {}
        for name in OPERATION_FIELDS:
            if name in ("ports", "notPorts"):
                numbers = _port_numbers(fields, (*op_path, name))
                if numbers is None:
                    return False
                if numbers:
                    op[name] = numbers
                continue
            values = strings(fields, (*op_path, name))
            if values:
                op[name] = [v for v, _ in values]
        out.append(op)
    return out or None


def _port_numbers(fields: Fields, path: Path) -> list[int] | None:
    """Port numbers, written as strings (the API's type) or numbers."""
    numbers = []
    for k, value in enumerate(fields.sequence(*path) or []):
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            fields.fail((*path, k), f"port {value!r} is not a port number (1-65535)")
            return None
        numbers.append(int(text))
    return numbers
