"""Istio PeerAuthentication (mTLS modes) and RequestAuthentication (JWT issuers).

PeerAuthentication in the root namespace without a selector is mesh-wide (`Mesh.spec.mtls`,
and every namespace without its own), in another namespace without a selector namespace-wide
(`Mesh.spec.namespaces.<ns>.mtls`), with a selector per workload (`Workload.spec.mtls`), and
`portLevelMtls` per port (`Workload.spec.ports[].mtls`). UNSET inherits; DISABLE is refused:
a meshwarden sidecar always accepts mTLS (PERMISSIVE also accepts plaintext).

RequestAuthentication becomes one JwtIssuer per `jwtRules` entry (issuer, audiences, jwksUri or
jwks, fromHeaders, forwardOriginalToken); fields with no meshwarden meaning are refused.
"""

from __future__ import annotations

from typing import Any

from meshwarden.importers._context import ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._istio_common import (
    is_root,
    istio_mesh_defaults,
    output_namespace,
    read_workload_selector,
    selected_pods,
    selector_yaml,
    strings,
    supported,
)
from meshwarden.importers._names import dns_label, joined
from meshwarden.importers._objects import KubeObject

_MODES = ("UNSET", "STRICT", "PERMISSIVE", "DISABLE")
_BAD = "invalid"  # what `_mode` returns after reporting an error
_DISABLE = (
    "DISABLE turns mTLS off; a meshwarden sidecar always accepts mTLS from the mesh, so "
    "use PERMISSIVE to also accept plaintext peers"
)


def translate_peer_authentication(obj: KubeObject, ctx: ImportContext) -> None:
    """Translate one PeerAuthentication (see the module docstring)."""
    fields = Fields(obj, ctx.problems)
    if not supported(fields, "PeerAuthentication"):
        return
    istio_mesh_defaults(ctx)
    fields.known(("spec",), ("selector", "mtls", "portLevelMtls"))
    labels = read_workload_selector(fields)
    mode = _mode(fields, ("spec", "mtls"))
    if labels is None or mode == _BAD:
        return
    if not labels:
        if fields.obj.get("spec", "portLevelMtls") is not None:
            fields.fail(("spec", "portLevelMtls"), "portLevelMtls needs a selector (as in Istio)")
        elif mode is not None:
            _namespace_mode(ctx, obj, mode)
        return
    ports = _port_modes(fields)
    if ports is None:
        return
    for pod in selected_pods(ctx, obj, labels):
        _workload_mode(ctx, fields, pod.ref, mode, ports)


def _mode(fields: Fields, path: tuple[str | int, ...]) -> str | None:
    """STRICT/PERMISSIVE, None for UNSET or absent, `_BAD` after an error."""
    if fields.obj.get(*path) is None:
        return None
    fields.known(path, ("mode",))
    mode = fields.string(*path, "mode") or "UNSET"
    if mode not in _MODES:
        fields.fail((*path, "mode"), f"mtls mode {mode!r} is not one of {', '.join(_MODES)}")
        return _BAD
    if mode == "DISABLE":
        fields.fail((*path, "mode"), _DISABLE)
        return _BAD
    return None if mode == "UNSET" else mode


def _namespace_mode(ctx: ImportContext, obj: KubeObject, mode: str) -> None:
    namespaces = ctx.mesh.setdefault("namespaces", {})
    if is_root(obj, ctx):  # mesh-wide: every namespace that has no namespace-wide policy
        ctx.mesh["mtls"] = mode
        for namespace in ctx.inventory.namespaces:
            namespaces.setdefault(namespace, {}).setdefault("mtls", mode)
    else:
        namespaces.setdefault(obj.namespace, {})["mtls"] = mode


def _port_modes(fields: Fields) -> dict[int, str] | None:
    given = fields.mapping("spec", "portLevelMtls")
    out: dict[int, str] = {}
    for key in given or {}:
        port = int(key) if str(key).isdigit() else 0
        if not 1 <= port <= 65535:
            fields.fail(("spec", "portLevelMtls", key), f"port {key!r} is not a port number")
            return None
        mode = _mode(fields, ("spec", "portLevelMtls", key))
        if mode == _BAD:
            return None
        if mode is not None:
            out[port] = mode
    return out


