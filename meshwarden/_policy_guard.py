"""Changes to the Mesh document that would loosen a running mesh are refused.

A running control plane refuses a new snapshot that removes the Mesh document, turns
`defaultPolicy` from deny to allow, `mtls` (mesh-wide, a namespace's, a workload's or one of
its ports') from STRICT to PERMISSIVE, `extAuthz.failOpen`
from false to true or a namespace from enforce to monitor mode (`defaultMode: dry-run`) —
unless the new Mesh document carries the annotation
`meshwarden.io/allow-loosening: "true"`, which accepts the loosening (logged at WARNING); a
workload's own loosening is also accepted when its Workload document carries it. The
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
    annotated: bool = False  # the loosened document itself (a Workload) carries the annotation

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


def workload_mtls(before: engine.Registry, after: engine.Registry) -> list[Loosening]:
    """Workloads (or ports of theirs) whose own mTLS setting takes them from STRICT to
    PERMISSIVE, as Istio's workload and port-level PeerAuthentication can; a change of the
    namespace's or the Mesh's mode alone is reported there, once."""
    found = []
    for ref, new in sorted(after.workloads.items()):
        old = before.workloads.get(ref)
        if old is None:
            continue
        whole = _loosened_port(before, after, old, new, None)
        found.extend([whole] if whole else [])
        for number in sorted(new.ports):
            loosened = _loosened_port(before, after, old, new, number)
            previous = old.ports.get(number)
            own = new.ports[number].mtls is not None or (previous and previous.mtls) is not None
            if loosened is not None and (whole is None or own):
                found.append(loosened)
    return found


def _loosened_port(
    before: engine.Registry,
    after: engine.Registry,
    old: engine.Workload,
    new: engine.Workload,
    number: int | None,
) -> Loosening | None:
    """The loosening of port `number` of `new` (None: the workload's own mode), if any."""
    port = 0 if number is None or number not in old.ports else number
    was = engine.mtls_setting(before.mesh.spec, old, port)
    now = engine.mtls_setting(after.mesh.spec, new, number or 0)
    if not was.strict or now.strict:
        return None
    if now.origin.startswith("Mesh") and _mtls(before.mesh, new.namespace) == "STRICT":
        return None  # the namespace (or the Mesh) loosened: reported there, once
    place = f"port {number} of workload {new.ref}" if number else f"workload {new.ref}"
    return Loosening(
        str(_workload_place(new, number)),
        f"{place} would loosen mtls from STRICT to PERMISSIVE",
        annotated=allowed_by_annotation(new),
    )


def _workload_place(workload: engine.Workload, number: int | None) -> engine.Location:
    document = workload.document
    if number is not None:
        index = next(i for i, p in enumerate(workload.spec.ports) if p.port == number and p.proxied)
        if workload.spec.ports[index].mtls is not None:
            return document.at("spec", "ports", index, "mtls")
        return document.at("spec", "ports", index)
    if workload.spec.mtls is not None:
        return document.at("spec", "mtls")
    return document.key_at("spec")


def allowed_by_annotation(mesh: engine.Mesh | engine.Workload) -> bool:
    document = mesh.document
    if document is None:
        return False
    annotations: dict[str, str] = document.metadata.annotations
    return annotations.get(ALLOW_LOOSENING, "").lower() == "true"


def refused(
    before: engine.Mesh, after: engine.Mesh, workloads: list[Loosening] | None = None
) -> tuple[list[Loosening], list[Loosening]]:
    """(refused, accepted) loosenings of the change from `before` to `after`, and of the
    `workloads` (`workload_mtls`) changed with it."""
    found = loosenings(before, after) + (workloads or [])
    if allowed_by_annotation(after):
        return [f for f in found if not f.overridable], [f for f in found if f.overridable]
    accepted = [f for f in found if f.overridable and f.annotated]
    found = [f for f in found if f not in accepted]
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
    ], accepted
