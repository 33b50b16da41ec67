"""Changes to the Mesh document that would loosen a running mesh are refused.

A running control plane refuses a new snapshot that removes the Mesh document, turns
`defaultPolicy` from deny to allow, `mtls` (mesh-wide or a namespace's) from STRICT to
PERMISSIVE, `extAuthz.failOpen`
from false to true or a namespace from enforce to monitor mode (`defaultMode: dry-run`) —
unless the new Mesh document carries the annotation
`meshwarden.io/allow-loosening: "true"`, which accepts the loosening (logged at WARNING). The
trust domain never changes while the control plane runs (its CA and every SVID belong to it):
that takes a restart. A Mesh document cannot be removed while running: with no document left
to carry the annotation, deleting it is never taken as intent.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshwarden import engine

ALLOW_LOOSENING = "meshwarden.io/allow-loosening"


@dataclass(frozen=True, slots=True)
class Loosening:
    """One refused (or, with the annotation, accepted) loosening; `str` names the place."""

    where: str  # FILE:LINE:COL
    message: str
    overridable: bool = True

    def __str__(self) -> str:
        return f"{self.where}: error: {self.message}"


def _located(mesh: engine.Mesh, *path: str) -> str:
    document = mesh.document
    return str(document.at("spec", *path)) if document is not None else "<default Mesh>"


def _document_place(mesh: engine.Mesh) -> str:
    document = mesh.document
    return str(document.key_at("kind")) if document is not None else "<default Mesh>"


def loosenings(before: engine.Mesh, after: engine.Mesh) -> list[Loosening]:
    """How `after` would loosen `before` (empty when it does not)."""
    if before.document is not None and after.document is None:
        return [
            Loosening(
                _document_place(before),
                f"the Mesh document {before.document.ref} was removed, which would reset "
                f"defaultPolicy, mtls and the trust domain to their defaults; refused while the "
                f"control plane runs (restart it to run without a Mesh document)",
                overridable=False,
            )
        ]
    found = []
    if after.spec.trust_domain != before.spec.trust_domain:
        found.append(
            Loosening(
                _located(after, "trustDomain"),
                f"trustDomain would change from {before.spec.trust_domain} to "
                f"{after.spec.trust_domain}; the trust domain cannot change while the control "
                "plane runs (restart it)",
                overridable=False,
            )
        )
    if before.spec.default_policy == "deny" and after.spec.default_policy == "allow":
        found.append(
            Loosening(
                _located(after, "defaultPolicy"), "defaultPolicy would loosen from deny to allow"
            )
        )
    if before.spec.mtls == "STRICT" and after.spec.mtls == "PERMISSIVE":
        found.append(
            Loosening(_located(after, "mtls"), "mtls would loosen from STRICT to PERMISSIVE")
        )
    if not before.spec.ext_authz.fail_open and after.spec.ext_authz.fail_open:
        found.append(
            Loosening(
                _located(after, "extAuthz", "failOpen"),
                "extAuthz.failOpen would loosen from false to true",
            )
        )
    return found + _monitor_mode(before, after) + _namespace_mtls(before, after)


def _namespace_mtls(before: engine.Mesh, after: engine.Mesh) -> list[Loosening]:
    """A namespace whose own `mtls` setting takes it from STRICT to PERMISSIVE (a change of the
    Mesh-wide mode alone is reported once, at `mtls`)."""
    found = []
    for ns in sorted(set(before.spec.namespaces) | set(after.spec.namespaces)):
        own = [m.spec.namespaces[ns].mtls for m in (before, after) if ns in m.spec.namespaces]
        if not any(own):
            continue
        if _mtls(before, ns) == "STRICT" and _mtls(after, ns) == "PERMISSIVE":
            place = ("namespaces", ns) if ns in after.spec.namespaces else ("mtls",)
            message = f"namespace {ns} would loosen mtls from STRICT to PERMISSIVE"
            found.append(Loosening(_located(after, *place), message))
    return found


def _mtls(mesh: engine.Mesh, namespace: str) -> str:
    settings = mesh.spec.namespaces.get(namespace)
    return settings.mtls if settings and settings.mtls else mesh.spec.mtls


def _monitor_mode(before: engine.Mesh, after: engine.Mesh) -> list[Loosening]:
    """Monitor mode (defaultMode dry-run, mesh-wide or per namespace) entered while running:
    the namespaces it covers stop refusing anything by policy."""
    found = []
    if before.spec.default_mode == "enforce" and after.spec.default_mode == "dry-run":
        found.append(
            Loosening(
                _located(after, "defaultMode"),
                "defaultMode would loosen from "
                "enforce to dry-run (monitor mode: policies stop refusing)",
            )
        )
    for ns in sorted(set(before.spec.namespaces) | set(after.spec.namespaces)):
        if _mode(before, ns) == "enforce" and _mode(after, ns) == "dry-run":
            where = (
                _located(after, "namespaces", ns)
                if ns in after.spec.namespaces
                else _located(after, "defaultMode")
            )
            found.append(
                Loosening(
                    where,
                    f"namespace {ns} would loosen from enforce to dry-run "
                    "(monitor mode: its policies stop refusing)",
                )
            )
    return found


def _mode(mesh: engine.Mesh, namespace: str) -> str:
    settings = mesh.spec.namespaces.get(namespace)
    return settings.default_mode if settings and settings.default_mode else mesh.spec.default_mode


def allowed_by_annotation(mesh: engine.Mesh) -> bool:
    document = mesh.document
    if document is None:
        return False
    annotations: dict[str, str] = document.metadata.annotations
    return annotations.get(ALLOW_LOOSENING, "").lower() == "true"


def refused(before: engine.Mesh, after: engine.Mesh) -> tuple[list[Loosening], list[Loosening]]:
    """(refused, accepted) loosenings of the change from `before` to `after`."""
    found = loosenings(before, after)
    if allowed_by_annotation(after):
        return [f for f in found if not f.overridable], [f for f in found if f.overridable]
    return [
        Loosening(
            f.where,
            f"{f.message}; refused (annotate the Mesh document with "
            f'{ALLOW_LOOSENING}: "true" to allow it)',
            False,
        )
        if f.overridable
        else f
        for f in found
    ], []