def _workload_mode(
    ctx: ImportContext, fields: Fields, ref: str, mode: str | None, ports: dict[int, str]
) -> None:
    if ref in ctx.workload_mtls:
        fields.fail(
            ("spec", "selector"),
            f"pod {ref} is selected by two PeerAuthentications; "
            "Istio applies the oldest, meshwarden needs exactly one",
        )
        return
    settings: dict[str, Any] = {"ports": ports}
    if mode is not None:
        settings["mtls"] = mode
    ctx.workload_mtls[ref] = settings


_JWT_RULE_FIELDS = (
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "forwardOriginalToken",
    "timeout",
)
_NO_MEANING = {
    "fromParams": "tokens in query parameters are not read; send them in a header",
    "fromCookies": "tokens in cookies are not read; send them in a header",
    "outputPayloadToHeader": "the payload is not forwarded as a header",
    "outputClaimToHeaders": "claims are not copied into headers",
    "timeout": "the JWKS fetch timeout is not configurable",
}


def translate_request_authentication(obj: KubeObject, ctx: ImportContext) -> None:
    """Translate one RequestAuthentication into JwtIssuers (see the module docstring)."""
    fields = Fields(obj, ctx.problems)
    if not supported(fields, "RequestAuthentication"):
        return
    istio_mesh_defaults(ctx)
    fields.known(("spec",), ("selector", "targetRef", "targetRefs", "jwtRules"))
    labels = read_workload_selector(fields)
    if labels is None:
        return
    rules = fields.sequence("spec", "jwtRules") or []
    if rules:
        ctx.token_pods.update(p.ref for p in selected_pods(ctx, obj, labels))
    for i, _ in enumerate(rules):
        spec = _jwt_rule(fields, ("spec", "jwtRules", i))
        if spec is None:
            continue
        name = dns_label(obj.name) if len(rules) == 1 else joined(obj.name, str(i))
        metadata = {"name": name, "namespace": output_namespace(obj, ctx)}
        ctx.emit(
            obj,
            {"kind": "JwtIssuer", "metadata": metadata, "spec": {**selector_yaml(labels), **spec}},
        )


def _jwt_rule(fields: Fields, path: tuple[str | int, ...]) -> dict[str, Any] | None:
    if fields.mapping(*path) is None:
        return None
    fields.known(path, _JWT_RULE_FIELDS)
    for name, why in _NO_MEANING.items():
        if fields.obj.get(*path, name) is not None:
            fields.fail((*path, name), f"{name}: {why}")
            return None
    issuer = fields.string(*path, "issuer")
    if not issuer:
        fields.fail(path, "a jwtRule needs an issuer")
        return None
    spec: dict[str, Any] = {"issuer": issuer}
    audiences = [v for v, _ in strings(fields, (*path, "audiences"))]
    if audiences:
        spec["audiences"] = audiences
    for name in ("jwksUri", "jwks"):
        value = fields.string(*path, name)
        if value:
            spec[name] = value
    if "jwksUri" not in spec and "jwks" not in spec:
        fields.fail(
            path,
            "give jwksUri or jwks: meshwarden does not discover keys from the "
            "issuer (OpenID discovery)",
        )
        return None
    headers = _headers(fields, (*path, "fromHeaders"))
    if headers is None:
        return None
    if headers:
        spec["fromHeaders"] = headers
    forward = fields.obj.get(*path, "forwardOriginalToken")
    if isinstance(forward, bool):
        spec["forwardOriginalToken"] = forward
    return spec


def _headers(fields: Fields, path: tuple[str | int, ...]) -> list[dict[str, str]] | None:
    out = []
    for i, _ in enumerate(fields.sequence(*path) or []):
        entry = (*path, i)
        if fields.mapping(*entry) is None:
            return None
        fields.known(entry, ("name", "prefix"))
        name = fields.string(*entry, "name")
        if not name:
            fields.fail(entry, "a fromHeaders entry needs a name")
            return None
        header = {"name": name.lower()}
        prefix = fields.string(*entry, "prefix")
        if prefix:
            header["prefix"] = prefix
        out.append(header)
    return out
